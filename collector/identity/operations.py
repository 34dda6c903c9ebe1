"""Explicit identity operations with the admin key: merge two persons, split an identifier
off its person, and undo either. Each one is a set of row versions written to
``identity_merges`` / ``identity_overrides`` and one audit row in ``identity_operations``
holding the rows as they were before and after, so that undo writes ``before`` back.

An undo is refused (409) when a later operation changed the same rows, or depends on this
one otherwise: for a split, a later merge of the person it split off; for a merge, a later
merge into a person it moved, named by one of their identifiers (recorded as ``named``: the
merge went into the person they were moved into). Undo that one first.
Operations of one site run one at a time in this process; two collectors operating on the
same persons at the same instant are not serialised (the later version wins).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any

import orjson

from collector.identifiers import person_id
from collector.identity.graph import Graph, Person
from collector.sites import Site
from collector.storage import Store, time_text

# Rows of some (kind, id) pairs: the key's columns, narrowed again in Python (a parameter
# cannot be an array of tuples: the arrays bind as they are).
PAIRS = "kind IN {kinds:Array(String)} AND id IN {ids:Array(String)}"


# An identifier matched exactly as 'kind:id', in statements already narrowed by PAIRS, by
# person or on a small table: a DELETE's condition stays free of subqueries.
PAIR = "concat(toString(kind), ':', id)"


def pair_params(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    return {"kinds": sorted({k for k, _ in pairs}), "ids": sorted({i for _, i in pairs})}


def exactly(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The parameters of ``PAIRS AND PAIR IN {pairs:Array(String)}``: narrowed by the key,
    then exact."""
    return {**pair_params(pairs), "pairs": [f"{k}:{i}" for k, i in pairs]}


MERGE_COLUMNS = ("person_id", "kind", "id", "into_person", "into_kind", "into_id")
OVERRIDE_COLUMNS = ("kind", "id", "person_id")
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_clock = threading.Lock()
_last_version = 0


def serialised(site_id: str) -> threading.Lock:
    """The lock under which the site's operations, and the retention's pass over them
    (``privacy/retention.py``), run one at a time in this process."""
    return _locks[site_id]


def erased_since(target: dict[str, str], before: dict, after: dict) -> bool:
    """Whether an erasure blanked a person in the operation's audit row
    (``privacy/erase.py``): a target, an identifier's id, or whom a merge row moves into
    is never empty otherwise (a row without a merge has no ``into_kind`` either)."""
    if "" in target.values():
        return True
    return any(r["id"] == "" or (r.get("into_kind") and "" in (r["into_person"], r["into_id"]))
               for rows in (before, after) for table in ("merges", "overrides")
               for r in rows[table])


class OperationError(Exception):
    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status, self.field = status, field


