"""Recommendation endpoints under realistic data: latency, throughput, freshness.

    python3 bench/recommend.py [--events 10000000] [--devices 500000] [--persons 200000]
                               [--products 5000] [--seconds 10] [--clients 32]
                               [--data-dir DIR]

1. Generates the data directly in the embedded engine (``INSERT ... SELECT ... FROM
   numbers(N)``, through the materialised views like any insert): 30 days of hits of
   ``--devices`` devices (2 in 5 logged in as one of ``--persons`` users, 1 in 5 without
   analytics consent, 2% bots), 40% page views, 40% product views, 12% add-to-carts, 4%
   purchases of 1-3 items, 9 in 10 in EUR and 1 in 10 in CHF; products drawn with
   Zipf-like popularity (rank = P^u). With ``--data-dir``, the data is made there once
   and reused by later runs (code of another version included: its collector migrates it
   at start, which the run reports).
2. Runs ``tagwerk serve`` on that data, pinned to one core, and measures each endpoint:
   p50/p99 of a single client (sequential requests, varied parameters: related over the
   100 most popular products) and requests/s with ``--clients`` connections (wrk on the
   other core), with the ratios to the goals (p99 20 ms, 1,000 requests/s).
3. Freshness under load: while a thread sends ``--load`` events/s through the batch API,
   a probe posts a view of a new product in a category of its own and polls
   ``products/top?category=...`` until it appears: p50/p99 from the 202 (goal: 1 s). Then
   ``--pair-probes`` new shoppers each buy two new products, and a probe polls the first's
   ``related?kind=co_purchase`` until it lists the second: the seconds of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load import CLIENT_CORE, SERVER_CORE, free_port, wait_http, wait_quiet, wrk  # noqa: E402

SITE = "bench"
GOAL_P99_MS, GOAL_RPS, GOAL_FRESH_S = 20.0, 1000.0, 1.0

GENERATE = """
INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at, channel,
    device_id, session_id, user_id, consent, url, path, referrer_host, utm_campaign,
    device_class, is_bot, currency, items)
SELECT
    generateUUIDv4(n) AS event_id, '{site}' AS site_id,
    multiIf(k < 40, 'page_view', k < 80, 'view_item', k < 92, 'add_to_cart',
            k < 96, 'purchase', 'scroll') AS event,
    'track' AS type,
    now64(3) - toIntervalMillisecond(toUInt64(({total} - n) * {span_ms} / {total})) AS ts,
    ts AS received_at, 'web' AS channel,
    if(consented, 'd' || toString(device), '') AS device_id,
    if(consented, 'd' || toString(device) || '-' || toString(cityHash64(n, 2) % 4), '')
        AS session_id,
    if(consented AND device % 5 < 2, 'u' || toString(device % {persons}), '') AS user_id,
    if(consented, ['analytics'], []) AS consent,
    'https://shop.example' || path AS url,
    if(event = 'view_item', '/p/' || toString(rank), ['/', '/sale', '/c/shoes'][k % 3 + 1])
        AS path,
    ['', 'google.com', 'news.example'][k % 3 + 1] AS referrer_host,
    ['', 'nov', 'dec', ''][k % 4 + 1] AS utm_campaign,
    'desktop' AS device_class, cityHash64(n, 4) % 50 = 0 AS is_bot,
    if(event = 'purchase', if(cityHash64(n, 6) % 10 = 0, 'CHF', 'EUR'), '') AS currency,
    if(event IN ('view_item', 'add_to_cart', 'purchase'),
       arrayMap((r, i) -> ('p' || toString(r), 'Product ' || toString(r),
                           'cat' || toString(r % 50), 'brand', '',
                           toDecimal64(5 + r % 200, 4), toUInt32(1 + i % 2)),
                ranks, arrayEnumerate(ranks)),
       []) AS items
FROM
(
    SELECT number + {offset} AS n,
        cityHash64(n, 0) % 100 AS k,
        cityHash64(n, 1) % {devices} AS device,
        cityHash64(device, 9) % 5 != 0 AS consented,
        -- Zipf-like popularity: rank = P^u - 1, u uniform in [0, 1).
        arrayMap(i -> toUInt32(floor(pow({products},
                     (cityHash64(n, 10 + i) % 1000000) / 1e6))) - 1,
                 range(if(k >= 92 AND k < 96, 1 + cityHash64(n, 5) % 3, 1))) AS ranks,
        ranks[1] AS rank
    FROM numbers({count})
)
"""


def bench_site(data_dir: Path) -> tuple[Any, dict[str, str]]:
    """A migrated embedded engine in ``data_dir`` with the bench's site; its keys."""
    from collector.config import Settings
    from collector.migrations import migrate
    from collector.sites import Sites
    from collector.storage.embedded import EmbeddedStore

    store = EmbeddedStore(Settings(data_dir=data_dir).chdb_dir)
    migrate(store)
    _, keys = Sites(store, data_dir / "sites.json").create(SITE, ["https://shop.example"])
    return store, keys


