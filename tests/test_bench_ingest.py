"""bench/ingest.py keeps running: its stand-in for the collector has what the fast path
reads (it stopped at a 500 for every hit once the collector gained client salts, and
nothing noticed). The figures are the bench's business, not this test's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_in_process_bench_answers_every_kind_of_hit():
    done = subprocess.run([sys.executable, "bench/ingest.py", "--rounds", "1", "--hits", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        "pixel", "collect", "collect, batch of 10"]
