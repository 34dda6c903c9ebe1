"""A person's profile and the products they saw or bought, across all their identifiers,
from ``person_hits`` (``clickhouse/0020_person_hits.sql``), or for a profile from its copy by
key where that holds the person's keys as they are (``clickhouse/0054``, ``link_index.py``):
only hits with personalization consent, never bots.

Read without FINAL: a replayed batch is dropped whole by the insert deduplication of events
and of the views' targets (``clickhouse/0027``), so rows are not doubled.

A person without such hits has no profile: the endpoint answers 404, the same as for an
identifier nobody knows, so that a profile never tells whether someone declined.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import orjson

from collector.identity.changes import CONSENT
from collector.identity.graph import Person, Span
from collector.identity.link_index import LinkIndex
from collector.storage import StorageError, Store

VIEW, CART, PURCHASE = "view_item", "add_to_cart", "purchase"
# How much an interaction says about a taste, for category and brand affinity.
WEIGHTS = {VIEW: 1, CART: 3, PURCHASE: 5}
RECENT = 20  # products listed as viewed and purchased
TOP_AFFINITIES = 10
MAX_ROWS = 50_000  # rows read for one person (one per hit and item)
MAX_CONSENT_IDS = 1_000  # a profile's consent decisions looked up, and listed (newest):
MAX_CONSENTS = 50


def keys_of(person: Person) -> list[str]:
    """The person_hits keys their rows are filed under."""
    return sorted({f"user:{u}" for u in person.users}
                  | {f"{span.kind}:{span.id}" for span in person.spans})


# The person's rows, narrowed by key in the engine and by span here (``_theirs``): each
# as its key and its packed ``hit`` (clickhouse/0031), two columns read instead of twelve,
# and sent as one JSON array a line (``[key, hit]``: toJSONString and ``hit`` escape every
# control character), so that the answer is parsed by one call, not two per row.
# Without ORDER BY: sorting costs more than the read; only a cut answer is read again in
# order, so that a cut keeps the newest rows.
ROWS = """
SELECT concat('[', toJSONString(key), ',', hit, ']')
FROM tagwerk.person_hits
WHERE site_id = {site:String} AND key IN {keys:Array(String)}"""
OF_EVENTS = " AND event IN {events:Array(String)}"
NEWEST = " ORDER BY ts DESC"
CUT = " LIMIT {most:UInt32}"
# The fields of ``hit``, in its order (the event's id is its hash: it only tells one hit
# from another of the same person, whose copies under several keys are counted once).
# A hit stored before clickhouse/0038 lacks the last, ``currency``: of none named.
HIT_FIELDS = ("event_id", "ts", "event", "product_id", "category", "brand", "channel",
              "device_class", "quantity", "revenue", "consent_id", "currency")
Hit = list[str]  # a hit's fields as in HIT_FIELDS
(EVENT_ID, TS, EVENT, PRODUCT, CATEGORY, BRAND, CHANNEL, DEVICE_CLASS, QUANTITY, REVENUE,
 CONSENT_ID, CURRENCY) = range(len(HIT_FIELDS))


def _rows(store: Store, site_id: str, persons: list[Person], index: LinkIndex | None = None
          ) -> list[list[Hit]]:
    """Each person's hits: from the hits' copy (``index``, clickhouse/0054) for those whose
    keys it holds as they are now (none newer stored since it was made, as its change feed
    tells, and still the same copy after the lookup) and whole (none past what it holds per
    key, fewer rows than MAX_ROWS, where person_hits' read is cut); the rest from
    person_hits."""
    found: dict[int, list[Hit]] = {}
    token = index.begin() if index is not None else None
    if token is not None:
        copied = [n for n, person in enumerate(persons)
                  if index.fresh(site_id, keys_of(person), token)]
        by_key: dict[str, list[Hit]] = {}
        heavy: set[str] = set()
        try:
            if copied:
                by_key, heavy = index.hits(site_id, sorted(
                    {key for n in copied for key in keys_of(persons[n])}))
        except (LookupError, StorageError):  # a copy emptied meanwhile (an erasure)
            copied = []
        for n in copied:
            keys = keys_of(persons[n])
            if (index.fresh(site_id, keys, token) and heavy.isdisjoint(keys)
                    and sum(len(by_key.get(key, ())) for key in keys) < MAX_ROWS):
                found[n] = _theirs(persons[n], by_key)
    rest = [n for n in range(len(persons)) if n not in found]
    if rest:
        found.update(zip(rest, _read_rows(store, site_id, [persons[n] for n in rest]),
                         strict=True))
    return [found[n] for n in range(len(persons))]


def _read_rows(store: Store, site_id: str, persons: list[Person], events: tuple[str, ...] = ()
               ) -> list[list[Hit]]:
    """Each person's hits from person_hits, read at once for all of them. A cut answer is
    read again in halves (only a person with MAX_ROWS rows of their own ends up alone, read newest
    first): a batch of ordinary persons that together pass the cut costs a few statements,
    not one per person."""
    keys = sorted({key for person in persons for key in keys_of(person)})
    sql = ROWS + (OF_EVENTS if events else "")
    params = {"site": site_id, "keys": keys, "events": list(events), "most": MAX_ROWS}
    found: list[tuple[str, Hit]] = json_lines(store, sql + CUT, params)
    if len(found) >= MAX_ROWS:
        if len(persons) > 1:
            half = len(persons) // 2
            return (_read_rows(store, site_id, persons[:half], events)
                    + _read_rows(store, site_id, persons[half:], events))
        found = json_lines(store, sql + NEWEST + CUT, params)
    by_key: dict[str, list[Hit]] = {}
    for key, hit in found:
        by_key.setdefault(key, []).append(hit)
    return [_theirs(person, by_key) for person in persons]


def json_lines(store: Store, sql: str, params: dict[str, Any]) -> list[Any]:
    """A statement's answer of one JSON value a line, parsed as one JSON array."""
    lines = store.query(sql, params, "TSVRaw").rstrip(b"\n")
    return orjson.loads(b"[" + lines.replace(b"\n", b",") + b"]") if lines else []


def _theirs(person: Person, by_key: dict[str, list[Hit]]) -> list[Hit]:
    """The person's hits among those read, once each. A hit with a verified user id is
    filed under that user alone, and keys_of asks only for the person's users; any other
    hit (a browser's user id is only a claim: events.user_verified) is filed under each of
    its identifiers, and is theirs if one of these was theirs at the hit's time (the rule
    of :func:`graph.rows_of`, over one copy of the hit per identifier)."""
    spans = person.spans_by_identifier()
    kept: dict[tuple[str, str], Hit] = {}
    for key in keys_of(person):
        hits = by_key.get(key)
        if not hits:
            continue
        kind, _, ident = key.partition(":")
        if kind == "user":
            for hit in hits:
                kept.setdefault((hit[EVENT_ID], hit[PRODUCT]), hit)
            continue
        covers = covering(spans.get((kind, ident), ()))
        for hit in hits:
            if covers(hit[TS]):
                kept.setdefault((hit[EVENT_ID], hit[PRODUCT]), hit)
    return list(kept.values())


def covering(spans: Iterable[Span]) -> Callable[[str], bool]:
    """Whether a time is in one of ``spans`` ([start, end)), by bisection over their union:
    a device that changed hands K times is K/2 spans of a person, and testing each of its
    hits against each span was hits x spans (probe 70: 43 s for one profile of 5,000 spans
    and 50,000 hits, asked anonymously through a public list's exclusions)."""
    starts: list[str] = []
    ends: list[str] = []
    for start, end in sorted((span.start, span.end) for span in spans):
        if start >= end:
            continue  # empty: holds no time
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)

    def covers(ts: str) -> bool:
        at = bisect.bisect_right(starts, ts) - 1
        return at >= 0 and ts < ends[at]

    return covers


