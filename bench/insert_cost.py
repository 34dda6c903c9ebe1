"""What the embedded engine spends on each flush the collector inserts, and on what: the
events table itself, and its materialised views, per event and per flush.

``bench/load.py`` measures the views' cost as lost throughput, which the machine's drift
blurs by a few percent. This script measures it in one process, by CPU time: the rows of
``bench/load.py``'s two JSON loads (``BATCH``: product views, which feed only the product
aggregates; ``SHOP``: a shop's traffic, which feeds every view's table), normalised by
``events.normalize`` and encoded as the spool holds them, inserted as the flusher inserts
them (JSONCompactEachRow, a deduplication token each) in flushes of ``--rows`` rows
(8,000: a quarter second of 32,000 events/s) and of a quarter and four times that, which
tells a flush's fixed cost from a row's. Each variant runs in a process of its own on a
fresh data directory (one engine per process), pinned to one core, timed by the process's
CPU time (every engine thread) from the first insert until the engine is quiet again
(merges included). The refreshable views (pairs) run by the clock, not per row: stopped in
every variant.

- ``parse``: into a ``Null`` table of the events' columns (reading the format, nothing kept);
- ``table``: into ``events`` with every materialised view detached;
- ``served``: into ``events`` with its views, as the collector inserts;
- ``without:VIEW`` (``--variant``, one process): ``served`` without one view, to find
  what a view costs.

``--per-view`` measures what each view costs a flush in one process instead: the same
flushes with every view, without one view (a router's line is its whole group), with the
routers alone, and with none, in alternated rounds, so that the machine's drift falls on
every case alike (two processes differ by up to 20% on this kind of machine; rounds of one
process by about 5%).

    python3 bench/insert_cost.py [--runs 3] [--rows 8000]
    python3 bench/insert_cost.py --per-view [--runs 5] [--rows 500] [--mix shop]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.load import BATCH, SHOP, UA, process_cpu, wait_quiet  # noqa: E402
from collector.enrich.useragent import guess  # noqa: E402
from collector.ingest.events import Context, normalize  # noqa: E402
from collector.migrations import migrate  # noqa: E402
from collector.spool.record import EVENTS, INSERTS  # noqa: E402
from collector.storage.embedded import EmbeddedStore  # noqa: E402

MIXES = {"load": BATCH, "shop": SHOP}
CORE = "0"
BUDGET_ROWS = 32_000 * 4  # rows inserted per variant and flush size: 4 s at 32,000 events/s


def flush_body(rows: int, mix: str) -> bytes:
    """One flush's rows as the spool holds them: the mix's 10 hits, repeated."""
    ctx = Context(site_id="demo", received_at=dt.datetime.now(dt.UTC), channel="web",
                  agent=guess(UA))
    hits = MIXES[mix]
    lines = [orjson.dumps(list(normalize(hits[i % len(hits)], ctx)[0].values()))
             for i in range(rows)]
    return b"\n".join(lines) + b"\n"


def fresh_store(tmp: str) -> EmbeddedStore:
    """A migrated engine on a fresh data directory, its refreshable views stopped."""
    store = EmbeddedStore(str(Path(tmp) / "clickhouse"))
    migrate(store)
    store.execute("SYSTEM STOP VIEWS")  # the refreshable ones
    return store


def insert_cpu(store: EmbeddedStore, body: bytes, inserts: int, first: int,
               target: str = INSERTS[EVENTS]) -> float:
    """The process's CPU seconds for ``inserts`` flushes of ``body`` and their merges; each
    flush's deduplication token is its number, counted from ``first``."""
    wait_quiet(os.getpid(), below=0.02)  # earlier work's merges
    began = process_cpu(os.getpid())
    for n in range(first, first + inserts):
        store.insert(target, body, "JSONCompactEachRow",
                     {"insert_deduplication_token": f"bench:{n}"})
    wait_quiet(os.getpid(), below=0.02)  # the inserts' merges
    return process_cpu(os.getpid()) - began


