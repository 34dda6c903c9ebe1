"""Persons under realistic data: profile latency and throughput, profile freshness under
load, and erasure of a person among millions of rows.

    python3 bench/persons.py [--events 10000000] [--devices 500000] [--persons 200000]
                             [--products 5000] [--seconds 10] [--clients 32] [--load 5000]
                             [--data-dir DIR [--costs-only | --erase-only |
                                              --retention-only [--operations 1000]]]

1. Generates the data in the embedded engine (``INSERT ... SELECT ... FROM numbers(N)``,
   through every materialised view like any insert): 30 days of hits of ``--devices``
   devices, 4 in 5 of them with analytics and personalization consent (their hits carrying
   the id of that decision, which consent_log holds as /consent records it, so that a
   profile also looks up the decisions its hits were collected under); 4 in 5 consented
   devices belong to one of ``--persons`` customers (two devices each on average), who log
   in (an identify event with a loyalty card) at some point of the month, their later hits
   carrying their user id; 2% of hits are till purchases naming only the loyalty card.
   Products have Zipf-like popularity. One more customer has 1,000 hits of their own
   (phone, desktop, till) for the erasure. The table profiles read (person_hits) is laid
   out as after a month of collecting: the hits older than a day in one part, as
   clickhouse/0033 merges them (here by OPTIMIZE, at once), the last day's in 10 inserts.
2. Runs ``tagwerk serve`` on it pinned to one core, prints what a statement costs there
   (``SELECT 1`` and a one-key read through the SQL port: machines of this kind differ) and
   measures ``GET persons/{kind}:{id}/profile`` over random customers by device, user id
   and loyalty card: p50/p99 of one client, and requests/s of ``--clients`` connections (wrk on
   the other core); ratios to the goals (p99 20 ms, 1,000 requests/s). Each twice: "cold",
   persons nobody asked for since the start (every statement runs), and "kept", persons
   asked for before and without a new hit since (answered from memory,
   ``collector/identity/cache.py``). Then "after a new hit": a customer's profile asked
   again right after their new view (their rows read again, who they are kept).
3. Freshness: while a thread sends ``--load`` events/s through the batch API, a probe
   sends a view of a new product from a customer's device and polls that customer's
   profile by their loyalty card until it shows: p50/p99 from the 202 (goal: 1 s).
4. Erases the heavy customer by their loyalty card and checks, through the SQL port, that
   no row of any table names any of their identifiers (goal: under 10 s). Once the
   collector stopped, in this process: another such customer erased as a load of the
   identity links' copy begins (the erasure cancels it), beside how long a load takes alone.
5. Once the collector stopped, where a cold profile's time goes: the endpoint's batch of
   reads (``read_profiles``, without HTTP) run in this process on the same data and core,
   for 1 and for ``--clients`` persons at once, and the median ms of each kind of statement
   in it (the identifiers' links, what the persons hold, their rows, their consent
   decisions) beside the Python work; and how long the copies' first load takes (the hits'
   copy built whole in it), and reading ``--stale`` keys of the hits' copy again
   (``LinkIndex.refresh_hits``, which the collector spaces to take at most a twentieth of
   the time). ``--costs-only`` runs only this.
6. ``--retention-only``: the retention's pass over explicit merges and splits
   (``collector/privacy/retention.py``) on the same data, in this process on the server
   core: ``--operations`` merges of one customer into another, then the pass, all of them
   still active (it reads every subject's links, hits and raw events; nothing goes), as if
   the site kept 30 days. It adds those merges to the data: run it on a copy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load import SERVER_CORE, free_port, wait_http, wait_quiet, wrk  # noqa: E402
from recommend import SITE, background_load, bench_site, pct, refresh_pairs, wrk_script  # noqa: E402
from sql_latency import timed  # noqa: E402

from collector.api.persons import read_profiles  # noqa: E402
from collector.cli import tune_gc  # noqa: E402
from collector.config import load_settings  # noqa: E402
from collector.identity.operations import Operations  # noqa: E402
from collector.privacy import retention  # noqa: E402
from collector.service import Collector  # noqa: E402
from collector.storage import StorageError  # noqa: E402

GOAL_P99_MS, GOAL_RPS, GOAL_FRESH_S, GOAL_ERASE_S = 20.0, 1000.0, 1.0, 10.0
DAY_MS = 86400 * 1000
MONTH_MS = 30 * DAY_MS
RECENT_INSERTS = 10  # the last day's hits, as parts not yet merged into the old data

# Each device's owner and login time are functions of the device number, so that the hits
# and the identify events agree without a join.
GENERATE = """
INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at, channel,
    device_id, session_id, user_id, consent, consent_id, url, path, device_class, is_bot,
    items, identifiers)