def products(store: Store, site_id: str, person: Person, events: tuple[str, ...]) -> list[str]:
    """The products the person viewed or bought (``events`` names which), the most recently
    first (a list leaves out a limited number of them: the newest matter most)."""
    last: dict[str, str] = {}
    for hit in _read_rows(store, site_id, [person], events)[0]:
        product = hit[PRODUCT]
        if product and hit[TS] > last.get(product, ""):
            last[product] = hit[TS]
    return sorted(last, key=lambda product: (last[product], product), reverse=True)


def depends_on(person: Person) -> set[str]:
    """The keys (as the change feed names them) of the hits an answer about the person was
    computed from: their user ids, the identifiers they hold or held, their merged anchors.
    (Who the person is depends on links: ``resolutions.link_keys``.)"""
    return ({*keys_of(person), f"{person.kind}:{person.id}"}
            | {f"{kind}:{ident}" for kind, ident in person.merged.values()})


def profile(store: Store, site_id: str, person: Person) -> dict[str, Any] | None:
    return profiles_and_keys(store, site_id, [person])[0][0]


def profiles_and_keys(store: Store, site_id: str, persons: list[Person],
                      index: LinkIndex | None = None
                      ) -> list[tuple[dict[str, Any] | None, set[str]]]:
    """Each person's profile, and the keys it depends on (``depends_on`` and its consent
    decisions): their rows and the decisions read once for all of them (from the copies,
    ``index``, where they can serve)."""
    if not persons:  # nobody: no statement
        return []
    built = [_profile(person, hits)
             for person, hits in zip(persons, _rows(store, site_id, persons, index),
                                     strict=True)]
    decisions = _consents(store, site_id, sorted({c for _, ids in built for c in ids}), index)
    out = []
    for person, (answer, ids) in zip(persons, built, strict=True):
        keys = depends_on(person)
        if answer is not None:
            keys |= {f"{CONSENT}{c}" for c in ids}
            answer["consent"] = sorted((decisions[c] for c in ids if c in decisions),
                                       key=lambda d: (d["at"], d["consent_id"]),
                                       reverse=True)[:MAX_CONSENTS]
        out.append((answer, keys))
    return out


