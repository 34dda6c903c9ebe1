"""SQL interface latency: what checking each statement on the engine's parse costs.

Starts the ClickHouse HTTP interface over a fresh embedded store in this process and times
``--queries`` small queries one after another, as the read-only ``default`` user (parse,
policy, the user's tables and filters) and as a read-write user (parse and policy only),
and the same query on a chDB connection as the floor: ``SELECT count() FROM
tagwerk.events``, and one with a time zone and a type (each checked as the engine reads it:
``policy.zone_literals``). Prints the median and p90 of each and their ratio to the floor.

Run: ``python3 bench/sql_latency.py [--queries 300]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.load import free_port, wait_http  # noqa: E402
from collector.migrations import migrate  # noqa: E402
from collector.sqlhttp import SqlUser, build_sql_app  # noqa: E402
from collector.storage.embedded import EmbeddedStore  # noqa: E402

QUERIES = ("SELECT count() FROM tagwerk.events",
           "SELECT toStartOfHour(ts, 'Europe/Berlin') AS hour, CAST(count() AS String) "
           "FROM tagwerk.events GROUP BY hour")


def timed(call, n: int) -> list[float]:
    for _ in range(20):  # warm-up
        call()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def line(name: str, ms: list[float], floor: float) -> str:
    median = statistics.median(ms)
    p90 = sorted(ms)[int(len(ms) * 0.9)]
    return f"{name:<28} median {median:6.2f} ms  p90 {p90:6.2f} ms  = {median / floor:4.1f}x chDB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(tmp)
        migrate(store)
        users = {"default": SqlUser("default", "", readonly=True),
                 "writer": SqlUser("writer", "pw", readonly=False)}
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(build_sql_app(store, users, loopback_only=True),
                                               port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_http(f"http://127.0.0.1:{port}/ping")
        conn = store.new_connection()
        results = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for query in QUERIES:
                floor = timed(lambda q=query: conn.query(q, "TSV"), args.queries)
                reader = timed(lambda q=query: client.post("/", content=q).raise_for_status(),
                               args.queries)
                writer = timed(lambda q=query: client.post("/", content=q, auth=("writer", "pw"))
                               .raise_for_status(), args.queries)
                results.append((query, floor, reader, writer))
        server.should_exit = True
        thread.join()
        conn.close()
        store.close()
    for query, floor, reader, writer in results:
        base = statistics.median(floor)
        print(f"{args.queries} queries each: {query}")
        print(line("chDB connection (floor)", floor, base))
        print(line("HTTP, read-only default", reader, base))
        print(line("HTTP, read-write user", writer, base))


if __name__ == "__main__":
    main()