def _depending(op: str, target: dict[str, str], before: dict[str, list[dict[str, Any]]],
               after: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The persons whose naming by a later operation makes it depend on this one beyond the
    rows this one wrote (``Operations.undo`` compares those). A split's: its own person, and
    the one it took the identifier from where its own person had been merged there. A
    merge's: the persons it moved, into whom a later merge named (``named``) would be left
    in the person they were moved into."""
    if op == "split":
        return [target["person"],
                *(r["into_person"] for r in before["merges"] if r["into_person"])]
    return [r["person_id"] for r in after["merges"]]


def _version() -> int:
    """Row versions that only grow within this process, even if the clock steps back."""
    global _last_version
    with _clock:
        _last_version = max(_last_version + 1, time.time_ns())
        return _last_version


class Operations:
    def __init__(self, store: Store, site: Site) -> None:
        self.store, self.site = store, site
        self.graph = Graph(store, site)

    def _person(self, kind: str, ident: str, field: str) -> Person:
        person = self.graph.resolve(kind, ident)
        if person is None:
            raise OperationError(404, f"nobody is known by {kind}:{ident[:64]}", field)
        return person

    def _overloaded(self, kind: str, ident: str) -> Person:
        """Nobody, for an identifier linked to more users than the site allows; else a 404."""
        [row] = self.store.rows(
            "SELECT uniqExact(user_id) AS users FROM tagwerk.identity_links_by_identifier "
            "WHERE site_id = {site:String} AND kind = {kind:String} AND id = {id:String}",
            {"site": self.site.site_id, "kind": kind, "id": ident})
        if int(row["users"]) <= self.site.identity_max_persons:
            raise OperationError(404, f"nobody is known by {kind}:{ident[:64]}", "id")
        return Person("", "", "")

    def merge(self, source: tuple[str, str], target: tuple[str, str], actor: str
              ) -> dict[str, Any]:
        """Make the person of ``source`` (and everyone merged into them) the person of
        ``target``."""
        with serialised(self.site.site_id):
            moved = self._person(*source, "from")
            into = self._person(*target, "into")
            if moved.person_id == into.person_id:
                raise OperationError(409, "both identifiers belong to one person already",
                                     "into")
            anchors = {moved.person_id: (moved.kind, moved.id), **moved.merged}
            after = {"merges": [
                {"person_id": pid, "kind": kind, "id": ident, "into_person": into.person_id,
                 "into_kind": into.kind, "into_id": into.id}
                for pid, (kind, ident) in sorted(anchors.items())
            ], "overrides": []}
            before = {"merges": self._merges(anchors), "overrides": []}
            target = {"from": moved.person_id, "into": into.person_id}
            if into.named != into.person_id:
                # The admin named a person merged into ``into``: this merge depends on
                # that one, whose undo is refused until this one is undone.
                target["named"] = into.named
            op_id = self._apply("merge", target, before, after, actor)
            return {"op_id": op_id, "person_id": into.person_id,
                    "merged": sorted(anchors)}

    def split(self, ident: tuple[str, str], actor: str) -> dict[str, Any]:
        """Give the identifier a person of its own, whatever its links say."""
        kind, value = ident
        if kind == "user":
            raise OperationError(400, "a user id anchors its person and cannot be split off; "
                                 "undo the merge that joined it instead", "id")
        with serialised(self.site.site_id):
            # Past the site's limit of users (a kiosk) it is nobody's: split from nobody.
            person = self.graph.resolve(kind, value) or self._overloaded(kind, value)
            own = person_id(self.site.site_id, kind, value)
            if person.person_id == own:
                if person.merged:  # a no-op override would leave them merged into it
                    raise OperationError(409, f"{kind}:{value[:64]} anchors persons merged "
                                         "into it: undo those merges instead", "id")
                raise OperationError(409, f"{kind}:{value[:64]} is a person of its own already",
                                     "id")
            before = {"merges": [], "overrides": self._overrides([(kind, value)])}
            after: dict[str, list[dict[str, Any]]] = {
                "merges": [], "overrides": [{"kind": kind, "id": value, "person_id": own}]}
            # Its own person had been merged (into whoever holds it now, or into an earlier
            # holder before someone else logged in on it): that merge goes too, or the
            # override would resolve through it.
            merged = self._merges({own: (kind, value)})
            if merged[0]["into_person"]:
                before["merges"] = merged
                after["merges"] = [{**merged[0], "into_person": "", "into_kind": "",
                                    "into_id": ""}]
            # (split from nobody: no "from", which an erasure would have blanked to "")
            target = {"from": person.person_id, "person": own} if person.person_id else \
                {"person": own}
            op_id = self._apply("split", target, before, after, actor)
            return {"op_id": op_id, "person_id": own, "from": person.person_id or None}

    def undo(self, op_id: str, actor: str) -> dict[str, Any]:
        with serialised(self.site.site_id):
            found = self.store.rows(
                "SELECT op, target, before, after, toString(undoes) AS undoes, "
                "toString(at) AS at, "
                "(SELECT count() FROM tagwerk.identity_operations WHERE site_id = {site:String} "
                " AND undoes = {op:UUID}) AS undone "
                "FROM tagwerk.identity_operations WHERE site_id = {site:String} "
                "AND op_id = {op:UUID}", {"site": self.site.site_id, "op": op_id})
            if not found:
                raise OperationError(404, f"no operation {op_id} on this site", "op_id")
            row = found[0]
            if row["op"] == "undo":
                raise OperationError(409, "an undo is not undone: run the operation again",
                                     "op_id")
            if int(row["undone"]):
                raise OperationError(409, f"operation {op_id} was undone already", "op_id")
            before, after = orjson.loads(row["before"]), orjson.loads(row["after"])
            if erased_since(orjson.loads(row["target"]), before, after):
                raise OperationError(409, f"operation {op_id} names a person erased since: "
                                     "what it changed cannot be restored", "op_id")
            anchors = {r["person_id"]: (r["kind"], r["id"]) for r in after["merges"]}
            pairs = [(r["kind"], r["id"]) for r in after["overrides"]]
            current = {"merges": self._merges(anchors), "overrides": self._overrides(pairs)}
            if current != after or self._later_ops_of(
                    _depending(row["op"], orjson.loads(row["target"]), before, after),
                    op_id, row["at"]):
                raise OperationError(409, f"a later operation changed what {op_id} did, or "
                                     "the site's retention removed it: undo the later one "
                                     "first (see the operations list)", "op_id")
            undo_id = self._apply("undo", {"undoes": op_id}, after, before, actor, undoes=op_id)
            return {"op_id": undo_id, "undid": op_id, "op": row["op"]}

    def _later_ops_of(self, persons: list[str], op_id: str, at: str) -> bool:
        """Whether an operation since ``op_id`` (at ``at``), not undone, names one of the
        persons. A split's persons are changed by later merges without a row the split
        wrote (moved into another, or another moved into them): undone under them, the
        split would leave a merge pointing at a person nobody resolves to. (An operation
        in the same millisecond counts as later: refused, not mixed.)"""
        return bool(self.store.rows(
            "SELECT 1 FROM tagwerk.identity_operations WHERE site_id = {site:String} "
            "AND at >= {at:DateTime64(3, 'UTC')} AND op_id != {op:UUID} AND op != 'undo' "
            "AND hasAny(persons, {persons:Array(String)}) AND op_id NOT IN ("
            " SELECT assumeNotNull(undoes) FROM tagwerk.identity_operations "
            " WHERE site_id = {site:String} AND op = 'undo') LIMIT 1",
            {"site": self.site.site_id, "at": at, "op": op_id, "persons": persons}))

    def history(self, limit: int) -> list[dict[str, Any]]:
        rows = self.store.rows(
            "SELECT toString(op_id) AS op_id, op, target, toString(undoes) AS undoes, actor, at "
            "FROM tagwerk.identity_operations WHERE site_id = {site:String} "
            "ORDER BY at DESC, op_id LIMIT {limit:UInt32}",
            {"site": self.site.site_id, "limit": limit})
        for row in rows:
            row["target"] = orjson.loads(row["target"])
        return rows

    # -- rows -------------------------------------------------------------------------------------

    def _merges(self, anchors: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
        """The current merge rows of these persons ('' into_* where there is none)."""
        rows = {r["person_id"]: r for r in self.store.rows(
            "SELECT person_id, kind, id, into_person, into_kind, into_id "
            "FROM tagwerk.identity_merges FINAL WHERE site_id = {site:String} "
            "AND person_id IN {pids:Array(String)}",
            {"site": self.site.site_id, "pids": sorted(anchors)})}
        return [
            rows.get(pid) or {"person_id": pid, "kind": kind, "id": ident, "into_person": "",
                              "into_kind": "", "into_id": ""}
            for pid, (kind, ident) in sorted(anchors.items())
        ]

    def _overrides(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        rows = {(r["kind"], r["id"]): r for r in self.store.rows(
            "SELECT kind, id, person_id FROM tagwerk.identity_overrides FINAL "
            f"WHERE site_id = {{site:String}} AND {PAIRS}",
            {"site": self.site.site_id, **pair_params(pairs)})} if pairs else {}
        return [rows.get(pair) or {"kind": pair[0], "id": pair[1], "person_id": ""}
                for pair in sorted(pairs)]

    def _apply(self, op: str, target: dict[str, str], before: dict, after: dict, actor: str,
               undoes: str | None = None) -> str:
        op_id = str(uuid.uuid4())
        version = _version()
        site = self.site.site_id
        # The audit row first: should the process die between the two writes, the
        # operation is on record, and an undo restores what it recorded.
        rows = [*before["merges"], *after["merges"], *before["overrides"], *after["overrides"]]
        # (an undo's target names the operation it undoes, not a person)
        persons = {*(v for k, v in target.items() if k != "undoes"),
                   *(r["person_id"] for r in rows),
                   *(r.get("into_person", "") for r in rows)}
        identifiers = {f"{r['kind']}:{r['id']}" for r in rows}
        identifiers |= {f"{r['into_kind']}:{r['into_id']}" for r in rows if r.get("into_kind")}
        audit = {"site_id": site, "op_id": op_id, "op": op, "target": orjson.dumps(target).decode(),
                 "before": orjson.dumps(before).decode(), "after": orjson.dumps(after).decode(),
                 "persons": sorted(persons - {""}), "identifiers": sorted(identifiers),
                 "undoes": undoes, "actor": actor,
                 "at": time_text()}
        self.store.insert("tagwerk.identity_operations", orjson.dumps(audit), "JSONEachRow")
        if after["merges"]:
            lines = [orjson.dumps({"site_id": site, **{c: r[c] for c in MERGE_COLUMNS},
                                   "op_id": op_id, "version": version})
                     for r in after["merges"]]
            self.store.insert("tagwerk.identity_merges", b"\n".join(lines), "JSONEachRow")
        if after["overrides"]:
            lines = [orjson.dumps({"site_id": site, **{c: r[c] for c in OVERRIDE_COLUMNS},
                                   "op_id": op_id, "version": version})
                     for r in after["overrides"]]
            self.store.insert("tagwerk.identity_overrides", b"\n".join(lines), "JSONEachRow")
        return op_id
