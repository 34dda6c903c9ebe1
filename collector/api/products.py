"""Product lists from the pre-aggregates of ``clickhouse/0010_product_aggregates.sql``:
top, trending and related products, with the site's read key.

Every list answers ``{"items": [{"product_id": ..., "score": ..., ...}], "as_of": T}``,
``T`` being the time (ISO 8601, UTC) of the newest event the list was computed from, or
null when none was.

- **Top** answers also ``"currency"``: revenue sums the purchases of one currency (ISO 4217),
  the one asked for with ``currency=``, else the one most of the window's purchases named
  (chosen again once a minute); null when none named one (the revenue of purchases
  without a currency).
- **Windows** count whole hours of ``product_hourly``: ``window=24h`` reads the hours from
  the start of the hour 24 hours ago up to now (24 to 25 hours).
- **Trending** compares a product's interactions (views + add-to-carts + purchases) in the
  recent window R (the hours from the start of the hour ``window`` ago up to now) with the
  ``baseline`` window B just before it::

      expected = baseline_count * duration(R) / duration(B)
      score    = (recent_count + K) / (expected + K),   K = 5

  a smoothed ratio of rates: above 1 when a product gets more attention than its usual
  pace, with K damping tiny counts (1 view of a product never seen scores 1.2, 60 views
  where 10 were expected score 4.3). Only products seen in R are listed.
- **Related** reads the pair tables: sessions that viewed both (``co_view``) or buyers who
  bought both (``co_purchase``, persons as the identity graph resolves them); never the
  product itself. Co-view pairs are recomputed every minute, co-purchase pairs every 10.

Top and trending answers are kept until the flusher's next insert or for at most
``CACHE_SECONDS`` (inserts of other collectors on a cluster), so a hit is in the next
answer once flushed; related answers for ``RELATED_SECONDS`` (their tables change once a
minute).
Every query takes a list of product ids to leave out: :func:`exclusions` computes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any
from weakref import WeakKeyDictionary

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collector.api.access import READ, ApiError, json_response, keyed
from collector.api.persons import identifier
from collector.api.query import choice, integer, params, path_text, window
from collector.identifiers import has_control
from collector.identity import profile as profiles
from collector.identity.cache import PersonAnswers
from collector.identity.graph import Graph
from collector.identity.link_index import LinkIndex
from collector.identity.resolutions import link_keys, resolve_kept, sole_owners
from collector.ingest.events import CURRENCY
from collector.service import Collector
from collector.sites import Site
from collector.storage.base import settings_clause

METRICS = ("views", "add_to_carts", "purchases", "revenue")
KINDS = ("co_view", "co_purchase")
SMOOTHING = 5.0
HOUR = 3600
CACHE_SECONDS = 1.0
# Pair tables change only when their views refresh (co-view each minute, co-purchase after
# purchases: copurchase_refresh.py), not when the flusher inserts: related answers are kept
# this long, whatever the flusher does.
RELATED_SECONDS = 10.0
CACHE_ENTRIES = 4096
# How long a computation waits for a slot of its gate (``Answers.get``) before a 503; an
# answer computed at most STALE_SECONDS ago is answered instead, when there is one (the
# lists most visitors ask stay served while one client keeps the slots busy).
GATE_SECONDS = 2.0
STALE_SECONDS = 600.0
# A public list computed with a proof of persons (``proves``) is answered no sooner than
# this after it was asked: how long the proof takes told whether its items' keys resolve to
# linked identifiers of one person (a co-view pair of a shopper's two devices: 8-20 ms more
# than a product without pairs, probe 67; a top or trending item the same way). Above most
# lists' p99 on the bench (bench/public_lists.py); one that takes longer (the week's top:
# 460 ms) is answered at the next multiple of it. A list computed is then answered from the
# cache (RELATED_SECONDS for pairs, until the next flush for the others).
PROOF_SECONDS = 0.25
MAX_EXCLUDED = 1000


@dataclass(frozen=True)
class Bounds:
    """What a caller may ask for: the keyed API allows more than the browser-safe one."""

    max_limit: int = 100
    max_window: int = 90 * 86400
    max_baseline: int = 90 * 86400
    # Sessions behind a "viewed together" pair (and persons: ``proved_pairs``), persons
    # behind a "bought together" one and behind the count a top or trending list ranks by
    # (clickhouse/0041): on a public page, one would show what that shopper looked at or
    # bought (together).
    min_support: int = 1
    # Settings every query of such a list runs under (the engine's limits on it).
    settings: tuple[tuple[str, int], ...] = ()


KEYED = Bounds()


# -- the queries ----------------------------------------------------------------------------

# Revenue is of one currency (product_hourly keeps it per currency, clickhouse/0037): the
# one asked for, else the one most purchases in the window named (``MAIN_CURRENCY``, kept
# for ``CURRENCY_SECONDS``: read with every list, it doubled an uncached list's cost).
TOP = """
SELECT product_id, sum(views) AS views, sum(add_to_carts) AS add_to_carts,
    sum(purchases) AS purchases, sum(quantity) AS quantity,
    toFloat64(sumIf(revenue, currency = {currency:String})) AS revenue, %(as_of)s%(persons)s