SELECT
    generateUUIDv4(n) AS event_id, '{site}' AS site_id,
    multiIf(k < 30, 'page_view', k < 75, 'view_item', k < 90, 'add_to_cart',
            k < 96, 'purchase', 'scroll') AS event,
    'track' AS type,
    now64(3) - toIntervalMillisecond({window_ago_ms}) + toIntervalMillisecond(
        cityHash64(n, 3) % {window_ms}) AS ts,
    ts AS received_at,
    if(till, 'pos', 'web') AS channel,
    if(consented AND NOT till, 'd' || toString(device), '') AS device_id,
    if(consented AND NOT till, 'd' || toString(device) || '-' || toString(toDate(ts)), '')
        AS session_id,
    if(consented AND NOT till AND owned AND ts >= login, 'u' || toString(owner), '')
        AS user_id,
    if(consented, ['analytics', 'personalization'], []) AS consent,
    if(consented AND NOT till, {decision}, '') AS consent_id,
    'https://shop.example' || path AS url,
    if(event = 'view_item', '/p/' || toString(rank), '/') AS path,
    if(device % 3 = 0, 'mobile', 'desktop') AS device_class,
    cityHash64(n, 4) % 100 = 0 AS is_bot,
    if(event IN ('view_item', 'add_to_cart', 'purchase'),
       [('p' || toString(rank), 'Product ' || toString(rank), 'cat' || toString(rank % 40),
         'brand' || toString(rank % 25), '', toDecimal64(5 + rank % 200, 4), toUInt32(1))],
       []) AS items,
    if(till AND consented, map('loyalty', 'L' || toString(owner)), map()) AS identifiers
FROM
(
    SELECT number + {offset} AS n,
        now64(3) - toIntervalMillisecond({month_ms}) AS start,
        cityHash64(n, 0) % 100 AS k,
        cityHash64(n, 1) % {devices} AS device,
        cityHash64(device, 9) % 5 != 0 AS consented,
        cityHash64(device, 8) % 5 != 0 AS owned,
        cityHash64(device, 7) % {persons} AS owner,
        start + toIntervalMillisecond(cityHash64(device, 6) % {month_ms}) AS login,
        k >= 90 AND k < 96 AND owned AND cityHash64(n, 5) % 3 = 0 AS till,
        toUInt32(floor(pow({products}, (cityHash64(n, 10) % 1000000) / 1e6))) - 1 AS rank
    FROM numbers({count})
)
"""

# One identify per owned, consented device, at its login time, with the loyalty card.
IDENTIFY = """
INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at, channel,
    device_id, user_id, consent, consent_id, device_class, identifiers)
SELECT generateUUIDv4(device + 1000000000), '{site}', 'login', 'identify', login, login,
    'web', 'd' || toString(device), 'u' || toString(owner),
    ['analytics', 'personalization'], {decision}, 'desktop',
    map('loyalty', 'L' || toString(owner))
FROM
(
    SELECT number AS device,
        now64(3) - toIntervalMillisecond({month_ms}) AS start,
        cityHash64(device, 9) % 5 != 0 AS consented,
        cityHash64(device, 8) % 5 != 0 AS owned,
        cityHash64(device, 7) % {persons} AS owner,
        start + toIntervalMillisecond(cityHash64(device, 6) % {month_ms}) AS login
    FROM numbers({devices})
)
WHERE consented AND owned
"""

# Each consented device's decision, as /consent records it (its id: 32 hex digits), before
# the device's hits: the id its hits carry.
DECISION = "lower(hex(MD5('{site}-' || toString(device))))"
CONSENTS = """
INSERT INTO tagwerk.consent_log (consent_id, ts, received_at, site_id, granted, denied,
    policy, how, url, device_class)