def measure(variant: str, rows: int, mix: str) -> float:
    """µs of the process's CPU per row inserted in flushes of ``rows``, merges included."""
    inserts = max(BUDGET_ROWS // rows, 4)
    with tempfile.TemporaryDirectory(prefix="insert-cost-") as tmp:
        store = fresh_store(tmp)
        target = INSERTS[EVENTS]
        if variant == "parse":
            store.execute("CREATE TABLE tagwerk.parsed AS tagwerk.events ENGINE = Null")
            target = target.replace("tagwerk.events", "tagwerk.parsed", 1)
        elif variant == "table":
            for view in views(store):
                store.execute(f"DETACH TABLE tagwerk.{view} PERMANENTLY")
        elif variant.startswith("without:"):
            store.execute(f"DETACH TABLE tagwerk.{variant.removeprefix('without:')} PERMANENTLY")
        elif variant != "served":
            raise SystemExit(f"unknown variant {variant!r}")
        used = insert_cpu(store, flush_body(rows, mix), inserts, 0, target)
        store.close()
    return used / (inserts * rows) * 1e6


def views(store: EmbeddedStore) -> list[str]:
    """The materialised views an insert runs (the refreshable ones run by the clock)."""
    return [row["name"] for row in store.rows(
        "SELECT name FROM system.tables WHERE database = 'tagwerk' "
        "AND engine = 'MaterializedView' AND create_table_query NOT LIKE '% REFRESH %' "
        "ORDER BY name")]


def per_view(rows: int, mix: str, runs: int) -> None:
    """Prints the ms of CPU a flush of ``rows`` costs with every view, without each one, with
    the routers alone and with none, measured in alternated rounds of one process."""
    os.sched_setaffinity(0, {int(CORE)})  # before the engine starts its threads
    with tempfile.TemporaryDirectory(prefix="insert-cost-") as tmp:
        store = fresh_store(tmp)
        every = views(store)
        routers = [view for view in every if view.startswith("events_to_")]
        cases = {"every view": [], **{f"without {view}": [view] for view in every},
                 "the routers alone": [v for v in every if v not in routers], "no view": every}
        body, inserts = flush_body(rows, mix), max(8_000 // rows, 4)
        results: dict[str, list[float]] = {case: [] for case in cases}
        flushes = 0
        for run in range(runs):
            for case in cases if run % 2 == 0 else list(cases)[::-1]:
                for view in cases[case]:
                    store.execute(f"DETACH TABLE tagwerk.{view}")
                used = insert_cpu(store, body, inserts, flushes)
                flushes += inserts
                results[case].append(used / inserts * 1000)
                for view in cases[case]:
                    store.execute(f"ATTACH TABLE tagwerk.{view}")
        store.close()
    base = statistics.median(results["every view"])
    print(f"ms of CPU a flush of {rows:,} {mix} rows costs, merges included (median of {runs} "
          "rounds in one process; all rounds listed)")
    for case, runs_ms in results.items():
        ms = statistics.median(runs_ms)
        print(f"  {case:42} {ms:6.1f} ms ({ms - base:+6.1f})   "
              f"({', '.join(f'{r:.1f}' for r in runs_ms)})")


def child(mix: str, variant: str, rows: int) -> float:
    """``measure`` in a process of its own, pinned to one core."""
    out = subprocess.run(
        ["taskset", "-c", CORE, sys.executable, __file__, "--variant", variant,
         "--rows", str(rows), "--mix", mix],
        capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8000, help="rows of a flush")
    parser.add_argument("--mix", choices=MIXES, default="shop", help="with --variant")
    parser.add_argument("--variant", help="one measurement in this process (see above)")
    parser.add_argument("--per-view", action="store_true", help="each view's cost a flush")
    args = parser.parse_args()
    if args.per_view:
        per_view(args.rows, args.mix, args.runs)
        return
    if args.variant:
        print(measure(args.variant, args.rows, args.mix))
        return
    small, large = args.rows // 4, args.rows * 4
    cases = [(mix, variant, args.rows) for mix in MIXES for variant in ("parse", "table", "served")]
    cases += [("shop", variant, rows) for rows in (small, large) for variant in ("table", "served")]
    results: dict[tuple[str, str, int], list[float]] = {case: [] for case in cases}
    for run in range(args.runs):
        for case in cases if run % 2 == 0 else cases[::-1]:  # drift spread over every case
            results[case].append(child(*case))
    us = {case: statistics.median(runs) for case, runs in results.items()}
    print(f"engine CPU per event inserted, merges included (median of {args.runs} runs; "
          "all runs listed)")
    for mix, variant, rows in cases:
        print(f"  {mix:4} {variant:6} flushes of {rows:>6,} rows {us[mix, variant, rows]:6.2f} µs"
              f"   ({', '.join(f'{r:.2f}' for r in results[mix, variant, rows])})")
    for mix in MIXES:
        views = us[mix, "served", args.rows] - us[mix, "table", args.rows]
        print(f"  {mix}: the views add {views:.2f} µs an event to the table's "
              f"{us[mix, 'table', args.rows]:.2f} ({views / us[mix, 'table', args.rows]:+.0%})"
              f" in flushes of {args.rows:,} rows")
    # views(n) = fixed / n + per_row: two flush sizes give both.
    v_small = us["shop", "served", small] - us["shop", "table", small]
    v_large = us["shop", "served", large] - us["shop", "table", large]
    per_row = (v_large * large - v_small * small) / (large - small)
    fixed_ms = (v_small - per_row) * small / 1000
    print(f"  shop: the views cost {fixed_ms:.0f} ms a flush whatever its size, plus "
          f"{per_row:.2f} µs a row (from flushes of {small:,} and {large:,} rows): at 4 "
          f"flushes a second (the 250 ms flush interval) {fixed_ms * 4 / 10:.0f}% of a core "
          "before the first row")


if __name__ == "__main__":
    main()