FROM tagwerk.product_hourly
WHERE site_id = {site:String} AND hour >= toDateTime({since:UInt32})
    AND hour <= toDateTime({until:UInt32})
    AND product_id NOT IN {exclude:Array(String)}
GROUP BY product_id
HAVING %(metric)s > 0 %(category)s %(support)s
ORDER BY %(rank)s%(metric)s DESC, product_id
LIMIT {limit:UInt32}
"""
# The public lists rank by clients (clickhouse/0047: an address, an IPv6 /48), each counted
# once per product, hour and interaction: one client's fresh devices otherwise voted any
# product to the top of the shop's pages. (States of (hour, client): merged over a window,
# the sum of each hour's clients.)
CLIENTS = {"views": "uniqCombinedMerge(12)(client_views)",
           "add_to_carts": "uniqCombinedMerge(12)(client_carts)",
           "purchases": "uniqCombinedMerge(12)(client_purchases)",
           "revenue": "uniqCombinedMergeIf(12)(client_purchases, currency = {currency:String})"}
# What trending counts in a part of its window (%s: the condition on the hour).
INTERACTIONS = "sumIf(views + add_to_carts + purchases, %s)"
CLIENT_INTERACTIONS = "uniqCombinedMergeIf(12)(client_interactions, %s)"

# Hours stored before clickhouse/0037 count their purchases under '' (only their revenue
# was moved to its currency): there, the hours of products sold in a currency decide.
MAIN_CURRENCY = """
SELECT toString(currency) AS currency FROM tagwerk.product_hourly
WHERE site_id = {site:String} AND hour >= toDateTime({since:UInt32})
    AND hour <= toDateTime({until:UInt32}) AND currency != ''
GROUP BY currency ORDER BY sum(purchases) DESC, countIf(revenue != 0) DESC, currency LIMIT 1
"""
CURRENCY_SECONDS = 60.0
# Answers kept for a time whatever the flusher does (the others until its next insert).
KEPT_SECONDS = {"related": RELATED_SECONDS, "currency": CURRENCY_SECONDS}

TRENDING = """
SELECT product_id, recent, baseline,
    (recent + {k:Float64}) / (baseline * {ratio:Float64} + {k:Float64}) AS score, as_of%(outer)s
FROM
(
    SELECT product_id,
        %(recent)s AS recent, %(baseline)s AS baseline, %(as_of)s%(persons)s
    FROM tagwerk.product_hourly
    WHERE site_id = {site:String} AND hour >= toDateTime({since:UInt32})
        AND hour <= toDateTime({until:UInt32})
        AND product_id NOT IN {exclude:Array(String)}
    GROUP BY product_id
    HAVING recent > 0 %(support)s
)
ORDER BY score DESC, recent DESC, product_id
LIMIT {limit:UInt32}
"""

RELATED = """
SELECT other_id, sum(%(count)s) AS score, %(as_of)s%(sessions)s
FROM tagwerk.%(table)s
WHERE site_id = {site:String} AND product_id = {product:String}
    AND other_id != {product:String} AND other_id NOT IN {exclude:Array(String)}
