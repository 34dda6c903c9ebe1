"""A person's profile and the products they saw or bought, across all their identifiers,
from ``person_activity`` (``clickhouse/0013_person_activity.sql``): only hits with
personalization consent, never bots.

Read without FINAL: a replayed batch is dropped whole by the events table's insert
deduplication, and its materialised views never see it, so rows are not doubled.

A person without such hits has no profile: the endpoint answers 404, the same as for an
identifier nobody knows, so that a profile never tells whether someone declined.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from collector.identity.graph import Person, rows_of
from collector.storage import Store

VIEW, CART, PURCHASE = "view_item", "add_to_cart", "purchase"
# How much an interaction says about a taste, for category and brand affinity.
WEIGHTS = {VIEW: 1, CART: 3, PURCHASE: 5}
RECENT = 20  # products listed as viewed and purchased
TOP_AFFINITIES = 10
MAX_GROUPS = 50_000  # (event, product, ...) groups read for one person


def keys_of(person: Person) -> list[str]:
    """The person_activity keys their rows are filed under."""
    return sorted({f"user:{u}" for u in person.users}
                  | {f"{span.kind}:{span.id}" for span in person.spans})


def _groups(store: Store, site_id: str, person: Person) -> list[dict[str, Any]]:
    where, params = rows_of(person)
    return store.rows(
        "SELECT event, product_id, category, brand, channel, device_class, "
        "count() AS n, sum(quantity) AS quantity, sum(revenue) AS revenue, max(ts) AS last, "
        "groupUniqArray(consent_id) AS consent_ids "
        "FROM tagwerk.person_activity WHERE site_id = {site:String} "
        f"AND key IN {{keys:Array(String)}} AND {where} "
        "GROUP BY event, product_id, category, brand, channel, device_class "
        "LIMIT {most:UInt32}",
        {"site": site_id, "keys": keys_of(person), "most": MAX_GROUPS, **params})


def products(store: Store, site_id: str, person: Person, events: tuple[str, ...]) -> list[str]:
    """The products the person viewed or bought (``events`` names which)."""
    where, params = rows_of(person)
    rows = store.rows(
        "SELECT DISTINCT product_id FROM tagwerk.person_activity "
        "WHERE site_id = {site:String} AND key IN {keys:Array(String)} "
        f"AND event IN {{events:Array(String)}} AND product_id != '' AND {where} "
        "LIMIT {most:UInt32}",
        {"site": site_id, "keys": keys_of(person), "events": list(events), "most": MAX_GROUPS,
         **params})
    return sorted(row["product_id"] for row in rows)


def profile(store: Store, site_id: str, person: Person) -> dict[str, Any] | None:
    groups = _groups(store, site_id, person)
    if not groups:
        return None
    viewed: dict[str, dict[str, Any]] = {}
    purchased: dict[str, dict[str, Any]] = {}
    taste: dict[str, defaultdict[str, int]] = {"category": defaultdict(int),
                                               "brand": defaultdict(int)}
    channels: dict[str, dict[str, Any]] = {}
    consent_ids: set[str] = set()
    for g in groups:
        consent_ids.update(c for c in g["consent_ids"] if c)
        seen = channels.setdefault(g["channel"], {"last_seen": "", "device_classes": {}})
        seen["last_seen"] = max(seen["last_seen"], g["last"])
        classes = seen["device_classes"]
        classes[g["device_class"]] = max(classes.get(g["device_class"], ""), g["last"])
        product, n = g["product_id"], int(g["n"])
        if not product:
            continue
        if g["event"] == VIEW:
            entry = viewed.setdefault(product, {"product_id": product, "views": 0, "last": ""})
            entry["views"] += n
            entry["last"] = max(entry["last"], g["last"])
        elif g["event"] == PURCHASE:
            entry = purchased.setdefault(product, {"product_id": product, "quantity": 0,
                                                   "revenue": Decimal(0), "last": ""})
            entry["quantity"] += int(g["quantity"])
            entry["revenue"] += Decimal(str(g["revenue"]))
            entry["last"] = max(entry["last"], g["last"])
        weight = WEIGHTS.get(g["event"], 0) * n
        for facet in ("category", "brand"):
            if g[facet] and weight:
                taste[facet][g[facet]] += weight
    for entry in purchased.values():
        entry["revenue"] = float(entry["revenue"])
    return {
        "person_id": person.person_id,
        "viewed": _recent(viewed),
        "purchased": _recent(purchased),
        "affinities": {facet: _shares(weights) for facet, weights in taste.items()},
        "channels": channels,
        "consent": consent(store, site_id, sorted(consent_ids)),
    }


def _recent(entries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(entries.values(), key=lambda e: (e["last"], e["product_id"]), reverse=True)
    return ordered[:RECENT]


def _shares(weights: dict[str, int]) -> list[dict[str, Any]]:
    """Each value's share of the person's weighted interactions, largest first."""
    total = sum(weights.values())
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_AFFINITIES]
    return [{"name": name, "score": round(weight / total, 4)} for name, weight in ranked]


def consent(store: Store, site_id: str, consent_ids: list[str]) -> list[dict[str, Any]]:
    """The consent decisions the person's hits were collected under, newest first."""
    if not consent_ids:
        return []
    return store.rows(
        "SELECT consent_id, argMax(granted, ts) AS granted, argMax(denied, ts) AS denied, "
        "argMax(how, ts) AS how, argMax(policy, ts) AS policy, max(ts) AS at "
        "FROM tagwerk.consent_log WHERE site_id = {site:String} "
        "AND consent_id IN {ids:Array(String)} GROUP BY consent_id ORDER BY at DESC "
        "LIMIT 50", {"site": site_id, "ids": consent_ids[:1000]})