def _profile(person: Person, hits: list[Hit]) -> tuple[dict[str, Any] | None, list[str]]:
    """The profile from the person's hits, in one pass (its "consent" filled in by the
    caller), and the consent decisions it was collected under (at most MAX_CONSENT_IDS)."""
    if not hits:
        return None, []
    viewed: dict[str, dict[str, Any]] = {}
    purchased: dict[tuple[str, str], dict[str, Any]] = {}
    taste: dict[str, defaultdict[str, int]] = {"category": defaultdict(int),
                                               "brand": defaultdict(int)}
    categories, brands = taste["category"], taste["brand"]
    channels: dict[str, dict[str, Any]] = {}
    consent_ids: set[str] = set()
    for hit in hits:
        ts, event, product, channel = hit[TS], hit[EVENT], hit[PRODUCT], hit[CHANNEL]
        consent_ids.add(hit[CONSENT_ID])
        seen = channels.get(channel)
        if seen is None:
            seen = channels[channel] = {"last_seen": ts, "device_classes": {}}
        elif ts > seen["last_seen"]:
            seen["last_seen"] = ts
        classes = seen["device_classes"]
        if ts > classes.get(hit[DEVICE_CLASS], ""):
            classes[hit[DEVICE_CLASS]] = ts
        if not product:
            continue
        if event == VIEW:
            entry = viewed.get(product)
            if entry is None:
                entry = viewed[product] = {"product_id": product, "views": 0, "last": ts}
            entry["views"] += 1
            if ts > entry["last"]:
                entry["last"] = ts
        elif event == PURCHASE:
            # One entry per product and currency: revenue is never summed across currencies.
            currency = hit[CURRENCY] if len(hit) > CURRENCY else ""
            entry = purchased.get((product, currency))
            if entry is None:
                entry = purchased[(product, currency)] = {
                    "product_id": product, "quantity": 0, "revenue": Decimal(0),
                    "currency": currency or None, "last": ts}
            entry["quantity"] += int(hit[QUANTITY])
            entry["revenue"] += Decimal(hit[REVENUE])
            if ts > entry["last"]:
                entry["last"] = ts
        weight = WEIGHTS.get(event, 0)
        if weight:
            if hit[CATEGORY]:
                categories[hit[CATEGORY]] += weight
            if hit[BRAND]:
                brands[hit[BRAND]] += weight
    for entry in purchased.values():
        entry["revenue"] = float(entry["revenue"])
    consent_ids.discard("")
    return {
        "person_id": person.person_id,
        "viewed": _recent(viewed),
        "purchased": _recent(purchased),
        "affinities": {facet: _shares(weights) for facet, weights in taste.items()},
        "channels": dict(sorted(channels.items())),
        "consent": [],
    }, sorted(consent_ids)[:MAX_CONSENT_IDS]


def _recent(entries: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(entries.values(),
                     key=lambda e: (e["last"], e["product_id"], e.get("currency") or ""),
                     reverse=True)
    return ordered[:RECENT]


def _shares(weights: dict[str, int]) -> list[dict[str, Any]]:
    """Each value's share of the person's weighted interactions, largest first."""
    total = sum(weights.values())
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_AFFINITIES]
    return [{"name": name, "score": round(weight / total, 4)} for name, weight in ranked]


# Each decision as last recorded, as one JSON array a line: [id, [granted, denied, how,
# policy], time] (``decision``: clickhouse/0036), parsed by one call like the hits.
DECISIONS = """
SELECT concat('[', toJSONString(consent_id), ',', argMax(decision, ts), ',',
              toJSONString(toString(max(ts))), ']')
FROM tagwerk.consent_by_id
WHERE site_id = {site:String} AND consent_id IN {ids:Array(String)}
GROUP BY consent_id"""


def _consents(store: Store, site_id: str, consent_ids: list[str],
              index: LinkIndex | None = None) -> dict[str, dict[str, Any]]:
    """The consent decisions by id, each as last recorded: from the copy in memory
    (clickhouse/0052) those the copy holds as they are now (none newer stored since it
    loaded, as its change feed tells, and still the same copy after the lookup), the rest
    from consent_by_id (consent_log's rows ordered by id: clickhouse/0034)."""
    if not consent_ids:
        return {}
    found: dict[str, list[Any]] = {}
    token = index.begin() if index is not None else None
    if token is not None:
        fresh = [c for c in consent_ids if index.fresh(site_id, (CONSENT + c,), token)]
        try:
            copied = index.decisions(site_id, fresh) if fresh else {}
        except (LookupError, StorageError):  # a collision; a copy dropped meanwhile
            copied = {}
            fresh = []
        # Still the copy it was, and none of them changed meanwhile: its answer stands
        # (an id it does not hold has no decision).
        fresh = [c for c in fresh if index.fresh(site_id, (CONSENT + c,), token)]
        found = {c: copied[c] for c in fresh if c in copied}
        consent_ids = sorted(set(consent_ids) - set(fresh))
    if consent_ids:
        found.update((consent_id, [decision, at]) for consent_id, decision, at in json_lines(
            store, DECISIONS, {"site": site_id, "ids": consent_ids}))
    return {consent_id: {"consent_id": consent_id, "granted": granted, "denied": denied,
                         "how": how, "policy": policy, "at": at}
            for consent_id, ((granted, denied, how, policy), at) in found.items()}
