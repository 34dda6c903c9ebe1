"""How the embedded engine reads its files: a profile's rows with each read method.

A cold profile reads a person's rows from ``person_hits`` (``collector/identity/profile.py``):
a few small ranges under each of their keys, in every part of the table. The engine's
default (``pread_threadpool``) first tries a read that must not block, and hands the read to
a thread pool when the file system cannot promise that (tmpfs cannot: a data directory in
memory, as ``/dev/shm`` or a container's memory-backed volume); the collector's engine reads
with ``pread`` (``collector/storage/engine_config.py``), one call on the querying thread.
This script fills ``person_hits`` through the real schema with ``--rows`` rows in
``--parts`` parts (merges stopped), pinned to one core like the collector, in a temporary
directory on disk and, if there is one, in ``/dev/shm``; then reads the rows of 5 random
keys (a cold profile's) and of 100 (a batch of 32 profiles') with each method, interleaved,
and prints the medians and the ratio of each to the engine's default.

Run: ``python3 bench/read_method.py [--rows 6000000] [--parts 6] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.load import SERVER_CORE  # noqa: E402

# Pinned before the engine is loaded: threads it starts on import inherit the core.
os.sched_setaffinity(0, {int(SERVER_CORE)})
from collector.identity.profile import ROWS  # noqa: E402
from collector.migrations import migrate  # noqa: E402
from collector.storage.embedded import EmbeddedStore  # noqa: E402

METHODS = ("pread_threadpool", "pread", "mmap")
# A day of hits per key on average, as on the 10M bench (about 30 rows under each key).
FILL = """
INSERT INTO tagwerk.person_hits (site_id, key, ts, event, channel, device_class, consent_id,
    product_id, category, brand, quantity, revenue, event_id, retention_days)
SELECT 'bench', concat('device:d', toString(cityHash64(number, {part:UInt32}) % {keys:UInt64})),
    now64(3) - toIntervalSecond(number % 2592000), 'view_item', 'web', 'mobile', '',
    concat('p', toString(number % 5000)), 'shoes', 'acme', 1, 0, generateUUIDv4(number), 0
FROM numbers({rows:UInt64})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--in", dest="place", help="measure in a temporary directory here only")
    args = parser.parse_args()
    if args.place:
        with tempfile.TemporaryDirectory(dir=args.place) as tmp:
            measure(Path(tmp), args)
        return
    # One engine per process (chDB): each place in a process of its own.
    for place in [tempfile.gettempdir()] + (["/dev/shm"] if Path("/dev/shm").is_dir() else []):
        subprocess.run([sys.executable, __file__, "--in", place, "--rows", str(args.rows),
                        "--parts", str(args.parts), "--rounds", str(args.rounds)], check=True)


def measure(directory: Path, args: argparse.Namespace) -> None:
    keys = args.rows // 30
    store = EmbeddedStore(directory)
    try:
        migrate(store)
        store.execute("SYSTEM STOP VIEWS")  # no refresh competes for the core
        store.execute("SYSTEM STOP MERGES tagwerk.person_hits")
        began = time.monotonic()
        for part in range(args.parts):
            store.execute(FILL, {"part": part, "keys": keys, "rows": args.rows // args.parts})
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(directory)], capture_output=True,
                            text=True).stdout.strip()
        print(f"{directory} ({fs}): person_hits of {args.rows:,} rows in {args.parts} parts, "
              f"{keys:,} keys, filled in {time.monotonic() - began:.0f} s; one core")
        rng = random.Random(1)
        for n in (5, 100):
            took: dict[str, list[float]] = {m: [] for m in METHODS}
            for _ in range(args.rounds):
                for method in METHODS:
                    asked = [f"device:d{rng.randrange(keys)}" for _ in range(n)]
                    started = time.perf_counter()
                    store.rows(f"{ROWS} SETTINGS local_filesystem_read_method = '{method}'",
                               {"site": "bench", "keys": asked})
                    took[method].append((time.perf_counter() - started) * 1000)
            base = statistics.median(took[METHODS[0]])
            for method in METHODS:
                median = statistics.median(took[method])
                print(f"  {n:>3} keys  {method:<17} median {median:6.1f} ms  "
                      f"= {median / base:.2f}x the engine's default")
    finally:
        store.close()

if __name__ == "__main__":
    main()