SELECT {decision}, decided, decided, '{site}', ['analytics', 'personalization'],
    ['marketing'], 'v1', 'banner', 'https://shop.example/',
    if(device % 3 = 0, 'mobile', 'desktop')
FROM
(
    SELECT number AS device,
        now64(3) - toIntervalMillisecond({month_ms} + cityHash64(device, 11) % {day_ms})
            AS decided,
        cityHash64(device, 9) % 5 != 0 AS consented
    FROM numbers({devices})
)
WHERE consented
"""

HEAVY = f"heavy-{uuid.uuid4().hex[:8]}"  # a new one each run: a data directory is reused


def heavy_events(heavy: str = HEAVY) -> list[dict]:
    """1,000 hits of one customer: phone and desktop, before and after logging in, and
    purchases at the till by loyalty card."""
    events = []
    for device in (f"{heavy}-phone", f"{heavy}-desk"):
        events.append({"event": "login", "type": "identify", "user_id": heavy,
                       "device_id": device, "ts": "2026-11-01T08:00:00Z",
                       "identifiers": {"loyalty": f"L-{heavy}", "email": f"{heavy}@example.com"},
                       "consent": ["analytics", "personalization"]})
    for i in range(998):
        device = (f"{heavy}-phone", f"{heavy}-desk", None)[i % 3]
        event = {"event": ("view_item", "add_to_cart", "purchase")[i % 3],
                 "ts": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
                 "consent": ["analytics", "personalization"],
                 "items": [{"product_id": f"p{i % 97}", "price": 10, "quantity": 1}],
                 "session_id": f"s-{heavy}-{i % 40}"}
        if device:
            event.update(device_id=device, user_id=heavy if i % 2 else "")
        else:
            event.update(channel="pos", identifiers={"loyalty": f"L-{heavy}"})
        events.append(event)
    return events


def generate(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    store, keys = bench_site(data_dir)
    began = time.monotonic()
    values = dict(site=SITE, month_ms=MONTH_MS, day_ms=DAY_MS, persons=args.persons,
                  products=args.products, devices=args.devices,
                  decision=DECISION.format(site=SITE))
    store.execute(CONSENTS.format(**values))
    store.execute(IDENTIFY.format(**values))
    # A month of hits as a collector that ran for that month holds them: the hits older
    # than a day in one part of person_hits (clickhouse/0033 merges such parts; OPTIMIZE
    # does at once what it does after a day), the last day's in parts of their own.
    older = args.events - args.events // 30
    chunk = 1_000_000
    for offset in range(0, older, chunk):
        store.execute(GENERATE.format(**values, offset=offset, count=min(chunk, older - offset),
                                      window_ago_ms=MONTH_MS, window_ms=MONTH_MS - DAY_MS))
    store.execute("OPTIMIZE TABLE tagwerk.person_hits FINAL")
    recent = args.events - older
    for i in range(RECENT_INSERTS):
        first = older + recent * i // RECENT_INSERTS
        last = older + recent * (i + 1) // RECENT_INSERTS
        store.execute(GENERATE.format(**values, offset=first, count=last - first,
                                      window_ago_ms=DAY_MS, window_ms=DAY_MS))
    print(f"generated {args.events:,} events in {time.monotonic() - began:.0f} s")
    refresh_pairs(store)
    for table in ("events", "identity_links_by_identifier", "person_hits", "consent_log"):
        [row] = store.rows(f"SELECT count() AS n FROM tagwerk.{table}")
        [parts] = store.rows("SELECT count() AS n FROM system.parts WHERE active "
                             "AND database = 'tagwerk' AND table = {t:String}", {"t": table})
        print(f"  tagwerk.{table}: {row['n']:,} rows in {parts['n']} parts")
    store.close()
    return keys


def call(url: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def profile_urls(base: str, args: argparse.Namespace, n: int = 2000, seed: int = 7
                 ) -> list[str]:
    rng = random.Random(seed)
    urls = []
    for _ in range(n):
        owner = rng.randrange(args.persons)
        ident = rng.choice([f"user:u{owner}", f"loyalty:L{owner}",
                            f"device:d{rng.randrange(args.devices)}"])
        urls.append(f"{base}/api/v1/sites/{SITE}/persons/{ident}/profile")
    return urls


def single_client(urls: list[str], key: str, seconds: float) -> tuple[list[float], int]:
    """Each URL at most once (asked again, a profile is served from memory)."""
    times, found, i = [], 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and i < len(urls):
        began = time.perf_counter()
        status, _ = call(urls[i % len(urls)], key)
        times.append((time.perf_counter() - began) * 1000)
        assert status in (200, 404), status
        found += status == 200
        i += 1
    return times, found


def after_hit(base: str, key_of: dict[str, str], urls: list[str], rounds: int = 6,
              each: int = 50) -> list[float]:
    """Profiles asked again right after the person's new hit, as a recommendation engine
    asks while they browse: their rows are read again, who they are is kept
    (collector/identity/resolutions.py). Per round: ``each`` customers' profiles asked
    (untimed: kept; those without one left out), one view each through the batch API, then
    each profile timed once it must show the new view."""
    idents = [url.split("/persons/")[1].removesuffix("/profile") for url in urls
              if "/persons/user:" in url or "/persons/loyalty:" in url]
    times = []
    for start in range(0, min(len(idents), rounds * each), each):
        asked = {f"{base}/api/v1/sites/{SITE}/persons/{ident}/profile":
                 (ident.split(":")[1][1:], f"again-{uuid.uuid4().hex[:8]}")
                 for ident in idents[start:start + each]}
        for url in list(asked):  # only customers with a profile (a loyalty card never
            if call(url, key_of["read"])[0] != 200:  # used is nobody's)
                del asked[url]
        body = json.dumps({"events": [
            {"event": "view_item", "user_id": f"u{owner}", "items": [{"product_id": product}],
             "consent": ["analytics", "personalization"]}
            for owner, product in asked.values()]}).encode()
        assert call(f"{base}/api/v1/batch", key_of["write"], body)[0] == 202
        last, (_, product) = list(asked.items())[-1]
        while product.encode() not in call(last, key_of["read"])[1]:  # flushed (untimed)
            time.sleep(0.01)
        for url, (_, product) in list(asked.items())[:-1]:
            began = time.perf_counter()
            status, answer = call(url, key_of["read"])
            times.append((time.perf_counter() - began) * 1000)
            assert status == 200 and product.encode() in answer, (url, status)
    return times


def freshness(base: str, keys: dict[str, str], args: argparse.Namespace) -> list[float]:
    stop = threading.Event()
    loader = threading.Thread(target=background_load,
                              args=(base, keys["write"], args.load, stop), daemon=True)
    loader.start()
    times = []
    try:
        for probe in range(args.probes):
            owner = 1 + probe
            product = f"fresh-{uuid.uuid4().hex[:8]}"
            body = json.dumps({"events": [{
                "event": "view_item", "user_id": f"u{owner}", "device_id": f"probe-{probe}",
                "consent": ["analytics", "personalization"],
                "items": [{"product_id": product}]}]}).encode()
            url = f"{base}/api/v1/sites/{SITE}/persons/user:u{owner}/profile"
            status, _ = call(f"{base}/api/v1/batch", keys["write"], body)
            sent = time.perf_counter()
            assert status == 202
            while product.encode() not in call(url, keys["read"])[1]:
                if time.perf_counter() - sent > 30:
                    raise RuntimeError("the probe never showed in the profile")
                time.sleep(0.01)
            times.append(time.perf_counter() - sent)
    finally:
        stop.set()
        loader.join(5)
    return times


def erase_heavy(base: str, keys: dict[str, str], data_dir: Path) -> float:
    events = heavy_events()
    for start in range(0, len(events), 500):  # the batch API's limit
        body = json.dumps({"events": events[start:start + 500]}).encode()
        assert call(f"{base}/api/v1/batch", keys["write"], body)[0] == 202
    time.sleep(2)  # flushed
    began = time.perf_counter()
    status, answer = call(f"{base}/api/v1/sites/{SITE}/privacy/erase", keys["admin"],
                          json.dumps({"id": f"loyalty:L-{HEAVY}"}).encode())
    took = time.perf_counter() - began
    assert status == 200, answer
    print(f"  removed: {json.loads(answer)['removed']}")
    left = find_anywhere(data_dir, [HEAVY])  # in each of their ids
    print(f"  rows still naming them, any table: {left or 'none'}")
    return took


def measure_profiles(base: str, keys: dict[str, str], args: argparse.Namespace, pid: int,
                     data_dir: Path) -> None:
    """Steps 2 and 3: profiles cold and kept, after a new hit, and their freshness."""
    # Cold: persons nobody asked for since the start (every statement runs). Kept: the
    # same persons again, answered from memory until they have a new hit.
    urls = profile_urls(base, args, 20_000, seed=7)
    call(urls[-1], keys["read"])
    # The first resolution has the identity links loaded into memory in the background
    # (collector/identity/link_index.py): measure once they are.
    if not load_settings().identity_links_in_memory:  # as the collector reads it
        print("identity links NOT in memory (TAGWERK_IDENTITY_LINKS_IN_MEMORY): tables")
    else:
        print(f"identity links in memory and the hits' copy built {links_loaded(base):.1f} s "
              f"after the first profile, then quiet after {wait_quiet(pid):.0f} s")
    for label in ("cold", "kept"):
        times, found = single_client(urls, keys["read"], args.seconds)
        p50, p99 = statistics.median(times), pct(times, 99)
        print(f"profile {label}, one client: {len(times)} requests ({found} profiles, the "
              f"rest 404), p50 {p50:.1f} ms, p99 {p99:.1f} ms = {p99 / GOAL_P99_MS:.2f} of "
              f"the {GOAL_P99_MS:.0f} ms goal")
        urls = urls[:len(times)]  # the ones asked for: kept now
    for label, batch in (("kept", urls), ("cold", profile_urls(base, args, 50_000, 11))):
        script = wrk_script(batch, keys["read"], data_dir / f"profile-{label}.lua")
        result = wrk(f"{base}/", args.seconds, args.clients, script)
        print(f"profile {label}, {args.clients} clients over {len(batch):,} persons: "
              f"{result['rps']:,.0f} requests/s = {result['rps'] / GOAL_RPS:.2f} of the "
              f"{GOAL_RPS:,.0f} goal (p99 {result.get('p99_ms', float('nan')):.1f} ms)")
    times = after_hit(base, keys, urls)
    p50, p99 = statistics.median(times), pct(times, 99)
    print(f"profile after the person's new hit (who they are kept, rows read), one client: "
          f"{len(times)} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms = "
          f"{p99 / GOAL_P99_MS:.2f} of the {GOAL_P99_MS:.0f} ms goal")
    fresh = freshness(base, keys, args)
    print(f"freshness under {args.load:,} events/s: p50 {statistics.median(fresh):.3f} s, "
          f"p99 {pct(fresh, 99):.3f} s = {pct(fresh, 99) / GOAL_FRESH_S:.2f} of the "
          f"{GOAL_FRESH_S:.0f} s goal")


def erase_during_load(data_dir: Path, keys: dict[str, str]) -> tuple[float, float, float]:
    """Another heavy customer erased when a load of the identity links' copy has just begun
    as the erasure's deletes end (its worst case: the erasure drops the copy before it
    answers, and waited for such a load to end before). The endpoint, in this process, on
    the data the collector left, pinned to the server core. Seconds of the erasure, of its
    dropping the copy (``forget_erased``), and of a load alone."""
    from starlette.testclient import TestClient

    from collector.app import create_app
    from collector.identity.link_index import LOADING

    os.sched_setaffinity(0, {int(SERVER_CORE)})
    collector = Collector(load_settings(data_dir=data_dir))
    heavy = f"heavy-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(collector)) as client:
        events = heavy_events(heavy)
        for start in range(0, len(events), 500):
            assert client.post("/api/v1/batch", json={"events": events[start:start + 500]},
                               headers={"Authorization": f"Bearer {keys['write']}"}
                               ).status_code == 202
        index = collector.link_index
        collector.person_answers.begin()
        index.begin()  # asked for, as a profile asks
        began = time.perf_counter()
        index.reload_now()
        load_alone = time.perf_counter() - began
        wait_quiet(os.getpid())
        forget, spent = index.forget_erased, {}
        running = ("SELECT count() AS n FROM system.processes "
                   "WHERE Settings['log_comment'] = {c:String}")

        def load() -> None:
            with contextlib.suppress(StorageError):  # cancelled
                index.reload_now()

        def forget_during_a_load() -> None:
            spent["load"] = loading = threading.Thread(target=load)
            loading.start()
            deadline = time.monotonic() + 60
            while not int(collector.store.rows(running, {"c": LOADING})[0]["n"]):
                if not loading.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("no load of the copy seen under way")
                time.sleep(0.01)
            began = time.perf_counter()
            forget()
            spent["forget"] = time.perf_counter() - began

        index.forget_erased = forget_during_a_load  # type: ignore[method-assign]
        began = time.perf_counter()
        answer = client.post(f"/api/v1/sites/{SITE}/privacy/erase",
                             json={"id": f"loyalty:L-{heavy}"},
                             headers={"Authorization": f"Bearer {keys['admin']}"})
        took = time.perf_counter() - began
        assert answer.status_code == 200, answer.text
        spent["load"].join()
    return took, spent["forget"], load_alone


def sql_port(data_dir: Path, timeout: float = 30.0) -> Any:
    """A client of the running collector's SQL port, as its own user (every table)."""
    from collector.storage.server import ServerStore

    info = json.loads((data_dir / "serve.json").read_text())
    return ServerStore(f"http://{info['sql_user']}:{info['sql_password']}@"
                       f"{info['sql_host']}:{info['sql_port']}/tagwerk", timeout=timeout)


