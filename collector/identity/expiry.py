"""Explicit merges and splits under the site's retention.

A merge or split (``operations.py``) is kept as long as what it is about is: a merge until
either person's anchor has no link and no ``person_hits`` row left, a split until its
identifier has none, and an audit row until none of its identifiers has any and no kept
merge or split was written by its operation. The links and hits go with the site's
retention TTL, so an admin's operation lasts while the persons it concerns are active,
never less (a TTL counted from the operation silently split persons still active, and let
an undo expire before the operation it undid). A site keeping everything keeps them all.

``expire`` runs in the collector's background thread (``service.py``), hourly.
"""

from __future__ import annotations

from typing import Any

from collector.identity.kinds import person_id
from collector.identity.operations import PAIR, PAIRS, pair_params
from collector.sites import Site
from collector.storage import Store

EVERY = 3600.0  # seconds between passes


def expire(store: Store, site: Site) -> dict[str, int]:
    """Delete the site's merges, splits and audit rows whose subjects are gone; how many
    rows of each (blocking)."""
    if not site.retention_days:
        return {}
    site_id = site.site_id
    merges = store.rows(
        "SELECT person_id, toString(kind) AS kind, id, toString(into_kind) AS into_kind, "
        "into_id, into_person, toString(op_id) AS op_id FROM tagwerk.identity_merges FINAL "
        "WHERE site_id = {site:String}", {"site": site_id})
    overrides = store.rows(
        "SELECT toString(kind) AS kind, id, person_id, toString(op_id) AS op_id "
        "FROM tagwerk.identity_overrides FINAL WHERE site_id = {site:String}", {"site": site_id})
    audits = store.rows(
        "SELECT toString(op_id) AS op_id, identifiers FROM tagwerk.identity_operations "
        "WHERE site_id = {site:String}", {"site": site_id})
    named: set[tuple[str, str]] = set()
    for m in merges:
        named |= {(m["kind"], m["id"]), (m["into_kind"], m["into_id"])} - {("", "")}
    named |= {(o["kind"], o["id"]) for o in overrides}
    for a in audits:
        named |= {tuple(text.split(":", 1)) for text in a["identifiers"]}  # type: ignore[misc]
    alive = _with_data(store, site_id, named)
    gone_merges = [m["person_id"] for m in merges
                   if (m["kind"], m["id"]) not in alive
                   or (m["into_kind"] and (m["into_kind"], m["into_id"]) not in alive)]
    gone_overrides = [(o["kind"], o["id"]) for o in overrides if (o["kind"], o["id"]) not in alive]
    kept_ops = {m["op_id"] for m in merges if m["person_id"] not in gone_merges}
    kept_ops |= {o["op_id"] for o in overrides if (o["kind"], o["id"]) not in gone_overrides}
    gone_ops = [a["op_id"] for a in audits if a["op_id"] not in kept_ops
                and not any(tuple(t.split(":", 1)) in alive for t in a["identifiers"])]
    removed = {"identity_merges": 0, "identity_overrides": 0, "identity_operations": 0}
    base: dict[str, Any] = {"site": site_id}
    if gone_merges:
        removed["identity_merges"] = _delete(
            store, "identity_merges", "person_id IN {persons:Array(String)}",
            {**base, "persons": sorted(set(gone_merges))})
    if gone_overrides:
        removed["identity_overrides"] = _delete(
            store, "identity_overrides", f"{PAIRS} AND {PAIR} IN {{pairs:Array(String)}}",
            {**base, **pair_params(gone_overrides),
             "pairs": [f"{k}:{i}" for k, i in gone_overrides]})
    if gone_ops:
        removed["identity_operations"] = _delete(
            store, "identity_operations", "op_id IN {ops:Array(UUID)}",
            {**base, "ops": sorted(gone_ops)})
    return removed


def _with_data(store: Store, site_id: str, pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``pairs`` still have a link or a person_hits row (a user id: a link made
    with it, or its hits)."""
    if not pairs:
        return set()
    users = sorted(i for k, i in pairs if k == "user")
    others = sorted((k, i) for k, i in pairs if k != "user")
    found: set[tuple[str, str]] = set()
    if others:
        rows = store.rows(
            "SELECT DISTINCT toString(kind) AS kind, id FROM tagwerk.identity_links_by_identifier "
            f"WHERE site_id = {{site:String}} AND {PAIRS}",
            {"site": site_id, **pair_params(others)})
        found |= {(r["kind"], r["id"]) for r in rows}
    if users:
        pids = {person_id(site_id, "user", u): u for u in users}
        rows = store.rows(
            "SELECT DISTINCT person_id FROM tagwerk.identity_links_by_identifier "
            "WHERE site_id = {site:String} AND person_id IN {pids:Array(String)}",
            {"site": site_id, "pids": sorted(pids)})
        found |= {("user", pids[r["person_id"]]) for r in rows}
    rows = store.rows(
        "SELECT DISTINCT key FROM tagwerk.person_hits WHERE site_id = {site:String} "
        "AND key IN {keys:Array(String)}",
        {"site": site_id, "keys": sorted(f"{k}:{i}" for k, i in pairs)})
    found |= {tuple(r["key"].split(":", 1)) for r in rows}  # type: ignore[misc]
    return found & pairs


def _delete(store: Store, table: str, condition: str, params: dict[str, Any]) -> int:
    where = f"site_id = {{site:String}} AND {condition}"
    [row] = store.rows(f"SELECT count() AS n FROM tagwerk.{table} WHERE {where}", params)
    if int(row["n"]):
        store.execute(f"DELETE FROM tagwerk.{table} WHERE {where}", params)
    return int(row["n"])