GROUP BY other_id
HAVING score >= {support:UInt64}%(having)s
ORDER BY %(order)s
LIMIT {limit:UInt32}
"""
# A public co-view list's candidates, by the clients behind each pair (clickhouse/0045,
# 0048: a browser's network, else a device): by sessions, one browser's sessions of a
# product and 49 others took every candidate row and a pair two persons viewed was left out
# (probe 67); by devices, one line's fresh devices made any pair. With the ids of a session
# of each of up to 11 clients, which ``proved_pairs`` resolves.
# A public bought-together list's, by the clients of each pair's buyers (clickhouse/0050):
# fresh devices buying from one line were each a buyer (its persons are proved already).
SPREAD = ", sum(clients) AS spread"
PUBLIC_CO_VIEW = ", groupUniqArrayArray(11)(session_ids) AS seen" + SPREAD
# A public pair list is dated by its view's last refresh: a pair's last view told when the
# one other person behind it last viewed anything, to the minute (probe 67).
REFRESHED = """
SELECT toString(max(last_success_time)) AS as_of FROM system.view_refreshes
WHERE database = 'tagwerk' AND view = {view:String}
"""

# The newest event included, never later than now: the batch API takes times up to a day
# ahead, and the windows end with the current hour (``Ask.until``), which such a hit may be
# in, minutes ahead.
AS_OF = "toString(least(max(max(last_ts)) OVER (), now64(3))) AS as_of"
LAST = "toString(least(max(last_ts), now64(3))) AS last"  # each row's own (``_as_of``)

PAIRS = {"co_view": ("coview_pairs", "sessions"), "co_purchase": ("copurchase_pairs", "buyers")}
# The persons behind each metric of a top list (product_hourly's states, clickhouse/0049).
PERSONS = {"views": "viewers", "add_to_carts": "carters", "purchases": "buyers"}
# Those persons are user ids, else device ids, as an hour's row knows them: one shopper's
# phone and desktop, or their guest and logged-in hits, count twice. An item whose count is
# at most PROVED_UP_TO is listed only once the identity graph finds enough persons behind
# its hits (one person with more devices and ids than that in a window is not a case we
# meet). The list's query asks for SPARE_ROWS more items, to stand in for those left out.
PROVED_UP_TO = 10
SPARE_ROWS = 24
EVENTS = {"views": ("view_item",), "add_to_carts": ("add_to_cart",),
          "purchases": ("purchase",), "revenue": ("purchase",),
          "trending": ("view_item", "add_to_cart", "purchase")}
# Who is behind the hits of a few products in a window, as product_hourly's view counts
# them (clickhouse/0042: a browser's user id is a claim, its device counts): the keys, as
# (kind, id, the user id a browser claimed on it). The events' sort key starts with the site
# and the day, so only the window's days are read.
KEYS_BEHIND = """
SELECT item.product_id AS product_id,
    groupUniqArray(64)(if(user_id != '' AND user_verified, ('user', user_id, ''),
                          ('device', device_id, user_id))) AS keys
FROM tagwerk.events
ARRAY JOIN items AS item
WHERE site_id = {site:String} AND ts >= toDateTime64({since:UInt32}, 3)
    AND ts < toDateTime64({end:UInt32}, 3) AND event IN {events:Array(String)}
    AND NOT is_bot AND (user_id != '' AND user_verified OR device_id != '')
    AND item.product_id IN {products:Array(String)} %(currency)s
GROUP BY product_id
"""
# Who viewed a few co-view pairs: each session's rows (device id, user id), by
# session_items' sort key. A pair keeps the ids of up to 11 of its sessions (clickhouse/0043).
SESSION_KEYS = """
SELECT session_id, groupUniqArray((device_id, user_id)) AS keys
FROM tagwerk.session_items
WHERE site_id = {site:String} AND session_id IN {sessions:Array(String)}
GROUP BY session_id
"""
Owners = Callable[[list[tuple[str, str]]], list[str | None]]

@dataclass(frozen=True)
class Ask:
    """One list, fully specified: also its cache key (with the site and exclusions)."""

    kind: str  # top, trending, related; currency: the window's main one (``MAIN_CURRENCY``)
    limit: int
    metric: str = "views"
    category: str = ""
    currency: str | None = None  # top: the revenue's (ISO 4217; '': of none named), None
    # until ``Answers`` resolves it to the window's main currency
    since: int = 0  # unix seconds, the start of an hour
    until: int = 0  # the start of the last hour counted: now's (a hit stamped ahead waits)
    recent: int = 0  # trending: start of the recent window
    product: str = ""
    pairs: str = "co_view"
    support: int = 1  # the least persons, sessions or buyers behind an item (``Bounds``)
    settings: tuple[tuple[str, int], ...] = ()  # ``Bounds.settings``

    @property
    def limits(self) -> str:
        """``settings`` as the SETTINGS clause each of the list's queries ends with."""
        return settings_clause(dict(self.settings))


def proves(ask: Ask) -> bool:
    """Whether the list is checked for enough persons behind each item (``proved``,
    ``proved_pairs``): a public top, trending or co-view list. (Co-purchase pairs count the
    graph's persons already: clickhouse/0039.)"""
    return ask.support > 1 and ask.kind in ("top", "trending", "related") \
        and ask.pairs != "co_purchase"