# The collector's counts of the copies loaded: the identity links', and the hits' copy's
# builds (link_index.py).
LOADED = ("tagwerk_identity_links_loads_total", "tagwerk_person_hits_copy_refreshes_total")


def links_loaded(base: str, timeout: float = 300.0) -> float:
    """Seconds until the collector reports its first copy of the identity links loaded, and
    the hits' copy built."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
            counts = dict(line.split()[:2] for line in response.read().decode().splitlines()
                          if line.startswith(LOADED))
        if all(float(counts.get(name, 0)) >= 1 for name in LOADED):
            return time.monotonic() - began
        time.sleep(0.2)
    raise TimeoutError("the identity links were not loaded into memory")


def statement_costs(data_dir: Path, rounds: int = 50) -> tuple[float, float]:
    """Median ms, through the SQL port, of ``SELECT 1`` and of one customer's person_hits
    (one key, a granule per part) on this machine's server core: the second less the first
    is about what one MergeTree read costs the engine, and a cold profile is four or five
    reads in a row, so this tells a slower machine from a slower collector."""
    store = sql_port(data_dir)
    read = ("SELECT key, hit FROM tagwerk.person_hits WHERE site_id = {site:String} "
            "AND key IN {keys:Array(String)}")
    try:
        statement = timed(lambda: store.rows("SELECT 1"), rounds)
        one_key = timed(lambda: store.rows(read, {"site": SITE, "keys": ["user:u1"]}), rounds)
        return statistics.median(statement), statistics.median(one_key)
    finally:
        store.close()


# What each statement of a cold profile reads, by the first table or dictionary of these its
# text names (who holds what, with their links, names both dictionaries).
STATEMENT_KINDS = (("identity_held_dict", "held"), ("identity_links_dict", "links"),
                   ("person_hits", "rows"), ("consent_by_id", "consents"),
                   ("consent_decisions_dict", "consents"))


def cold_costs(data_dir: Path, args: argparse.Namespace, rounds: int = 20
               ) -> dict[int | str, dict[str, float]]:
    """Where a cold batch of profiles spends its time: ``read_profiles`` (the endpoint's
    path, without HTTP) in this process on the data the collector left, pinned to the server
    core, for batches of 1 and of ``--clients`` persons nobody asked for before. Per batch
    size, the median ms of the whole batch and of each kind of statement in it (the calling
    thread's: not the feed's or the link index's), "python" being the rest; under "copy",
    the first load's seconds (the hits' copy built whole in it) and a refresh's of
    ``--stale`` keys of the copy. Run after the collector stopped: one process at a time
    opens the engine."""
    os.sched_setaffinity(0, {int(SERVER_CORE)})  # the engine's threads, started below, too
    collector = Collector(load_settings(data_dir=data_dir))
    collector.start()
    query, caller = collector.store.query, threading.get_ident()
    spent: dict[str, float] = {}

    def timed_query(sql: str, *rest: Any, **named: Any) -> bytes:
        began = time.perf_counter()
        try:
            return query(sql, *rest, **named)
        finally:
            if threading.get_ident() == caller:
                kind = next((k for name, k in STATEMENT_KINDS if name in sql), "other")
                spent[kind] = spent.get(kind, 0.0) + (time.perf_counter() - began) * 1000

    collector.store.query = timed_query  # type: ignore[method-assign]
    rng = random.Random(13)
    asks = [(kind, f"{prefix}{rng.randrange(args.persons)}")
            for _ in range(rounds * (args.clients + 1) + 1)
            for kind, prefix in [rng.choice([("user", "u"), ("loyalty", "L")])]]
    try:
        site = collector.sites.get(SITE)
        read_profiles(collector, site, [asks.pop()])  # has the links loaded into memory
        began = time.monotonic()
        while not (collector.link_index.state()["generation"]
                   and collector.link_index.state()["hits_ready"]):
            if time.monotonic() - began > 300:
                raise TimeoutError("the identity links were not loaded into memory")
            time.sleep(0.2)
        first_load = time.monotonic() - began
        tune_gc()  # as ``tagwerk serve`` runs: without it, "python" held the bench's GC
        wait_quiet(os.getpid())
        out = {}
        for size in (1, args.clients):
            runs: list[dict[str, float]] = []
            for _ in range(rounds):
                batch, asks[:size] = asks[:size], []
                spent.clear()
                began_batch = time.perf_counter()
                read_profiles(collector, site, batch)
                total = (time.perf_counter() - began_batch) * 1000
                runs.append({"batch": total, **spent, "python": total - sum(spent.values())})
            kinds = {kind for run in runs for kind in run}
            out[size] = {kind: statistics.median(run.get(kind, 0.0) for run in runs)
                         for kind in kinds}
        out["copy"] = {"first load": first_load,
                       "refresh": refresh_cost(collector, args.stale, rng)}
        return out
    finally:
        collector.stop()


def refresh_cost(collector: Collector, stale: int, rng: random.Random) -> float:
    """Seconds the hits' copy takes to read ``stale`` random keys of it again."""
    keys = collector.store.query(
        "SELECT DISTINCT key FROM tagwerk.person_hits WHERE site_id = {s:String}",
        {"s": SITE}, "TSVRaw").decode().split("\n")[:-1]
    index = collector.link_index
    index.changed({SITE: set(rng.sample(keys, stale))})
    began = time.perf_counter()
    index.refresh_hits()
    assert not index.state()["stale_hits"], index.state()
    return time.perf_counter() - began


