"""Explicit merges and splits under the site's retention.

Links, hits and raw rows leave with the site's retention TTL; an admin's merge or split
(``identity/operations.py``) leaves once what it is about has left. What a row of one is
about, its subject: for a merge row, the person it moves (its anchor identifier); for a
split, the identifier split off. A subject is active while anything still names it: a link
made with it, a ``person_hits`` row, or a raw event (an analytics-only device or a
server-side customer has only those). The rules:

- An operation goes, its audit row and its rows still in force together, once none of the
  subjects it wrote rows for is active: while it stays it is whole, and can be undone
  unless a later operation superseded it.
- An operation whose audit row an erasure blanked (``privacy/erase.py``) lasts as long as
  the others it names: what was blanked is nobody's (one that named nobody else goes).
- A customer (user id) a merge moves into is not its subject: members still active stay
  together when their target's anchor left (deleting their rows would split them), and
  keep its id; their audit rows name that anchor as long. A device's (or other non-user)
  person merged into is one: that merge decides whose that device's anonymous hits are.

Counted from the operation's time instead, a TTL split persons still active and let an
undo expire before the operation it undid; this pass never changes how an active
identifier resolves. The collector stores what it acknowledged before each pass (or
skips it); a hit stored after the pass that removed its identifier's operations (another
collector's spool, replayed late) starts afresh, as any hit after a retention does.
``expire`` runs hourly in a thread of its own (``service.py``); it decides and deletes
under the site's operations lock (``operations.serialised``), having read the subjects'
traces before taking it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from collector.identity.operations import PAIR, PAIRS, erased_since, exactly, serialised
from collector.privacy.erase import delete_settings, delete_where
from collector.sites import Site
from collector.storage import Store

EVERY = 3600.0  # seconds between passes
CHUNK = 5_000  # identifiers asked about per statement

Pair = tuple[str, str]

MERGES = ("SELECT person_id, toString(kind) AS kind, id, toString(into_kind) AS into_kind, "
          "into_id, toString(op_id) AS op_id, version "
          "FROM tagwerk.identity_merges FINAL WHERE site_id = {site:String}")
OVERRIDES = ("SELECT toString(kind) AS kind, id, toString(op_id) AS op_id, version "
             "FROM tagwerk.identity_overrides FINAL WHERE site_id = {site:String}")
AUDITS = ("SELECT toString(op_id) AS op_id, target, before, after, identifiers "
          "FROM tagwerk.identity_operations WHERE site_id = {site:String}")
# Which of some identifiers still has a trace, as 'kind:id', each kind of trace asked
# about only for those the ones before did not find: a link made with it (what most active
# subjects have), a person_hits row, a raw event (read through the events' skip indexes,
# the costly part). One SELECT per index that narrows it (see ``graph.row_parts``). Every
# link made to a user id comes with a row of that user id itself (the links' view,
# clickhouse/0028, writes one per identifier of an identify, the user id among them, and
# they leave together), so a customer's own row stands for every link made to them:
# looking those up by person_id too (a bloom filter over the whole table) took 52 of
# 85 ms for 1,000 customers and found no more.
LINKED = f"""
SELECT DISTINCT {PAIR} AS pair FROM tagwerk.identity_links_by_identifier
WHERE site_id = {{site:String}} AND {PAIRS} AND {PAIR} IN {{pairs:Array(String)}}
"""
HITS = """
SELECT DISTINCT key AS pair FROM tagwerk.person_hits
WHERE site_id = {site:String} AND key IN {pairs:Array(String)}
"""
RAW = """
SELECT DISTINCT concat('user:', user_id) AS pair FROM tagwerk.events
WHERE site_id = {site:String} AND user_id IN {users:Array(String)}
UNION DISTINCT
SELECT DISTINCT concat('device:', device_id) FROM tagwerk.events
WHERE site_id = {site:String} AND device_id IN {devices:Array(String)}
UNION DISTINCT
SELECT DISTINCT pair FROM (
    SELECT arrayJoin(arrayMap(k -> concat(toString(k), ':', identifiers[k]),
                              mapKeys(identifiers))) AS pair
    FROM tagwerk.events
    WHERE site_id = {site:String} AND hasAny(mapValues(identifiers), {others:Array(String)})
) WHERE pair IN {pairs:Array(String)}
"""


def expire(store: Store, site: Site) -> dict[str, int]:
    """Delete the site's merges, splits and audit rows whose subjects left; how many rows
    of each table (none for a site keeping everything). Blocking: seconds on a large site,
    nearly all of them outside the site's operations lock: the subjects' traces are read
    first, then, under the lock, the operations again, and only one whose every subject
    was found without a trace goes (one run meanwhile on a subject not read then stays
    until the next pass)."""
    if not site.retention_days:
        return {}
    params: dict[str, Any] = {"site": site.site_id}
    ops = _operations(store, params)[3]
    if not ops:
        return {}
    subjects = set().union(*ops.values())
    traceless = subjects - _active(store, site.site_id, subjects)
    with serialised(site.site_id):
        merges, overrides, audits, ops = _operations(store, params)
        gone = {op for op, of in ops.items() if of <= traceless}
        gone_merges = [r for r in merges if r["op_id"] in gone]
        gone_overrides = [r for r in overrides if r["op_id"] in gone]
        gone_audits = sorted(a["op_id"] for a in audits if a["op_id"] in gone)
        settings = delete_settings(store)
        removed = {"identity_merges": 0, "identity_overrides": 0, "identity_operations": 0}
        # Of each person's (identifier's) rows, the version read and older ones: a row
        # written since by another collector's operation stays, whatever its clock says
        # beside another person's, and no older version becomes current.
        if gone_merges:
            persons = [r["person_id"] for r in gone_merges]  # one row each (FINAL)
            removed["identity_merges"] = delete_where(
                store, "tagwerk.identity_merges",
                ["site_id = {site:String} AND person_id IN {persons:Array(String)} "
                 "AND version <= {tops:Array(UInt64)}[indexOf({persons:Array(String)}, "
                 "person_id)]"],
                {**params, "persons": persons,
                 "tops": [int(r["version"]) for r in gone_merges]}, settings)
        if gone_overrides:
            pairs = [(r["kind"], r["id"]) for r in gone_overrides]  # one row each (FINAL)
            removed["identity_overrides"] = delete_where(
                store, "tagwerk.identity_overrides",
                [f"site_id = {{site:String}} AND {PAIRS} AND {PAIR} IN {{pairs:Array(String)}} "
                 f"AND version <= {{tops:Array(UInt64)}}[indexOf({{pairs:Array(String)}}, "
                 f"{PAIR})]"],
                {**params, **exactly(pairs),
                 "tops": [int(r["version"]) for r in gone_overrides]}, settings)
        if gone_audits:
            removed["identity_operations"] = delete_where(
                store, "tagwerk.identity_operations",
                ["site_id = {site:String} AND op_id IN {ops:Array(UUID)}"],
                {**params, "ops": gone_audits}, settings)
        return removed


def _operations(store: Store, params: dict[str, Any]) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, set[Pair]]]:
    """The site's merge and split rows in force, its audit rows, and each operation's
    subjects: those of the rows it wrote, and of its rows in force (an operation whose
    audit row is missing has only those)."""
    merges = store.rows(MERGES, params)
    overrides = store.rows(OVERRIDES, params)
    audits = store.rows(AUDITS, params)
    ops: defaultdict[str, set[Pair]] = defaultdict(set)
    for audit in audits:
        before, wrote = orjson.loads(audit["before"]), orjson.loads(audit["after"])
        ops[audit["op_id"]] |= {pair for r in wrote["merges"] + wrote["overrides"]
                                for pair in _subjects(r)}
        if erased_since(orjson.loads(audit["target"]), before, wrote):
            # What an erasure blanked is nobody's: the record lasts as long as the other
            # persons it names do.
            ops[audit["op_id"]] |= {_pair(text) for text in audit["identifiers"]}
    for row in merges + overrides:
        ops[row["op_id"]] |= _subjects(row)
    return merges, overrides, audits, ops


def _subjects(row: dict[str, Any]) -> set[Pair]:
    """What a merge or split row is about: the identifier it moves, and a device's (or
    other non-user) person it merges into: such a merge makes that identifier "claimed",
    its hits before a login staying with the merged persons (``graph.py``); deleting it
    would hand them to the customer who logged in on it later."""
    pairs = {(row["kind"], row["id"])}
    if row.get("into_kind") and row["into_kind"] != "user":
        pairs.add((row["into_kind"], row["into_id"]))
    return {(kind, ident) for kind, ident in pairs if ident}  # '': blanked by an erasure


def _active(store: Store, site_id: str, pairs: set[Pair]) -> set[Pair]:
    """Which of ``pairs`` a link, a person_hits row or a raw event still names."""
    found: set[Pair] = set()
    ordered = sorted(pairs)
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start:start + CHUNK]
        found |= _pairs(store.rows(LINKED, {"site": site_id, **exactly(chunk)}))
        if rest := [pair for pair in chunk if pair not in found]:
            found |= _pairs(store.rows(HITS, {"site": site_id,
                                              "pairs": [f"{k}:{i}" for k, i in rest]}))
        if rest := [pair for pair in rest if pair not in found]:
            found |= _pairs(store.rows(RAW, {
                "site": site_id, "pairs": [f"{k}:{i}" for k, i in rest],
                "users": [i for k, i in rest if k == "user"],
                "devices": [i for k, i in rest if k == "device"],
                "others": [i for k, i in rest if k not in ("user", "device")]}))
    return found & pairs


def _pairs(rows: list[dict[str, Any]]) -> set[Pair]:
    return {_pair(row["pair"]) for row in rows}


def _pair(text: str) -> Pair:
    """'kind:id' as (kind, id): a kind holds no ':' (``identifiers.KIND``), an id may."""
    kind, _, ident = text.partition(":")
    return kind, ident