def interactions(public: bool, hours: str) -> str:
    """What trending counts in the ``hours`` of its window: interactions, or on a public
    list each client's once an hour (``CLIENT_INTERACTIONS``)."""
    return (CLIENT_INTERACTIONS if public else INTERACTIONS) % hours


def hour_start(seconds: float) -> int:
    return int(seconds // HOUR * HOUR)


def compute(store: Any, site_id: str, ask: Ask, exclude: tuple[str, ...],
            now: float, owners: Owners | None = None) -> dict[str, Any]:
    """Run one list's query (blocking: call it in a thread). ``owners``: whose each
    identifier's hits are (``resolutions.sole_owners``), for a list with a support above 1
    (top, trending, co-view pairs)."""
    proving = proves(ask) and owners is not None
    public = ask.support > 1  # (the browser-safe lists: ``Bounds.min_support``)
    limits = ask.limits
    base = {"site": site_id, "exclude": list(exclude),
            "limit": ask.limit + (SPARE_ROWS if proving else 0)}
    if ask.kind == "top":
        category = "AND has(groupUniqArrayArray(categories), {category:String})" \
            if ask.category else ""
        # (asked only above 1: a product whose hits named no one has no persons)
        # (revenue: the buyers of the currency it ranks by, not of every currency)
        persons = "uniqCombinedMergeIf(12)(buyers, currency = {currency:String})" \
            if ask.metric == "revenue" else f"uniqCombinedMerge(12)({PERSONS[ask.metric]})"
        support = f"AND {persons} >= {{support:UInt64}}" if ask.support > 1 else ""
        sql = TOP % {"metric": ask.metric, "category": category, "support": support,
                     "as_of": AS_OF, "persons": f", {persons} AS behind, {LAST}" if proving
                     else "", "rank": f"{CLIENTS[ask.metric]} DESC, " if public else ""}
        rows = store.rows(sql + limits, {**base, "since": ask.since, "until": ask.until,
                                "category": ask.category, "currency": ask.currency or "",
                                "support": ask.support})
        if proving:
            rows = proved(store, site_id, ask, rows, owners, ask.metric, ask.since)
        items = [{"product_id": r["product_id"], "score": r[ask.metric],
                  **{m: r[m] for m in (*METRICS, "quantity")}} for r in rows]
        return {"items": items, "currency": ask.currency or None,
                "as_of": _as_of(rows, proving)}
    elif ask.kind == "currency":
        return {"currency": main_currency(store, site_id, ask.since, ask.until, limits)}
    elif ask.kind == "trending":
        recent_seconds = max(now - ask.recent, 1.0)
        ratio = recent_seconds / max(ask.recent - ask.since, 1)
        recent_persons = "uniqCombinedMergeIf(12)(persons, hour >= toDateTime({recent:UInt32}))"
        support = f"AND {recent_persons} >= {{support:UInt64}}" if ask.support > 1 else ""
        rows = store.rows((TRENDING % {
            "as_of": AS_OF, "support": support, "outer": ", behind, last" if proving else "",
            "persons": f", {recent_persons} AS behind, {LAST}" if proving else "",
            "recent": interactions(public, "hour >= toDateTime({recent:UInt32})"),
            "baseline": interactions(public, "hour < toDateTime({recent:UInt32})")}) + limits,
                          {**base, "since": ask.since, "until": ask.until,
                           "recent": ask.recent, "k": SMOOTHING, "ratio": ratio,
                           "support": ask.support})
        if proving:
            rows = proved(store, site_id, ask, rows, owners, "trending", ask.recent)
        items = [{"product_id": r["product_id"], "score": round(r["score"], 4),
                  "recent": r["recent"], "baseline": r["baseline"]} for r in rows]
        return {"items": items, "as_of": _as_of(rows, proving)}
    else:
        table, count = PAIRS[ask.pairs]
        spread = PUBLIC_CO_VIEW if proving else SPREAD if public else ""
        rows = store.rows(RELATED % {
            "table": table, "count": count, "as_of": AS_OF, "sessions": spread,
            "order": "spread DESC, score DESC, other_id" if public else "score DESC, other_id",
            # (nothing to resolve for a pair of one device: its answer took no longer than
            # one of a product without pairs, probe 67)
            "having": " AND spread >= {support:UInt64}" if public else "",
        } + limits, {**base, "product": ask.product, "support": ask.support})
        if proving:
            rows = proved_pairs(store, site_id, ask, rows, owners)
        items = [{"product_id": r["other_id"], "score": r["score"], count: r["score"]}
                 for r in rows]
        if not rows:
            return {"items": [], "as_of": None}
        if ask.support > 1:  # (a public list)
            [refreshed] = store.rows(REFRESHED + limits, {"view": f"{table}_mv"})
            return {"items": items, "as_of": _iso(refreshed["as_of"])}
        return {"items": items, "as_of": _iso(rows[0]["as_of"])}


def proved(store: Any, site_id: str, ask: Ask, rows: list[dict[str, Any]],
           owners: Owners, counted: str, since: int) -> list[dict[str, Any]]:
    """The first ``ask.limit`` rows with ``ask.support`` persons behind them at least: the
    identity graph's persons (``owners``) where the row's count is at most PROVED_UP_TO.
    ``counted``: the metric (its events), or "trending"; ``since``: the window counted."""
    doubtful = [row["product_id"] for row in rows if row["behind"] <= PROVED_UP_TO]
    if doubtful:
        currency = "AND currency = {currency:String}" if counted == "revenue" else ""
        found = store.rows(KEYS_BEHIND % {"currency": currency} + ask.limits, {
            "site": site_id, "since": since, "end": ask.until + HOUR,
            "events": list(EVENTS[counted]), "products": doubtful,
            "currency": ask.currency or ""})
        keys = {row["product_id"]: [tuple(key) for key in row["keys"]] for row in found}
        persons = persons_behind(keys, owners)
        rows = [row for row in rows if row["behind"] > PROVED_UP_TO
                or persons.get(row["product_id"], 0) >= ask.support]
    return rows[:ask.limit]


def proved_pairs(store: Any, site_id: str, ask: Ask, rows: list[dict[str, Any]],
                 owners: Owners) -> list[dict[str, Any]]:
    """``proved`` for co-view pairs, each checked: the persons behind a pair are those of
    the sessions it keeps (``seen``, up to 11: all of them, or a sample that two persons
    must already be in). Sessions are cheaper to come by than devices (one shopper's 11
    visits made a pair public when past 10 were taken as proof, probe 66).

    Resolving every session of every candidate cost 0.2 s on the bench: the first
    ``ask.limit`` rows still in question look at 2 of their sessions, then 5, then all,
    until those rows are decided (two persons are mostly in the first two)."""
    whose: dict[str, str | None] = {}
    verdict: dict[int, bool] = {}  # by row index: proved, or not with all its sessions
    most = max((len(row["seen"]) for row in rows), default=0)
    step = 2
    while True:
        candidates = [n for n in range(len(rows)) if verdict.get(n) is not False][:ask.limit]
        open_rows = [n for n in candidates if n not in verdict]
        if not open_rows:
            break
        wanted = {session for n in open_rows for session in rows[n]["seen"][:step]}
        whose.update(session_persons(store, site_id, ask, sorted(wanted - whose.keys()),
                                     owners))
        for n in open_rows:
            seen = rows[n]["seen"]
            if len({whose[session] for session in seen[:step]} - {None}) >= ask.support:
                verdict[n] = True
            elif len(seen) <= step:
                verdict[n] = False
        step = min(step * 2 + 1, most)
    return [row for n, row in enumerate(rows) if verdict.get(n)][:ask.limit]


def session_persons(store: Any, site_id: str, ask: Ask, sessions: list[str], owners: Owners
                    ) -> dict[str, str | None]:
    """The person each session is, or None (blocking). A session is one person only when
    each of its rows has a device, each device resolves to that person, and a user id on a
    row names the same one (``_person``: session_items does not tell a verified id from a
    browser's claim). A row without a device proves nobody: its user id may be anybody's
    claim (probe 66: an attacker's session claiming customer after customer told whose a
    pair was)."""
    if not sessions:
        return {}
    found = store.rows(SESSION_KEYS + ask.limits, {"site": site_id, "sessions": sessions})
    keyed = {row["session_id"]: [("device", device, user) if device else ("", "", "")
                                 for device, user in row["keys"]] for row in found}
    persons = persons_of(keyed, owners)
    return {session: next(iter(persons[session])) if len(persons.get(session, ())) == 1
            else None for session in sessions}


def persons_behind(keys: dict[str, list[tuple[str, str, str]]], owners: Owners
                   ) -> dict[str, int]:
    """Per item, how many persons its keys are (``persons_of``; None counts none)."""
    return {item: len(found - {None}) for item, found in persons_of(keys, owners).items()}


def persons_of(keys: dict[str, list[tuple[str, str, str]]], owners: Owners
               ) -> dict[str, set[str | None]]:
    """Per item, the persons its keys (kind, id, the user id a browser claimed on it; kind
    '' for a key that names nobody) are, as the identity graph resolves them: None for a key
    that proves nobody."""
    pairs = sorted({pair for held in keys.values() for kind, ident, claimed in held
                    for pair in ((kind, ident), ("user", claimed)) if kind and pair[1]})
    whose = dict(zip(pairs, owners(pairs) if pairs else [], strict=True))
    return {item: {_person(whose, key) if key[0] else None for key in held}
            for item, held in keys.items()}


def _as_of(rows: list[dict[str, Any]], proving: bool) -> str | None:
    """The newest event of the rows' window (``AS_OF``); of the rows answered only, when
    some were left out (``proved``): a hidden item's hit must not date the list (probe 65:
    with a category, it dated one shopper's purchase)."""
    if not rows:
        return None
    return _iso(max(row["last"] for row in rows) if proving else rows[0]["as_of"])


def _person(whose: dict[tuple[str, str], str | None], key: tuple[str, str, str]
            ) -> str | None:
    """The person behind a key of KEYS_BEHIND. A hit whose user id a browser claimed is its
    device's, but proves a person only when the device is the claimed customer's: the
    browser of a shop that sends no identity_token claims its own customer's id, and that
    customer's server-side order is the same person (probe 65)."""
    kind, ident, claimed = key
    person = whose[kind, ident]
    if claimed and person != whose["user", claimed]:
        return None
    return person


def main_currency(store: Any, site_id: str, since: int, until: int, limits: str = "") -> str:
    """The currency most purchases of the window named; '' if none named one (blocking).
    ``limits``: a SETTINGS clause."""
    rows = store.rows(MAIN_CURRENCY + limits, {"site": site_id, "since": since,
                                               "until": until})
    return rows[0]["currency"] if rows else ""


def person_products(store: Any, site: Site, kind: str, ident: str,
                    events: tuple[str, ...], kept: PersonAnswers, index: LinkIndex | None = None
                    ) -> tuple[tuple[str, ...], set[str]]:
    """What the person known by ``kind:ident`` bought or viewed (``events``), across all
    their identifiers and channels, with personalization consent (blocking); at most
    MAX_EXCLUDED products, the most recent (sorted); nothing for someone unknown. With the
    keys the answer depends on. Who the person is comes from ``kept`` while their links
    are unchanged."""
    graph = Graph(store, site, kept.decisions(store, site.site_id))
    person = resolve_kept(kept, graph, [(kind, ident)], index)[0]
    keys = {f"{kind}:{ident}", *link_keys(person, kind, ident)}
    if person is None:
        return (), keys
    newest = profiles.products(store, site.site_id, person, events)[:MAX_EXCLUDED]
    return tuple(sorted(newest)), keys | profiles.depends_on(person)


async def kept_products(collector: Collector, site: Site, kind: str, ident: str,
                        events: tuple[str, ...]) -> tuple[str, ...]:
    """``person_products``, kept until the person has a new hit (``PersonAnswers``): a
    visitor asks again on every page, and resolving a person costs several statements."""
    kept = collector.person_answers
    name = ("products", kind, ident, events)
    hit, found = kept.get(site.site_id, name)
    if not hit:
        found = await run_in_threadpool(
            kept.compute, site.site_id, name,
            lambda: person_products(collector.store, site, kind, ident, events, kept,
                                    collector.link_index))
    return found  # type: ignore[return-value]


def _iso(text: str) -> str | None:
    """ClickHouse's ``2026-11-20 17:30:00.000`` as ISO 8601; None for the empty epoch."""
    if not text or text.startswith("1970-01-01"):
        return None
    return text.replace(" ", "T") + "Z"


# -- answers, cached until the next flush -----------------------------------------------------

class Answers:
    """Lists computed once per flush: an entry holds until the collector's flusher inserts
    again (the spool's flushed position moves) or ``CACHE_SECONDS`` pass; concurrent asks
    for the same list share one query."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self._done: OrderedDict[tuple, tuple[Any, float, dict[str, Any]]] = OrderedDict()
        self._running: dict[tuple, asyncio.Future] = {}

    async def get(self, site: Site, ask: Ask, exclude: tuple[str, ...] = (),
                  gate: Gate | None = None, client: str = "") -> dict[str, Any]:
        """The list, cached or computed. ``gate``: a computation waits for one of its slots
        (at most ``GATE_SECONDS``, then the last answer or a 503), ``client``'s share of
        them; cached and shared answers take none."""
        site_id = site.site_id
        if ask.kind == "top" and ask.currency is None:
            main = await self.get(site, Ask("currency", 1, since=ask.since, until=ask.until,
                                            settings=ask.settings), gate=gate, client=client)
            ask = replace(ask, currency=main["currency"])
        key = (site_id, ask, exclude)
        lasts = KEPT_SECONDS.get(ask.kind)
        version = None if lasts is not None else self.collector.spool.checkpoint.flushed
        now = time.monotonic()
        found = self._done.get(key)
        if found is not None and found[0] == version and \
                now - found[1] < (CACHE_SECONDS if lasts is None else lasts):
            return found[2]
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._running[key] = future
        stale = False
        try:
            try:
                async with gate.slot(client) if gate else contextlib.nullcontext():
                    answer = await run_in_threadpool(compute, self.collector.store, site_id,
                                                     ask, exclude, time.time(),
                                                     self._owners(site))
            except Busy:
                if found is None or now - found[1] > STALE_SECONDS:
                    raise
                answer, stale = found[2], True  # the last one, rather than none
            if not stale and proves(ask):
                # (after the gate: waiting holds no slot and no thread; a computation
                # past the floor waits for the next multiple of it)
                await asyncio.sleep(PROOF_SECONDS - (time.monotonic() - now) % PROOF_SECONDS)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._running[key]
        future.set_result(answer)
        if stale:
            return answer
        self._done[key] = (version, now, answer)
        self._done.move_to_end(key)
        while len(self._done) > CACHE_ENTRIES:
            self._done.popitem(last=False)
        return answer

    def _owners(self, site: Site) -> Owners:
        """Whose identifiers' hits are, as the site's identity graph says (blocking)."""
        collector = self.collector
        kept = collector.person_answers

        def owners(pairs: list[tuple[str, str]]) -> list[str | None]:
            graph = Graph(collector.store, site, kept.decisions(collector.store, site.site_id))
            return sole_owners(kept, graph, pairs, collector.link_index)

        return owners


class Busy(ApiError):
    """Every slot of the gate stayed taken for ``GATE_SECONDS``, or the client holds its
    share of them."""


class Gate:
    """At most ``slots`` lists computed at once, ``per_client`` of them one client's: one
    client kept every slot busy with new asks, and every other client's new ask waited
    ``GATE_SECONDS``, then got a 503 (probe 65)."""

    def __init__(self, slots: int, per_client: int = 1) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.per_client = per_client
        self.holding: dict[str, int] = {}  # client -> slots it holds or waits for

    @contextlib.asynccontextmanager
    async def slot(self, client: str) -> AsyncIterator[None]:
        if self.holding.get(client, 0) >= self.per_client:
            raise Busy(503, "a list you asked for is being computed; try again", "",
                       {"Retry-After": "2"})
        self.holding[client] = self.holding.get(client, 0) + 1
        try:
            try:
                await asyncio.wait_for(self.slots.acquire(), GATE_SECONDS)
            except TimeoutError:
                raise Busy(503, "too many lists are being computed; try again", "",
                           {"Retry-After": "2"}) from None
            try:
                yield
            finally:
                self.slots.release()
        finally:
            self.holding[client] -= 1
            if not self.holding[client]:
                del self.holding[client]


_answers: WeakKeyDictionary[Collector, Answers] = WeakKeyDictionary()


def answers(collector: Collector) -> Answers:
    found = _answers.get(collector)
    if found is None:
        found = _answers[collector] = Answers(collector)
    return found


# -- parsing the asks -------------------------------------------------------------------------

def hours(values: dict[str, str], name: str, default: str, most: int) -> int:
    """A window in whole hours, from 1h to ``most`` seconds (one message for every way
    to miss it: the general span's names a limit of its own)."""
    try:
        seconds = window(values, name, default)
    except ApiError:
        seconds = 0
    if seconds % HOUR or not HOUR <= seconds <= most:
        raise ApiError(400, f"{name!r} must be whole hours from 1h to {most // 86400}d "
                       "(such as 6h, 24h or 7d)", name)
    return seconds


def top_ask(values: dict[str, str], bounds: Bounds, now: float) -> Ask:
    span = hours(values, "window", "24h", bounds.max_window)
    category = values.get("category", "")
    if len(category) > 256 or has_control(category):
        raise ApiError(400, "'category' must be at most 256 characters without control "
                       "characters", "category")
    currency = values.get("currency", "")
    if "currency" in values and not CURRENCY.fullmatch(currency):
        raise ApiError(400, "'currency' must be an ISO 4217 code such as EUR", "currency")
    return Ask("top", integer(values, "limit", 10, 1, bounds.max_limit),
               metric=choice(values, "metric", METRICS, "views"), category=category,
               currency=currency.upper() if "currency" in values else None,
               since=hour_start(now - span), until=hour_start(now),
               support=bounds.min_support, settings=bounds.settings)


def trending_ask(values: dict[str, str], bounds: Bounds, now: float) -> Ask:
    span = hours(values, "window", "1h", bounds.max_window)
    baseline = hours(values, "baseline", "7d", bounds.max_baseline)
    if baseline <= span:
        raise ApiError(400, "'baseline' must be longer than 'window'", "baseline")
    recent = hour_start(now - span)
    return Ask("trending", integer(values, "limit", 10, 1, bounds.max_limit),
               recent=recent, since=recent - baseline, until=hour_start(now),
               support=bounds.min_support, settings=bounds.settings)


def related_ask(request: Request, values: dict[str, str], bounds: Bounds) -> Ask:
    pairs = choice(values, "kind", KINDS, "co_view")
    return Ask("related", integer(values, "limit", 10, 1, bounds.max_limit),
               product=path_text(request, "product_id"), pairs=pairs,
               support=bounds.min_support, settings=bounds.settings)


# -- the keyed endpoints ----------------------------------------------------------------------

TOP_PARAMS = ("window", "metric", "limit", "category")
# Keyed lists only: ranked by revenue in a rare currency, a short window's list could tell
# what one foreign customer bought; the browser-safe list ranks by the main currency's.
CURRENCY_PARAMS = ("currency",)
TRENDING_PARAMS = ("window", "baseline", "limit")
RELATED_PARAMS = ("kind", "limit")


# ``person={kind}:{id}&exclude=purchased|viewed|purchased,viewed``: keyed lists only (the
# browser-safe ones never take a person: which products vanish would tell what they bought).
PERSON_PARAMS = ("person", "exclude")
EXCLUDE = {"purchased": profiles.PURCHASE, "viewed": profiles.VIEW}


async def exclusions(request: Request, collector: Collector, site: Site,
                     values: dict[str, str]) -> tuple[str, ...]:
    """The products the list leaves out: what ``person`` (across all their identifiers)
    bought and/or viewed, per ``exclude`` (default: purchased). Sorted, at most
    MAX_EXCLUDED: it is part of the cache key. An unknown person excludes nothing."""
    if "person" not in values:
        if "exclude" in values:
            raise ApiError(400, "'exclude' needs 'person' (kind:id)", "exclude")
        return ()
    kind, ident = identifier(site, values["person"], "person")
    asked = [name for name in values.get("exclude", "purchased").split(",") if name]
    if not asked or any(name not in EXCLUDE for name in asked) or len(asked) > len(EXCLUDE):
        raise ApiError(400, "'exclude' must be purchased, viewed or purchased,viewed",
                       "exclude")
    events = tuple(sorted({EXCLUDE[name] for name in asked}))
    return await kept_products(collector, site, kind, ident, events)


async def _list(request: Request, collector: Collector, site: Site, accepted: tuple[str, ...],
                make: Any) -> Response:
    values = params(request, accepted)
    ask = make(values)
    exclude = await exclusions(request, collector, site, values)
    return json_response(await answers(collector).get(site, ask, exclude))


@keyed(READ)
async def top(request: Request, collector: Collector, site: Site) -> Response:
    return await _list(request, collector, site, TOP_PARAMS + CURRENCY_PARAMS + PERSON_PARAMS,
                       lambda v: top_ask(v, KEYED, time.time()))


@keyed(READ)
async def trending(request: Request, collector: Collector, site: Site) -> Response:
    return await _list(request, collector, site, TRENDING_PARAMS + PERSON_PARAMS,
                       lambda v: trending_ask(v, KEYED, time.time()))


@keyed(READ)
async def related(request: Request, collector: Collector, site: Site) -> Response:
    return await _list(request, collector, site, RELATED_PARAMS + PERSON_PARAMS,
                       lambda v: related_ask(request, v, KEYED))

