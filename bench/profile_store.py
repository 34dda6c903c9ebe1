"""A key-value store for cold profiles, measured against ``person_hits`` (issue 10).

A cold profile reads its persons' ``person_hits`` rows by key (``collector/identity/
profile.py``); for 32 persons (about 113 keys) that statement is most of the batch, and no
layout or setting of the MergeTree brought it near 1 ms a profile (stop 32's note). This
script measures the alternative on the generated 10M data, in this process, pinned to one
core, each round with keys nobody read before (a repeated key set would be answered by the
query condition cache and the page cache, and flatter either side):

1. ``person_hits`` read by ``key IN`` for 113 keys and for 4 (one person), as profiles read it;
2. an EmbeddedRocksDB copy holding each key's hits as one value: how long it takes to build,
   how large it is, and the same reads from it;
3. what keeping that copy current would cost ingestion: one flush's new rows (``--flush``,
   1,250 = a quarter second of 5,000 events/s) appended to their keys' values by one
   read-modify-write statement.

    python3 bench/profile_store.py --data-dir COPY [--rounds 25] [--flush 1250]

COPY: a copy of a ``bench/persons.py`` data directory (it adds tables, and drops them at
the end); one process at a time opens the engine, so no collector may run on it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.storage import Store, open_store  # noqa: E402

SITE = "bench"
ROWS = ("SELECT concat('[', toJSONString(key), ',', hit, ']') FROM tagwerk.person_hits "
        "WHERE site_id = {site:String} AND key IN {keys:Array(String)}")
STORE = "tagwerk.bench_profile_store"
STORE_ROWS = f"SELECT k, hits FROM {STORE} WHERE k IN {{keys:Array(String)}}"
NEW_ROWS = "tagwerk.bench_profile_store_new"


def ms(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    return (time.perf_counter() - began) * 1000


def median(values: list[float]) -> str:
    return f"median {statistics.median(values):6.1f} ms (runs: " + ", ".join(
        f"{v:.1f}" for v in values) + ")"


def build(store: Store) -> None:
    store.execute(f"DROP TABLE IF EXISTS {STORE}")
    store.execute(f"CREATE TABLE {STORE} (k String, hits String) "
                  "ENGINE = EmbeddedRocksDB PRIMARY KEY k")
    took = ms(lambda: store.execute(
        f"INSERT INTO {STORE} SELECT concat(site_id, '\\0', key), "
        "arrayStringConcat(groupArray(hit), ',') FROM tagwerk.person_hits "
        "GROUP BY site_id, key"))
    keys, size = store.query(f"SELECT count(), sum(length(hits)) FROM {STORE}", None,
                             "TSV").decode().split()
    print(f"key-value copy built in {took / 1000:.1f} s: {int(keys):,} keys, "
          f"{int(size) / 1e9:.2f} GB of values")


def reads(store: Store, keys: list[str], rounds: int) -> None:
    """Each kind of read with fresh keys every round (the first two rounds warm up)."""
    taken = 0
    for size in (113, 4):
        times: dict[str, list[float]] = {"person_hits": [], "key-value copy": []}
        for _ in range(rounds + 2):
            for name in times:
                batch, taken = keys[taken:taken + size], taken + size
                if name == "person_hits":
                    times[name].append(ms(lambda b=batch: store.query(
                        ROWS, {"site": SITE, "keys": b}, "TSVRaw")))
                else:
                    times[name].append(ms(lambda b=batch: store.query(
                        STORE_ROWS, {"keys": [f"{SITE}\0{k}" for k in b]}, "TSVRaw")))
        for name, values in times.items():
            print(f"{size:4} keys from {name:15} {median(values[2:])}")
        ratio = statistics.median(times["key-value copy"][2:]) / statistics.median(
            times["person_hits"][2:])
        print(f"{size:4} keys: the copy takes {ratio:.2f} of person_hits' time")


def upkeep(store: Store, flush: int, rounds: int) -> None:
    """One flush's rows appended to their keys' values: read, append, write back."""
    store.execute(f"DROP TABLE IF EXISTS {NEW_ROWS}")
    store.execute(f"CREATE TABLE {NEW_ROWS} (site_id String, key String, hit String) "
                  "ENGINE = Memory")
    times = []
    for round_ in range(rounds + 2):
        store.execute(f"TRUNCATE TABLE {NEW_ROWS}")
        store.execute(f"INSERT INTO {NEW_ROWS} SELECT site_id, key, hit FROM "
                      f"tagwerk.person_hits WHERE rand() % 5000 = {round_} LIMIT {flush}")
        times.append(ms(lambda: store.execute(
            f"INSERT INTO {STORE} SELECT new.k, if(old.hits = '', new.hits, "
            "concat(old.hits, ',', new.hits)) FROM (SELECT concat(site_id, '\\0', key) AS k, "
            f"arrayStringConcat(groupArray(hit), ',') AS hits FROM {NEW_ROWS} "
            f"GROUP BY site_id, key) AS new LEFT JOIN {STORE} AS old ON old.k = new.k "
            "SETTINGS join_algorithm = 'direct'")))
    print(f"one flush of {flush:,} rows appended to the copy {median(times[2:])}")
    each = statistics.median(times[2:]) / 1000 * (5000 / flush)
    print(f"  at 5,000 events/s: {each:.0%} of a core (the views may cost ingestion 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="a copy of bench/persons.py's data")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--flush", type=int, default=1250)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the engine's threads, started below, too
    store = open_store(None, str(Path(args.data_dir) / "clickhouse"))
    try:
        keys = store.query("SELECT DISTINCT key FROM tagwerk.person_hits WHERE site_id = "
                           "{site:String}", {"site": SITE}, "TSVRaw").decode().split("\n")[:-1]
        random.Random(3).shuffle(keys)
        build(store)
        reads(store, keys, args.rounds)
        upkeep(store, args.flush, args.rounds // 2)
    finally:
        store.execute(f"DROP TABLE IF EXISTS {STORE}")
        store.execute(f"DROP TABLE IF EXISTS {NEW_ROWS}")
        store.close()


if __name__ == "__main__":
    main()