def refresh_pairs(store: Any) -> None:
    """Pair the generated sessions and buyers now, as a collector running for more than a
    day would have them: the daily settled co-view pairs first (clickhouse/0025), then the
    minute's views, which add the recent sessions to them."""
    began = time.monotonic()
    for views in (("coview_pairs_settled_mv",), ("coview_pairs_mv", "copurchase_pairs_mv")):
        asked = time.time()
        for view in views:
            store.execute(f"SYSTEM REFRESH VIEW tagwerk.{view}")
        for view in views:
            while True:
                [row] = store.rows("SELECT status, toUnixTimestamp(last_success_time) AS done "
                                   "FROM system.view_refreshes WHERE view = {v:String}",
                                   {"v": view})
                if row["status"] == "Scheduled" and (row["done"] or 0) >= int(asked):
                    break
                time.sleep(0.2)
    print(f"pair tables refreshed in {time.monotonic() - began:.1f} s")


def generate(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """Migrate, create the site, insert the events; return the site's keys."""
    store, keys = bench_site(data_dir)
    began = time.monotonic()
    chunk = 1_000_000
    for offset in range(0, args.events, chunk):
        sql = GENERATE.format(site=SITE, total=args.events, span_ms=30 * 86400 * 1000,
                              persons=args.persons, products=args.products,
                              devices=args.devices, offset=offset,
                              count=min(chunk, args.events - offset))
        store.execute(sql)
    print(f"generated {args.events:,} events in {time.monotonic() - began:.0f} s")
    refresh_pairs(store)
    for table in ("events", "product_hourly", "session_items", "coview_pairs",
                  "copurchase_pairs", "page_daily"):
        [row] = store.rows(f"SELECT count() AS n FROM tagwerk.{table}")
        print(f"  tagwerk.{table}: {row['n']:,} rows")
    store.close()
    return keys


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "collector", "serve",
             "--port", str(self.port), "--sql-port", "0", "--no-demo",
             "--data-dir", str(data_dir), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(data_dir / "serve.log", "wb"))  # noqa: SIM115
        began = time.monotonic()
        wait_http(f"{self.base}/readyz", timeout=300)
        print(f"collector answered {time.monotonic() - began:.1f} s after its start "
              "(migrations included)")
        print(f"collector quiet {wait_quiet(self.proc.pid):.0f} s after it answered")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def fetch(url: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def endpoints(base: str) -> dict[str, list[str]]:
    api = f"{base}/api/v1/sites/{SITE}/products"
    return {
        "top": [f"{api}/top?window=24h&metric={m}&limit=10"
                for m in ("views", "add_to_carts", "purchases", "revenue")]
        + [f"{api}/top?window=24h&metric=revenue&limit=10&currency=CHF"],
        "trending": [f"{api}/trending?window=1h&baseline=7d&limit=10"],
        "related": [f"{api}/p{i}/related?kind={k}&limit=10" for i in range(100)
                    for k in ("co_view", "co_purchase")],
    }


def single_client(urls: list[str], key: str, seconds: float) -> list[float]:
    times = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        began = time.perf_counter()
        status, _ = fetch(urls[i % len(urls)], key)
        times.append((time.perf_counter() - began) * 1000)
        assert status == 200
        i += 1
    return times


def first_query_ms(urls: list[str], key: str) -> float:
    """One uncached answer (a new limit is a new cache key): the query's own cost."""
    times = []
    for n, url in enumerate(urls[:20]):
        began = time.perf_counter()
        fetch(url.replace("limit=10", f"limit={11 + n}"), key)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def wrk_script(urls: list[str], key: str, path: Path) -> Path:
    paths = [u.split("//", 1)[1].split("/", 1)[1] for u in urls]
    path.write_text(
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        f"local paths = {{{', '.join(json.dumps('/' + p) for p in paths)}}}\n"
        "local i = 0\n"
        "request = function()\n  i = i + 1\n"
        "  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    return path


def background_load(base: str, key: str, per_second: int, stop: threading.Event) -> None:
    """``per_second`` view_item events through the batch API, in batches of 100."""
    batches = max(1, per_second // 100)
    while not stop.is_set():
        began = time.monotonic()
        for _ in range(batches):
            events = [{"event": "view_item", "device_id": f"load-{uuid.uuid4().hex[:8]}",
                       "consent": ["analytics"], "user_agent": "Mozilla/5.0 Chrome/131",
                       "items": [{"product_id": f"p{i}", "price": 1}]} for i in range(100)]
            fetch(f"{base}/api/v1/batch", key, json.dumps({"events": events}).encode())
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


def seconds_until(base: str, keys: dict[str, str], events: list[dict], url: str,
                  token: str, timeout: float, pause: float) -> float:
    """Posts ``events`` through the batch API, then polls ``url`` (read key) until its answer
    holds ``token``: the seconds from the 202."""
    fetch(f"{base}/api/v1/batch", keys["write"], json.dumps({"events": events}).encode())
    acked = time.monotonic()
    while token.encode() not in fetch(url, keys["read"])[1]:
        if time.monotonic() - acked > timeout:
            raise RuntimeError(f"{token} did not appear within {timeout:.0f} s")
        time.sleep(pause)
    return time.monotonic() - acked


def freshness(base: str, keys: dict[str, str], probes: int) -> list[float]:
    out = []
    for _ in range(probes):
        tag = f"fresh-{uuid.uuid4().hex[:12]}"
        event = {"event": "view_item", "device_id": "probe", "consent": ["analytics"],
                 "user_agent": "Mozilla/5.0 Chrome/131",
                 "items": [{"product_id": tag, "category": tag, "price": 1}]}
        url = f"{base}/api/v1/sites/{SITE}/products/top?window=1h&category={tag}"
        out.append(seconds_until(base, keys, [event], url, tag, timeout=10, pause=0.005))
        time.sleep(0.05)
    return out


def pair_freshness(base: str, keys: dict[str, str], probes: int) -> list[float]:
    """Seconds from the 202 of a new shopper's two purchases (two new products) until
    ``related?kind=co_purchase`` of the first lists the second: the pairs' refresh after
    purchases (collector/identity/copurchase_refresh.py) plus the related answers' cache."""
    out = []
    for _ in range(probes):
        first, second = (f"pair-{uuid.uuid4().hex[:12]}" for _ in range(2))
        device = f"pair-probe-{uuid.uuid4().hex[:8]}"
        events = [{"event": "purchase", "device_id": device,
                   "consent": ["analytics", "personalization"],
                   "user_agent": "Mozilla/5.0 Chrome/131",
                   "items": [{"product_id": product, "price": 1}]}
                  for product in (first, second)]
        url = f"{base}/api/v1/sites/{SITE}/products/{first}/related?kind=co_purchase"
        out.append(seconds_until(base, keys, events, url, second, timeout=900, pause=0.1))
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=500_000)
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--products", type=int, default=5_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load", type=int, default=5000, help="events/s during freshness")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--pair-probes", type=int, default=3,
                        help="co-purchase freshness probes (each up to minutes at 10M events)")
    parser.add_argument("--data-dir", help="make the data there once, reuse it after")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagwerk-recommend-") as tmp:
        data_dir = Path(args.data_dir or tmp)
        saved = data_dir / "bench-keys.json"
        if saved.exists():
            keys = json.loads(saved.read_text())
            # Its times were relative to when it was made: the windows read less of it as it
            # ages, and every run adds the freshness probes' and load's events.
            made = time.time() - saved.stat().st_mtime
            print(f"reusing the data in {data_dir}, made {made / 3600:.1f} h ago")
        elif args.data_dir and any(data_dir.iterdir()):
            raise SystemExit(f"{data_dir} holds something else than this bench's data "
                             "(an interrupted generation?): give an empty directory")
        else:
            keys = generate(data_dir, args)
            saved.write_text(json.dumps(keys))
        server = Server(data_dir)
        try:
            print(f"\nserver on core {SERVER_CORE}, wrk on core {CLIENT_CORE}")
            print(f"{'endpoint':10} {'query ms':>9} {'p50 ms':>7} {'p99 ms':>7} "
                  f"{'p99/goal':>8} {'req/s':>8} {'goal/req/s':>10}")
            for name, urls in endpoints(server.base).items():
                query = first_query_ms(urls, keys["read"])
                times = single_client(urls, keys["read"], args.seconds)
                script = wrk_script(urls, keys["read"], data_dir / f"{name}.lua")
                result = wrk(urls[0], args.seconds, args.clients, script)
                assert result["non2xx"] == 0, result
                p99 = pct(times, 99)
                print(f"{name:10} {query:9.1f} {pct(times, 50):7.2f} {p99:7.2f} "
                      f"{p99 / GOAL_P99_MS:8.2f} {result['rps']:8.0f} "
                      f"{GOAL_RPS / result['rps']:10.2f}")
            stop = threading.Event()
            loader = threading.Thread(target=background_load,
                                      args=(server.base, keys["write"], args.load, stop),
                                      daemon=True)
            loader.start()
            time.sleep(2)
            fresh = freshness(server.base, keys, args.probes)
            pairs = pair_freshness(server.base, keys, args.pair_probes)
            stop.set()
            loader.join(10)
            p99 = pct(fresh, 99)
            print(f"\nfreshness under {args.load:,} events/s ({len(fresh)} probes): "
                  f"p50 {statistics.median(fresh) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                  f"p99/goal {p99 / GOAL_FRESH_S:.2f}")
            print(f"co-purchase pairs under the same load ({len(pairs)} probes): a new pair "
                  f"listed after {', '.join(f'{s:.1f}' for s in pairs)} s (median "
                  f"{statistics.median(pairs):.1f} s; the view's schedule alone: up to 600 s)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
