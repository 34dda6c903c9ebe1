"""Hostile-query benchmark: what a read-only SQL user's worst queries do to ingestion.

Runs ``tagwerk serve`` with ``--memory-limit`` (default 2G), then, for ``--seconds`` each:
  1. quiet: pixel hits from one client, one at a time (latency p50/p99);
  2. hostile: the same while memory bombs (``groupArray`` over 2e9 numbers, the query of
     issue 9 that took a 4 GB collector down) and CPU-heavy queries of the read-only
     ``default`` user run back to back on ``--attackers`` threads;
and prints the latencies, their ratio, the collector's peak RSS against its limit, how the
hostile queries were answered, and that every acknowledged hit landed.

Targets (issue 9): RSS under the limit; pixel p99 under 50 ms under the hostile load.
Run: ``python3 bench/hostile.py [--seconds 10] [--memory-limit 2G] [--attackers 3]``.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.load import free_port, wait_http  # noqa: E402
from collector.storage.engine_config import parse_size  # noqa: E402

HOSTILE = (
    "SELECT length(groupArray(number)) FROM numbers(2000000000)",
    "SELECT count() FROM numbers(1000000000) WHERE cityHash64(number) % 7 = 1",
    "SELECT groupUniqArray(toString(number)) FROM numbers(200000000)",
)


def pixels(base: str, seconds: float, event: str) -> list[float]:
    """One client sending pixels back to back; each latency in ms."""
    url = f"{base}/p.gif?site=demo&event={event}&channel=email"
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
            assert resp.status == 200
        out.append((time.perf_counter() - started) * 1000)
    return out


def attack(sql_url: str, stop: threading.Event, answers: collections.Counter) -> None:
    i = 0
    while not stop.is_set():
        query = HOSTILE[i % len(HOSTILE)]
        i += 1
        url = sql_url + "?" + urllib.parse.urlencode({"query": query})
        try:
            urllib.request.urlopen(url, timeout=120).read()
            answers["200 (finished)"] += 1
        except urllib.error.HTTPError as exc:
            answers[f"{exc.code} {exc.headers.get('X-ClickHouse-Exception-Code')}"] += 1


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--memory-limit", default="2G")
    parser.add_argument("--attackers", type=int, default=3)
    args = parser.parse_args()
    limit_mb = parse_size(args.memory_limit) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        port, sql_port = free_port(), free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(port), "--sql-port",
             str(sql_port), "--data-dir", f"{tmp}/var", "--memory-limit", args.memory_limit,
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/serve.log", "wb"),  # noqa: SIM115
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/readyz")
            pixels(base, 1, "warmup")
            quiet = pixels(base, args.seconds, "quiet")
            stop, answers = threading.Event(), collections.Counter()
            attackers = [threading.Thread(target=attack, args=(
                f"http://127.0.0.1:{sql_port}/", stop, answers)) for _ in range(args.attackers)]
            peak = [0.0]

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_mb(proc.pid))
                    stop.wait(0.1)

            sampler = threading.Thread(target=sample)
            for thread in (*attackers, sampler):
                thread.start()
            time.sleep(0.5)
            hostile = pixels(base, args.seconds, "hostile")
            stop.set()
            for thread in (*attackers, sampler):
                thread.join()
            time.sleep(2)
            query = "SELECT count() FROM tagwerk.events WHERE event = 'hostile'"
            landed = int(urllib.request.urlopen(
                f"http://127.0.0.1:{sql_port}/?" + urllib.parse.urlencode({"query": query}),
                timeout=30).read())
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    q50, q99 = statistics.median(quiet), pct(quiet, 0.99)
    h50, h99 = statistics.median(hostile), pct(hostile, 0.99)
    print(f"memory limit {args.memory_limit} ({limit_mb:,.0f} MB); {args.attackers} attackers; "
          f"{args.seconds:.0f} s per phase")
    print(f"pixel, quiet        p50 {q50:6.2f} ms  p99 {q99:6.2f} ms  ({len(quiet)} hits)")
    print(f"pixel, hostile      p50 {h50:6.2f} ms  p99 {h99:6.2f} ms  ({len(hostile)} hits)  "
          f"p99 = {h99 / q99:.1f}x quiet  (target p99 < 50 ms)")
    print(f"collector RSS peak  {peak[0]:,.0f} MB = {peak[0] / limit_mb:.0%} of the limit  "
          "(target < 100%)")
    print(f"hostile queries     {dict(answers)}  (241 = memory limit, 159 = time limit, "
          "202 = too many at once)")
    print(f"acknowledged hits   {len(hostile)}, landed {landed}; collector alive: {alive}")


if __name__ == "__main__":
    main()
