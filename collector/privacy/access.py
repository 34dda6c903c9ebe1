"""A person's access request: everything stored about them, as JSON.

Their identifiers and merges, their profile, every raw row of theirs (all columns), the
consent decisions those rows were collected under, and the identity operations that
involved them. Rows beyond ``MAX_ROWS`` are left out and said so (``truncated``); the raw
export serves larger needs.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from collector.identity import profile as profiles
from collector.identity.graph import Graph, row_parts
from collector.privacy.tombstones import Tombstones
from collector.sites import Site
from collector.storage import Store, time_text
from consent.log import in_force

MAX_ROWS = 50_000  # rows of every column, held in memory while the answer is built


def access(store: Store, site: Site, tombstones: Tombstones, kind: str, ident: str,
           actor: str) -> dict[str, Any] | None:
    person = Graph(store, site).resolve(kind, ident)
    if person is None:
        return None
    site_id = site.site_id
    # The disjoint parts of their rows, each narrowed by its index (graph.row_parts).
    parts, params = row_parts(person, claims=True)
    union = " UNION ALL ".join(
        f"SELECT * FROM tagwerk.events WHERE site_id = {{site:String}} AND {part}"
        for part in parts)
    events = store.rows(
        f"SELECT * FROM ({union}) ORDER BY ts, event_id LIMIT {{most:UInt32}}",
        {"site": site_id, **params, "most": MAX_ROWS + 1}) if parts else []
    # Cut: more rows than an answer holds, or identifiers that changed hands more often
    # than one resolution reads (their spans, hence their rows, are incomplete).
    truncated = len(events) > MAX_ROWS or person.truncated
    events = events[:MAX_ROWS]
    # The decisions their rows were collected under: a shared browser keeps one consent id
    # for whoever uses it, and its other decisions may be someone else's.
    times: dict[str, list[str]] = {}
    for event in events:
        if event.get("consent_id"):
            times.setdefault(event["consent_id"], []).append(event["ts"])
    decisions: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for row in store.rows(
            "SELECT consent_id, ts, granted, denied, policy, how, url FROM tagwerk.consent_log "
            "WHERE site_id = {site:String} AND consent_id IN {ids:Array(String)} ORDER BY ts",
            {"site": site_id, "ids": sorted(times)}) if times else []:
        decisions.setdefault(row["consent_id"], []).append((row["ts"], row))
    consent = sorted((d for c, ts in times.items() for d in in_force(decisions.get(c, []), ts)),
                     key=lambda d: (d["ts"], d["consent_id"]))
    operations = store.rows(
        "SELECT toString(op_id) AS op_id, op, target, actor, at FROM tagwerk.identity_operations "
        "WHERE site_id = {site:String} AND hasAny(persons, {members:Array(String)}) "
        "ORDER BY at", {"site": site_id, "members": sorted(person.members)})
    for op in operations:
        op["target"] = orjson.loads(op["target"])
    answer = {
        "person": person.as_dict({}),
        "profile": profiles.profile(store, site_id, person),
        "events": events,
        "truncated": truncated,
        "consent": consent,
        "identity_operations": operations,
    }
    row = {"site_id": site_id, "request_id": str(uuid.uuid4()), "op": "access",
           "subject": tombstones.subject(site_id, kind, ident), "keyed": True,
           "identifiers": len(person.identifiers),
           "removed": "{}", "actor": actor,
           "at": time_text()}
    store.insert("tagwerk.privacy_requests", orjson.dumps(row), "JSONEachRow")
    return answer