def print_cold_costs(data_dir: Path, args: argparse.Namespace) -> None:
    costs_by = cold_costs(data_dir, args)
    copy = costs_by.pop("copy")
    for size, costs in costs_by.items():
        parts = ", ".join(f"{kind} {costs.get(kind, 0.0):.1f}"
                          for kind in ("links", "held", "rows", "consents", "other", "python"))
        print(f"cold batch of {size} in-process, without HTTP: {costs['batch']:.1f} ms = "
              f"{costs['batch'] / size:.2f} ms a profile (medians, ms: {parts})")
    print(f"the copies' first load (identity links, decisions, the hits' copy built whole): "
          f"{copy['first load']:.1f} s; {args.stale:,} stale keys of the hits' copy read again "
          f"in {copy['refresh']:.2f} s")


def retention_pass(data_dir: Path, args: argparse.Namespace, rounds: int = 5) -> None:
    """Time ``retention.expire`` over ``--operations`` merges of active customers (see 6.)."""
    from dataclasses import replace

    os.sched_setaffinity(0, {int(SERVER_CORE)})
    collector = Collector(load_settings(data_dir=data_dir))
    collector.start()
    try:
        site = replace(collector.sites.get(SITE), retention_days=30)
        operations = Operations(collector.store, site)
        rng = random.Random(17)
        began = time.monotonic()
        merged = 0
        while merged < args.operations:
            a, b = rng.sample(range(args.persons), 2)
            try:
                operations.merge(("user", f"u{a}"), ("user", f"u{b}"), "bench")
                merged += 1
            except Exception:  # noqa: BLE001 (one of them merged before: another pair)
                continue
        print(f"{merged:,} merges made in {time.monotonic() - began:.0f} s")
        wait_quiet(os.getpid())
        took = []
        for _ in range(rounds):
            began = time.perf_counter()
            removed = retention.expire(collector.store, site)
            took.append(time.perf_counter() - began)
            assert not any(removed.values()), removed  # all of them active
        print(f"retention pass over {merged:,} operations, all active: "
              f"{', '.join(f'{t:.2f}' for t in took)} s (median {statistics.median(took):.2f})")
    finally:
        collector.stop()


