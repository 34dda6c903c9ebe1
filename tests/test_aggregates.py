"""The pre-aggregates of clickhouse/0010 and 0011 hold the numbers the raw events give.

A varied dataset (two sites, bots, hits without analytics consent, sessions spread over
several inserts, late rows with old timestamps) goes through the real ingestion (the
batch API), then every aggregate table is read back through its -Merge functions and
compared with the same numbers computed from ``tagwerk.events`` in SQL.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time

import httpx
import orjson
import pytest

from collector.migrations import load_migrations
from collector.sqlhttp import SqlUser, build_sql_app
from collector.storage.engine_config import AGGREGATE_TABLES
from tests.helpers import CHROME, drained, make_client, serve, wait_for

SITES = ("agg-a", "agg-b")
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PRODUCTS = [(f"p{i}", ["shoes", "bags", ""][i % 3], 10 + i) for i in range(9)]
PATHS = ["/", "/shoes", "/bags", "/sale", "/cart"]
HOSTS = ["", "", "google.com", "news.example", "agg-a.example"]
IN = "site_id IN ('agg-a', 'agg-b')"


def _events(rng: random.Random, site: str, now: dt.datetime) -> list[list[dict]]:
    """Three batches (three inserts) of one site's hits; sessions span them."""
    batches: list[list[dict]] = [[], [], []]
    clock = now - dt.timedelta(hours=3)
    for d in range(14):
        device, consented, bot = f"{site}-d{d}", d % 4 != 3, d == 5
        user = f"{site}-u{d % 5}" if d % 3 == 0 else ""
        for s in range(1 + d % 3):
            session = f"{site}-s{d}-{s}"
            for n in range(rng.randint(3, 8)):
                clock += dt.timedelta(milliseconds=rng.randint(1, 90_000))
                batch = batches[min(2, n // 3)]
                event = _event(rng, site, clock, device, session, user, consented, bot)
                batch.append(event)
    # Late rows: two days old, arriving in the last insert.
    for d in (0, 1, 3):
        late = now - dt.timedelta(days=2, minutes=d)
        batches[2].append(_event(rng, site, late, f"{site}-d{d}", f"{site}-late{d}", "",
                                 True, False, kind="purchase"))
        batches[2].append(_event(rng, site, late + dt.timedelta(seconds=1), f"{site}-d{d}",
                                 f"{site}-late{d}", "", True, False, kind="view_item"))
        batches[2].append(_event(rng, site, late + dt.timedelta(seconds=2), f"{site}-d{d}",
                                 f"{site}-late{d}", "", True, False, kind="view_item"))
    # Sessions of the last half hour: the co-view pairs' minute view pairs them, not the
    # daily one (clickhouse/0025).
    for d in (2, 4, 7):
        for n in range(4):
            recent = now - dt.timedelta(minutes=30 - d - n)
            batches[n % 3].append(_event(rng, site, recent, f"{site}-d{d}", f"{site}-recent{d}",
                                         "", True, False, kind="view_item"))
    return batches


def _event(rng: random.Random, site: str, ts: dt.datetime, device: str, session: str,
           user: str, consented: bool, bot: bool, kind: str = "") -> dict:
    kind = kind or rng.choice(["page_view", "page_view", "view_item", "view_item",
                               "add_to_cart", "purchase"])
    event: dict = {"event": kind, "ts": ts.isoformat(timespec="milliseconds"),
                   "channel": rng.choice(["web", "web", "app", "email"]),
                   "device_id": device, "session_id": session,
                   "consent": ["analytics"] if consented else [],
                   "user_agent": BOT if bot else CHROME}
    if user:
        event["user_id"] = user
    if kind == "page_view":
        host = rng.choice(HOSTS)
        campaign = rng.choice(["", "", "nov", "dec"])
        query = f"?utm_campaign={campaign}" if campaign else ""
        event["url"] = f"https://{site}.example{rng.choice(PATHS)}{query}"
        if host:
            event["referrer"] = f"https://{host}/x"
    else:
        picked = rng.sample(PRODUCTS, rng.randint(1, 3 if kind == "purchase" else 2))
        event["items"] = [{"product_id": p, "category": c, "price": price + 0.25,
                           "quantity": rng.randint(1, 3)} for p, c, price in picked]
        if kind == "view_item" and rng.random() < 0.1:
            event["items"].append({"product_id": "", "price": 1})  # no id: never counted
        if kind in ("add_to_cart", "purchase"):  # a shop in two currencies, and none named
            event["currency"] = ("EUR", "CHF", "")[sum(map(ord, session)) % 3]
    return event


@pytest.fixture(scope="module")
def loaded(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("aggregates"))
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC)
    with client:
        keys = {site: collector.sites.create(site)[1]["write"] for site in SITES}
        batches = {site: _events(rng, site, now) for site in SITES}
        for i in range(3):
            for site in SITES:
                response = client.post("/api/v1/batch", content=orjson.dumps(
                    {"events": batches[site][i]}), headers={
                    "Authorization": f"Bearer {keys[site]}",
                    "Content-Type": "application/json"})
                assert response.status_code == 202, response.text
            wait_for(lambda: drained(collector))
        refresh_pairs(store, SITES)
        yield store


def refresh_pairs(store, sites: tuple[str, ...]) -> None:
    """Recompute the pair tables now, and wait until they hold ``sites``' pairs. (``SYSTEM
    REFRESH VIEW`` only starts a refresh, and ``SYSTEM WAIT VIEW`` returns at once when it
    has not started yet.) The settled co-view pairs first: the minute's view adds the recent
    ones to them."""
    refresh_settled(store)
    refresh_minute(store, sites)


def refresh_settled(store, empty: bool = True) -> None:
    """The daily co-view refresh, now (it may hold none of the sites: wait for the refresh
    itself). ``empty``: the table emptied first, so that it recomputes (a refresh within a
    day of the last keeps its rows: clickhouse/0035)."""
    if empty:
        store.execute("TRUNCATE TABLE tagwerk.coview_pairs_settled")
    state = ("SELECT status, toUnixTimestamp(last_refresh_time) AS began, exception "
             "FROM system.view_refreshes WHERE view = 'coview_pairs_settled_mv'")
    time.sleep(1.05 - time.time() % 1)  # refresh times have whole seconds: a new one
    asked = int(time.time())
    store.execute("SYSTEM REFRESH VIEW tagwerk.coview_pairs_settled_mv")
    wait_for(lambda: (row := store.rows(state)[0])["status"] == "Scheduled"
             and (row["began"] or 0) >= asked)
    assert store.rows(state)[0]["exception"] == ""


def refresh_minute(store, sites: tuple[str, ...],
                   tables: tuple[str, ...] = ("coview_pairs", "copurchase_pairs")) -> None:
    """The minute's pair refreshes, now, until they hold ``sites``' pairs."""
    for table in tables:
        store.execute(f"TRUNCATE TABLE tagwerk.{table}")
        store.execute(f"SYSTEM REFRESH VIEW tagwerk.{table}_mv")
        ready = (f"SELECT uniqExact(site_id) = {len(sites)} AS ok FROM tagwerk.{table} "
                 "WHERE site_id IN {sites:Array(String)}")
        wait_for(lambda q=ready: store.rows(q, {"sites": list(sites)})[0]["ok"])
        store.execute(f"SYSTEM WAIT VIEW tagwerk.{table}_mv")


def same(store, aggregate: str, raw: str) -> list[dict]:
    """Both queries' rows, sorted; asserts they are equal and not trivially empty."""
    got = sorted(store.rows(aggregate), key=orjson.dumps)
    want = sorted(store.rows(raw), key=orjson.dumps)
    assert got == want
    assert len(want) > 3
    return want


def test_dataset_is_varied(loaded):
    [row] = loaded.rows(f"""
        SELECT countIf(is_bot) AS bots, countIf(device_id = '') AS unconsented,
            uniqExact(toStartOfHour(ts)) AS hours, uniqExact(site_id) AS sites
        FROM tagwerk.events WHERE {IN}""")
    assert row["bots"] > 3 and row["unconsented"] > 10 and row["hours"] >= 3
    assert row["sites"] == 2


def test_product_hourly(loaded):
    rows = same(loaded, f"""
        SELECT site_id, hour, product_id, sum(views) AS views,
            sum(add_to_carts) AS add_to_carts, sum(purchases) AS purchases,
            sum(quantity) AS quantity, toString(sum(revenue)) AS revenue,
            uniqCombinedMerge(12)(persons) AS persons,
            uniqCombinedMerge(12)(viewers) AS viewers,
            uniqCombinedMerge(12)(carters) AS carters,
            uniqCombinedMerge(12)(buyers) AS buyers,
            uniqCombinedMerge(12)(client_views) AS client_views,
            uniqCombinedMerge(12)(client_carts) AS client_carts,
            uniqCombinedMerge(12)(client_purchases) AS client_purchases,
            uniqCombinedMerge(12)(client_interactions) AS client_interactions,
            arraySort(groupUniqArrayArray(categories)) AS categories,
            toString(max(last_ts)) AS last_ts
        FROM tagwerk.product_hourly WHERE {IN}
        GROUP BY site_id, hour, product_id""", f"""
        SELECT site_id, toStartOfHour(ts) AS hour, it.1 AS product_id,
            countIf(event = 'view_item') AS views, countIf(event = 'add_to_cart') AS add_to_carts,
            countIf(event = 'purchase') AS purchases,
            toUInt64(sumIf(it.7, event = 'purchase')) AS quantity,
            toString(toDecimal128(sumIf(it.6 * it.7, event = 'purchase'), 4)) AS revenue,
            uniqExactIf(if(user_id = '' OR NOT user_verified, device_id, user_id),
                        device_id != '' OR user_id != '' AND user_verified) AS persons,
            uniqExactIf(if(user_id = '' OR NOT user_verified, device_id, user_id),
                        (device_id != '' OR user_id != '' AND user_verified)
                        AND event = 'view_item') AS viewers,
            uniqExactIf(if(user_id = '' OR NOT user_verified, device_id, user_id),
                        (device_id != '' OR user_id != '' AND user_verified)
                        AND event = 'add_to_cart') AS carters,
            uniqExactIf(if(user_id = '' OR NOT user_verified, device_id, user_id),
                        (device_id != '' OR user_id != '' AND user_verified)
                        AND event = 'purchase') AS buyers,
            uniqExactIf(%(client)s, %(clienty)s AND event = 'view_item') AS client_views,
            uniqExactIf(%(client)s, %(clienty)s AND event = 'add_to_cart') AS client_carts,
            uniqExactIf(%(client)s, %(clienty)s AND event = 'purchase') AS client_purchases,
            uniqExactIf((%(client)s, event), %(clienty)s) AS client_interactions,
            arraySort(arrayDistinct(arrayFilter(c -> c != '', groupArray(it.3)))) AS categories,
            toString(max(ts)) AS last_ts
        FROM tagwerk.events ARRAY JOIN items AS it
        WHERE {IN} AND is_bot = 0 AND it.1 != ''
            AND event IN ('view_item', 'add_to_cart', 'purchase')
        GROUP BY site_id, hour, product_id""" % {
        # (a browser's client, else the person hashed: clickhouse/0047)
        "client": "(if(client_hash != 0, toStartOfHour(received_at), toStartOfHour(ts)), "
                  "if(client_hash != 0, client_hash, cityHash64(if(user_id = '' OR NOT "
                  "user_verified, device_id, user_id))))",
        "clienty": "(client_hash != 0 OR device_id != '' OR user_id != '' AND user_verified)"})
    assert any(r["persons"] for r in rows) and any(float(r["revenue"]) > 0 for r in rows)
    assert any(r["client_views"] for r in rows)


def test_product_revenue_per_currency(loaded):
    """Each purchase's revenue under its own currency ('' when it named none)."""
    rows = same(loaded, f"""
        SELECT site_id, hour, product_id, currency, sum(purchases) AS purchases,
            toString(sum(revenue)) AS revenue
        FROM tagwerk.product_hourly WHERE {IN}
        GROUP BY site_id, hour, product_id, currency HAVING purchases > 0""", f"""
        SELECT site_id, toStartOfHour(ts) AS hour, it.1 AS product_id, currency,
            count() AS purchases, toString(toDecimal128(sum(it.6 * it.7), 4)) AS revenue
        FROM tagwerk.events ARRAY JOIN items AS it
        WHERE {IN} AND is_bot = 0 AND it.1 != '' AND event = 'purchase'
        GROUP BY site_id, hour, product_id, currency""")
    assert {r["currency"] for r in rows} == {"EUR", "CHF", ""}


def test_page_daily_totals(loaded):
    same(loaded, f"""
        SELECT site_id, day, path, sum(views) AS views, uniqMerge(visitors) AS visitors,
            toString(max(last_ts)) AS last_ts
        FROM tagwerk.page_daily WHERE {IN} GROUP BY site_id, day, path""", f"""
        SELECT site_id, toDate(ts) AS day, path, count() AS views,
            uniqExactIf(if(device_id = '', user_id, device_id), device_id || user_id != '')
                AS visitors,
            toString(max(ts)) AS last_ts
        FROM tagwerk.events WHERE {IN} AND is_bot = 0 AND event = 'page_view'
        GROUP BY site_id, day, path""")


@pytest.mark.parametrize(("column", "source"), [
    ("referrers", "referrer_host"), ("campaigns", "utm_campaign"),
    ("channels", "toString(channel)")])
def test_page_daily_maps(loaded, column, source):
    same(loaded, f"""
        SELECT site_id, day, path, key, n
        FROM (SELECT site_id, day, path, sumMap({column}) AS m FROM tagwerk.page_daily
              WHERE {IN} GROUP BY site_id, day, path)
        ARRAY JOIN mapKeys(m) AS key, mapValues(m) AS n""", f"""
        SELECT site_id, toDate(ts) AS day, path, {source} AS key, count() AS n
        FROM tagwerk.events
        WHERE {IN} AND is_bot = 0 AND event = 'page_view' AND key != ''
        GROUP BY site_id, day, path, key""")


def test_page_entries(loaded):
    rows = same(loaded, f"""
        SELECT site_id, day, path, entries FROM tagwerk.page_entries WHERE {IN}""", f"""
        SELECT site_id, toDate(first) AS day, entry AS path, count() AS entries
        FROM
        (
            SELECT site_id, session_id, min(ts) AS first, argMin(path, ts) AS entry
            FROM tagwerk.events
            WHERE {IN} AND is_bot = 0 AND event = 'page_view' AND session_id != ''
            GROUP BY site_id, session_id
        )
        GROUP BY site_id, day, path""")
    [total] = loaded.rows(f"""SELECT uniqExact(site_id, session_id) AS n FROM tagwerk.events
        WHERE {IN} AND NOT is_bot AND event = 'page_view' AND session_id != ''""")
    assert sum(r["entries"] for r in rows) == total["n"]


def test_purchased_items(loaded):
    same(loaded, f"""
        SELECT site_id, device_id, user_id, arraySort(groupUniqArrayArray(products)) AS products,
            toString(max(last_ts)) AS last_ts
        FROM tagwerk.purchased_items WHERE {IN} GROUP BY site_id, device_id, user_id""", f"""
        SELECT site_id, device_id, user_id,
            arraySort(groupUniqArray(product)) AS products, toString(max(ts)) AS last_ts
        FROM tagwerk.events ARRAY JOIN items.product_id AS product
        WHERE {IN} AND NOT is_bot AND event = 'purchase' AND product != ''
            AND device_id || user_id != ''
        GROUP BY site_id, device_id, user_id""")


# Pairs from raw events: each group's distinct products, both orders of each pair.
RAW_PAIRS = """
    SELECT site_id, a AS product_id, b AS other_id, count() AS n, toString(max(last)) AS last_ts
    FROM
    (
        SELECT site_id, groupUniqArray(product) AS ps, max(ts) AS last
        FROM tagwerk.events ARRAY JOIN items.product_id AS product
        WHERE {where} AND NOT is_bot AND product != ''
        GROUP BY site_id, {group}
        HAVING length(ps) BETWEEN 2 AND {most}
    )
    ARRAY JOIN ps AS a ARRAY JOIN ps AS b
    WHERE a != b
    GROUP BY site_id, a, b"""


def test_coview_pairs(loaded):
    same(loaded, f"""
        SELECT site_id, product_id, other_id, sum(sessions) AS n, toString(max(last_ts)) AS last_ts
        FROM tagwerk.coview_pairs WHERE {IN} GROUP BY site_id, product_id, other_id""",
         RAW_PAIRS.format(where=f"{IN} AND event = 'view_item' AND session_id != ''",
                          group="session_id", most=50))


def test_coview_pairs_come_from_both_tiers(loaded):
    """The sessions that ended over an hour ago are paired by the daily view, the others by
    the minute's (test_coview_pairs checks that together they are every pair, once)."""
    [row] = loaded.rows(f"""
        SELECT count() AS settled, max(boundary) > now() - toIntervalMinute(70) AS recent_cut
        FROM tagwerk.coview_pairs_settled WHERE {IN}""")
    assert row["settled"] > 3 and row["recent_cut"]
    [row] = loaded.rows(f"""
        SELECT countIf(last_ts >= (SELECT max(boundary) FROM tagwerk.coview_pairs_settled))
            AS recent FROM tagwerk.coview_pairs WHERE {IN}""")
    assert row["recent"] > 3


def view_item(store, site: str, session: str, product: str, ts: dt.datetime) -> None:
    """A product view stored straight into events (with consent to analytics), at ``ts``."""
    store.execute(
        "INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at, "
        "session_id, device_id, consent, items) SELECT generateUUIDv4(), {site:String}, "
        "'view_item', 'track', {ts:DateTime64(3, 'UTC')}, now64(3), {session:String}, "
        "{device:String}, ['analytics'], [({p:String}, '', '', '', '', 1, 1)]",
        {"site": site, "ts": ts, "session": session, "device": f"{site}-d", "p": product})


def test_a_session_going_on_after_it_settled_counts_once(loaded):
    """A session may go on after the daily refresh settled it (a container's session timeout
    of hours, a batch with old times): the minute's view leaves it to the next daily refresh
    instead of pairing it again beside its settled pairs (clickhouse/0025)."""
    site, now = "late-settled", dt.datetime.now(dt.UTC)

    def view(product: str, ts: dt.datetime) -> None:
        view_item(loaded, site, "late-settled-s", product, ts)

    def pairs() -> list[tuple[str, str, int]]:
        return [(r["product_id"], r["other_id"], int(r["n"])) for r in loaded.rows(
            "SELECT product_id, other_id, sum(sessions) AS n FROM tagwerk.coview_pairs "
            "WHERE site_id = {site:String} GROUP BY product_id, other_id ORDER BY 1, 2",
            {"site": site})]

    view("p1", now - dt.timedelta(hours=3))
    view("p2", now - dt.timedelta(hours=3) + dt.timedelta(minutes=1))
    refresh_settled(loaded)
    view("p3", now - dt.timedelta(minutes=5))
    refresh_minute(loaded, (site,), ("coview_pairs",))
    assert pairs() == [("p1", "p2", 1), ("p2", "p1", 1)]
    # The next daily refresh leaves it to the minute's view, which pairs it whole.
    refresh_settled(loaded)
    refresh_minute(loaded, (site,), ("coview_pairs",))
    assert pairs() == [(a, b, 1) for a in ("p1", "p2", "p3") for b in ("p1", "p2", "p3")
                       if a != b]


def test_a_refresh_within_a_day_of_the_last_keeps_the_settled_pairs(loaded):
    """The engine refreshes every refreshable view when it starts: the daily co-view view
    keeps what it computed less than a day before instead of regrouping 90 days of sessions
    at every start of the collector; a refresh after a day (the scheduled one), or of an
    emptied table, recomputes (clickhouse/0035)."""
    site, now = "kept-settled", dt.datetime.now(dt.UTC)

    def session(name: str, products: tuple[str, ...]) -> None:
        for n, product in enumerate(products):
            view_item(loaded, site, name, product, now - dt.timedelta(hours=3, minutes=-n))

    def settled() -> tuple[list[tuple[str, str]], str]:
        pairs = [(r["product_id"], r["other_id"]) for r in loaded.rows(
            "SELECT product_id, other_id FROM tagwerk.coview_pairs_settled "
            "WHERE site_id = {site:String} AND product_id != '' ORDER BY 1, 2", {"site": site})]
        [row] = loaded.rows("SELECT toString(max(boundary)) AS b "
                            "FROM tagwerk.coview_pairs_settled")
        return pairs, row["b"]

    session("kept-s1", ("p1", "p2"))
    refresh_settled(loaded)
    before = settled()
    assert before[0] == [("p1", "p2"), ("p2", "p1")]
    session("kept-s2", ("p3", "p4"))  # ended three hours ago: the next recompute pairs it
    refresh_settled(loaded, empty=False)  # as at a start, an hour after the last refresh
    assert settled() == before  # kept as it was: same pairs, same boundary
    loaded.execute("ALTER TABLE tagwerk.coview_pairs_settled UPDATE "
                   "boundary = boundary - toIntervalHour(24) WHERE 1 SETTINGS mutations_sync = 1")
    refresh_settled(loaded, empty=False)  # as the next day's: a day after the boundary
    pairs, boundary = settled()
    assert pairs == [("p1", "p2"), ("p2", "p1"), ("p3", "p4"), ("p4", "p3")]
    assert boundary > before[1]


def test_copurchase_pairs(loaded):
    same(loaded, f"""
        SELECT site_id, product_id, other_id, sum(buyers) AS n, toString(max(last_ts)) AS last_ts
        FROM tagwerk.copurchase_pairs WHERE {IN} GROUP BY site_id, product_id, other_id""",
         RAW_PAIRS.format(where=f"{IN} AND event = 'purchase' AND device_id || user_id != ''",
                          group="if(user_id != '', 'u' || user_id, 'd' || device_id)",
                          most=200))


def test_no_person_keyed_state_without_consent_or_from_bots(loaded):
    for table in ("session_items", "purchased_items", "session_entries"):
        [row] = loaded.rows(f"""SELECT countIf(device_id = '' AND user_id = '') AS anonymous,
            countIf(device_id = 'agg-a-d5' OR device_id = 'agg-b-d5') AS bots
            FROM tagwerk.{table} WHERE {IN}""")
        assert row == {"anonymous": 0, "bots": 0}, table


def test_backfill_selects_what_the_view_selects():
    """Each migration's backfill must be its view's query (plus the empty-target guard)."""
    for migration in load_migrations():
        if migration.version not in (10, 11):
            continue
        statements = migration.statements
        views = {m[1]: m[2] for s in statements if (m := re.match(
            r"CREATE MATERIALIZED VIEW IF NOT EXISTS \S+ TO (\S+) AS\s+(.*)", s, re.S))}
        fills = {m[1]: m[2] for s in statements if (m := re.match(
            r"INSERT INTO (\S+)\s+(.*)", s, re.S))}
        assert fills.keys() == views.keys() and views
        for target, select in views.items():
            guard = f"\n    AND (SELECT count() FROM {target}) = 0"
            assert " ".join(fills[target].replace(guard, "").split()) == \
                " ".join(select.split()), target


def test_the_data_team_reads_them_through_the_sql_port(loaded):
    """The read-only users read the aggregates; a site-scoped one only its sites' rows."""
    users = {"agency": SqlUser("agency", "pw", readonly=True, sites=("agg-a",)),
             "team": SqlUser("team", "pw", readonly=True)}
    with serve(build_sql_app(loaded, users, loopback_only=True)) as url:
        for user, sites in (("agency", "agg-a"), ("team", "agg-a,agg-b")):
            for table in AGGREGATE_TABLES:
                response = httpx.post(url, auth=(user, "pw"), content=(
                    f"SELECT arrayStringConcat(arraySort(groupUniqArray(site_id)), ',') "
                    f"FROM {table} WHERE site_id LIKE 'agg-%'"))
                assert response.status_code == 200, response.text
                assert response.text.strip() == sites, (user, table)