def find_anywhere(data_dir: Path, values: list[str]) -> dict[str, int]:
    """Every row of every table formatted and searched on the collector's one core:
    minutes on a slow machine, hence the long timeout."""
    from tests.helpers import found_anywhere

    store = sql_port(data_dir, timeout=600)
    try:
        return found_anywhere(store, values)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=500_000)
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--products", type=int, default=5_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load", type=int, default=5000)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--data-dir", help="reuse a generated data directory")
    parser.add_argument("--costs-only", action="store_true",
                        help="only the in-process cold batch costs (after a reused directory)")
    parser.add_argument("--erase-only", action="store_true",
                        help="only the erasures (on a quiet engine, after a reused directory)")
    parser.add_argument("--retention-only", action="store_true",
                        help="only the retention's pass over merges (adds merges: on a copy)")
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--stale", type=int, default=20_000,
                        help="keys of the hits' copy read again in step 5")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tagwerk-persons-"))
    keys_file = data_dir / "bench-keys.json"
    if keys_file.exists():
        keys = json.loads(keys_file.read_text())
    else:
        keys = generate(data_dir, args)
        keys_file.write_text(json.dumps(keys))
    if args.costs_only:
        print_cold_costs(data_dir, args)
        return
    if args.retention_only:
        retention_pass(data_dir, args)
        return
    port, sql_port = free_port(), free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "collector", "serve",
         "--port", str(port), "--sql-port", str(sql_port), "--no-demo",
         "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=open(data_dir / "serve.log", "wb"))  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=300)
        print(f"collector quiet {wait_quiet(proc.pid):.0f} s after it answered")
        statement, read = statement_costs(data_dir)
        print(f"statements on the server core, through the SQL port: SELECT 1 "
              f"{statement:.1f} ms, one key's person_hits {read:.1f} ms")
        if not args.erase_only:
            measure_profiles(base, keys, args, proc.pid, data_dir)
        took = erase_heavy(base, keys, data_dir)
        print(f"erasure of a person with 1,000 hits among {args.events:,}: {took:.2f} s = "
              f"{took / GOAL_ERASE_S:.2f} of the {GOAL_ERASE_S:.0f} s goal")
    finally:
        proc.terminate()
        proc.wait(60)
    took, forgetting, load_alone = erase_during_load(data_dir, keys)
    print(f"erasure of another such person as a load of the identity links' copy begins (a "
          f"load alone: {load_alone:.1f} s), in process: {took:.2f} s = "
          f"{took / GOAL_ERASE_S:.2f} of the {GOAL_ERASE_S:.0f} s goal; of it dropping the "
          f"copy {forgetting:.2f} s")
    if not args.erase_only:
        print_cold_costs(data_dir, args)


if __name__ == "__main__":
    main()
