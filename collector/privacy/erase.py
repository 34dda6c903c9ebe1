"""Erase a person everywhere, through every identifier linked to them.

1. The identifiers that are theirs alone (their user ids, and every identifier whose rows
   are all theirs) become tombstones, and so does their past time on a shared identifier:
   from now on a hit naming one (at that time) is dropped at ingestion, here at once and
   by other collectors within seconds; each collector's flusher also drops such rows
   among those it had acknowledged before it learnt of the tombstones
   (``Flusher.recheck_until``), and after a restart among all it replays.
2. What this collector has acknowledged but not yet stored is flushed first, before the
   person is looked up (a login among it makes a device theirs) and again after the
   tombstones, so that it is found by the deletes.
3. Their rows go from ``events`` and from every table keyed by person, session or device
   (``PERSON_TABLES``): the rows with one of their user ids, and the rows without a user id
   (or with a browser's unverified claim of another's) naming one of their identifiers
   while it was theirs. A shared device keeps the other persons' rows. ``person_hits``
   files a hit under each identifier it names: every copy of their events goes, whoever
   else's key it is filed under.
4. Their identity rows go: the links made with their user ids, merges and splits
   involving them; the audit rows of those operations stay, with them blanked. A
   shared identifier's links to them become links to an erased anchor (a user id no
   request can name), so that the time it was theirs stays nobody's: a late hit of that
   time is not handed to the device's other owner. An identifier whose other holders
   were all erased before is erased whole: its rows and tombstones up to now (its other
   time was erased persons' or nobody's) and all its links, the erased anchors' too;
   nobody is left whom it identifies (``_with_history``). So is one past the site's limit
   of users (a kiosk) once its last user who is not erased goes.
5. An audit row records who erased what and when: the digest of the identifier asked for
   (keyed, like the tombstones': ``key.py``), the number of identifiers and the rows
   removed per table, never an identifier.

Counts and deletes are ClickHouse lightweight deletes, synchronous: when the answer comes,
a query no longer sees the rows (patch parts where a table allows them: ``delete_where``).
Aggregates keep no identifiers (unique counts are hash sketches), except the co-view
tables' session ids: the daily tier's marks of the sessions it counted, and each pair's ids
of its sessions (taken out here); pair counts are recomputed from the session state and the
purchases: co-views every minute (the daily tier's once a day), co-purchases every 10
minutes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

import orjson

from collector.identifiers import person_id
from collector.identity.graph import BEGINNING, END, Graph, Person, Span, row_parts
from collector.identity.operations import PAIR, PAIRS, exactly, serialised
from collector.privacy.tombstones import ALWAYS, Spans, Tombstones
from collector.sites import Site
from collector.storage import Store, time_text

ERASED = "\0erased:"  # the anchor of what erased persons held on shared identifiers
FLUSH_WAIT = 10.0
# Deletes write patch parts where the engine can (lightweight updates, ClickHouse 25.7+;
# see ``delete_where``); asked once per store before an erasure begins, so that an older
# server deletes with mutations instead of failing half-way.
PATCH_DELETES = " SETTINGS lightweight_delete_mode = 'lightweight_update'"
_delete_settings: WeakKeyDictionary[Store, str] = WeakKeyDictionary()

# Tables keyed by person, session or device: (table, time expression, has identifiers).
PERSON_TABLES = (
    ("events", "ts", True),
    ("person_hits", "ts", True),
    ("session_items", "last_ts", False),
    ("session_entries", "first.1", False),
    ("purchased_items", "last_ts", False),
)


class Remade(NamedTuple):
    """A table's rows as its view makes them from ``events``."""

    columns: str  # the table's, in the order of ``select``
    select: str
    condition: str  # the view's, on a hit (bots never count)
    key: str  # the grouping


# Tables that keep one row per device (and session) and user id, whoever's the hits were:
# a shared device's anonymous purchases, a session used by two persons. The person's part of
# such a row cannot be deleted alone, so the rows of their shared devices are made again
# from the hits that remain, as each table's view makes them (clickhouse/0026).
REMADE = {
    "purchased_items": Remade(
        "site_id, device_id, user_id, products, last_ts, retention_days",
        "site_id, device_id, user_id, groupUniqArrayArray(arrayFilter(p -> p != '', "
        "items.product_id)), max(ts), max(retention_days)",
        "event = 'purchase' AND (device_id != '' OR user_id != '')",
        "site_id, device_id, user_id"),
    "session_items": Remade(
        "site_id, session_id, device_id, user_id, products, last_ts, retention_days",
        "site_id, session_id, device_id, user_id, groupUniqArrayArray(arrayFilter(p -> "
        "p != '', items.product_id)), max(ts), max(retention_days)",
        "event = 'view_item' AND session_id != ''",
        "site_id, session_id, device_id, user_id"),
    "session_entries": Remade(
        "site_id, session_id, device_id, user_id, first, retention_days",
        "site_id, session_id, device_id, user_id, min((ts, path)), max(retention_days)",
        "event = 'page_view' AND session_id != ''",
        "site_id, session_id, device_id, user_id"),
}


class NotFound(Exception):
    pass


class TooLarge(Exception):
    pass


def owned(person: Person) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The person's identifiers split into theirs alone and shared with someone else."""
    spans: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for span in person.spans:
        spans.setdefault((span.kind, span.id), []).append((span.start, span.end))
    alone = [("user", u) for u in person.users]
    shared = []
    for pair, ranges in sorted(spans.items()):
        (alone if ranges == [(BEGINNING, END)] else shared).append(pair)
    return alone, shared


def erase(store: Store, site: Site, tombstones: Tombstones, kind: str, ident: str,
          actor: str, flush: Callable[[float], bool]) -> dict[str, Any]:
    """Erase the person known by ``kind:ident``; ``flush(timeout)`` waits until what this
    collector acknowledged is stored. Raises NotFound."""
    settings = delete_settings(store)
    graph = Graph(store, site)
    flushed = flush(FLUSH_WAIT)
    person = graph.resolve(kind, ident)
    if person is None:
        raise NotFound(f"nobody is known by {kind}:{ident[:64]} on this site")
    if person.truncated:  # their spans are incomplete: an erasure could miss rows
        raise TooLarge("the person's identifiers changed hands too often to be erased in "
                       "one request; split the busiest identifiers off first (identity/split)")
    site_id = site.site_id
    request_id = str(uuid.uuid4())
    alone, shared = owned(person)
    past = _past_the_limit(store, site_id, person)
    # One split off them is its own person's, not erased with them, whoever else holds it.
    split = _split_off(store, site_id, past)
    orphaned = _held_by_nobody_else(store, site_id, person,
                                    shared + [pair for pair in past if pair not in split])
    if orphaned:
        person = _with_history(person, orphaned)
        # One past the limit that only erased persons and they held goes whole too: it is
        # shared no longer (its tombstones cover its history), and its links go.
        shared += [pair for pair in past if pair in orphaned]
        past = [pair for pair in past if pair not in orphaned]
    tombstones.add(site_id, _tombstones(tombstones, site_id, person, alone, shared), request_id)
    flushed = flush(FLUSH_WAIT) and flushed
    removed: dict[str, int] = {}
    copies = _copies(store, site_id, person)  # read before their events go
    sessions = _sessions(store, site_id, person)  # and before their sessions' items
    for table, ts, has_identifiers in PERSON_TABLES:
        if table == "person_hits":
            parts, params = [COPIES], copies
        else:
            parts, params = row_parts(person, ts, has_identifiers, claims=table == "events")
        removed[table] = delete_where(store, f"tagwerk.{table}",
                                 [f"site_id = {{site:String}} AND {part}" for part in parts],
                                 {"site": site_id, **params}, settings)
    devices = sorted(ident for kind, ident in shared if kind == "device")
    for table in REMADE if devices else ():
        removed[f"{table} (made again)"] = _remake(store, site_id, table, devices, settings)
    removed.update(_forget_sessions(store, site_id, sessions, settings))
    # Under the site's operations lock: an undo run meanwhile could write back a merge
    # into them after their merges went, or find their audit rows half rewritten.
    with serialised(site_id):
        removed.update(_erase_identity(store, site_id, person, orphaned,
                                       [pair for pair in shared if pair not in orphaned]
                                       + past,
                                       request_id, settings))
    identifiers = len(alone) + len(shared)
    _audit(store, site_id, request_id, tombstones.subject(site_id, kind, ident), identifiers,
           removed, actor)
    return {"request_id": request_id, "person_id": person.person_id,
            "identifiers": identifiers, "removed": removed, "spool_flushed": flushed}


def _remake(store: Store, site_id: str, table: str, devices: list[str],
            settings: str) -> int:
    """Make ``table``'s rows of ``devices`` again from the events that remain (``REMADE``):
    how many rows there were. A hit stored meanwhile is in both its view's row and this
    one, which the table's aggregation merges (unions and extremes)."""
    remade = REMADE[table]
    params = {"site": site_id, "devices": devices}
    theirs = "site_id = {site:String} AND device_id IN {devices:Array(String)}"
    found = delete_where(store, f"tagwerk.{table}", [theirs], params, settings)
    store.execute(f"INSERT INTO tagwerk.{table} ({remade.columns}) SELECT {remade.select} "
                  f"FROM tagwerk.events WHERE {theirs} AND {remade.condition} AND NOT is_bot "
                  f"GROUP BY {remade.key}", params)
    return found


def _copies(store: Store, site_id: str, person: Person) -> dict[str, list[str]]:
    """The person's events' copies in person_hits: the keys they are filed under (as its
    view files them, clickhouse/0030) and their ids, for ``COPIES``. By key, the copies
    are primary-key reads; by event id alone, the whole table."""
    parts, params = row_parts(person, claims=True)
    if not parts:
        return {"h_keys": [], "h_ids": []}
    keyed = ("event_id, arrayJoin(if(user_id != '' AND user_verified, [concat('user:', "
             "user_id)], arrayConcat(if(device_id != '', [concat('device:', device_id)], []), "
             "arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers)))"
             ")) AS key")
    rows = store.rows(
        "SELECT groupUniqArray(key) AS keys, groupUniqArray(toString(event_id)) AS ids "
        f"FROM ({_each_part('events', keyed, parts)})", {"site": site_id, **params})
    return {"h_keys": sorted(rows[0]["keys"]), "h_ids": sorted(rows[0]["ids"])}


def _sessions(store: Store, site_id: str, person: Person) -> list[str]:
    """The ids of the person's sessions with viewed items (``session_items``)."""
    parts, params = row_parts(person, "last_ts", False)
    if not parts:
        return []
    rows = store.rows(f"SELECT DISTINCT session_id FROM "
                      f"({_each_part('session_items', 'session_id', parts)})",
                      {"site": site_id, **params})
    return sorted(r["session_id"] for r in rows)


HOLDS = "hasAny(session_ids, {s:Array(String)})"
# The daily tier's marks of the sessions it counted (clickhouse/0035).
MARKS = "product_id = '' AND other_id IN {s:Array(String)}"
# The co-view tables, each with the view that makes it again and its marks (the daily one
# first: the minute's copies its pairs).
COVIEW_TABLES = (("coview_pairs_settled", "coview_pairs_settled_mv", MARKS),
                 ("coview_pairs", "coview_pairs_mv", "0"))
FORGET = ("UPDATE session_ids = arrayFilter(s -> NOT has({s:Array(String)}, s), session_ids) "
          "WHERE site_id = {site:String} AND " + HOLDS + " SETTINGS mutations_sync = 2")
FORGET_ROUNDS = 5


def _forget_sessions(store: Store, site_id: str, sessions: list[str], settings: str
                     ) -> dict[str, int]:
    """Take the person's session ids out of the co-view tables: the daily tier's marks of
    the sessions it counted (clickhouse/0035), and the ids each pair of either tier keeps of
    its sessions (0043; the counts stay, they name nobody). A refresh swaps its table for
    one made from what it read when it began: each table is cleaned once its view's
    running refresh ended, until it is found clean right after one."""
    if not sessions:
        return {}
    params = {"site": site_id, "s": sessions}
    removed: dict[str, int] = {}
    for table, view, marks in COVIEW_TABLES:
        for _ in range(FORGET_ROUNDS):
            store.execute(f"SYSTEM WAIT VIEW tagwerk.{view}")
            [found] = store.rows(f"SELECT countIf({HOLDS}) AS ids, countIf({marks}) AS marks "
                                 f"FROM tagwerk.{table} WHERE site_id = {{site:String}}",
                                 params)
            ids, marked = int(found["ids"]), int(found["marks"])
            if not ids and not marked:
                break
            removed.setdefault(table, ids + marked)
            if ids:
                store.execute(f"ALTER TABLE tagwerk.{table} {FORGET}", params)
            if marked:  # (counted above: no count again, as ``delete_where`` would)
                store.execute(f"DELETE FROM tagwerk.{table} WHERE site_id = {{site:String}} "
                              f"AND {marks}{settings}", params)
        else:
            raise RuntimeError(f"{table} kept the erased sessions through "
                               f"{FORGET_ROUNDS} refreshes")
        removed.setdefault(table, 0)
    return removed


def _each_part(table: str, columns: str, parts: list[str]) -> str:
    """``columns`` of the site's rows of ``table`` matching each of ``parts`` (disjoint),
    one SELECT each, so that each part's index narrows its read (see ``delete_where``)."""
    return " UNION ALL ".join(f"SELECT {columns} FROM tagwerk.{table} "
                              f"WHERE site_id = {{site:String}} AND {part}" for part in parts)


COPIES = "key IN {h_keys:Array(String)} AND event_id IN {h_ids:Array(UUID)}"


def _past_the_limit(store: Store, site_id: str, person: Person) -> list[tuple[str, str]]:
    """Identifiers their user ids linked that are not theirs: past the site's limit of
    users (a kiosk, a QA device), or split off by an admin. Their links become the erased
    anchor's too, so that the identifier stays past the limit: without them it would fall
    back under it, and the time that was nobody's would become its last allowed user's (for
    a split one, once the split is undone)."""
    if not person.users:
        return []
    held = {(s.kind, s.id) for s in person.spans}
    rows = store.rows(
        "SELECT DISTINCT toString(kind) AS kind, id FROM tagwerk.identity_links_by_person "
        "WHERE site_id = {site:String} AND person_id IN {users:Array(String)}",
        {"site": site_id, "users": [person_id(site_id, "user", u) for u in person.users]})
    return sorted({(r["kind"], r["id"]) for r in rows} - held)


def _split_off(store: Store, site_id: str, pairs: list[tuple[str, str]]
               ) -> set[tuple[str, str]]:
    """Those of the identifiers an admin split off: their split decides whose they are."""
    if not pairs:
        return set()
    rows = store.rows(
        "SELECT toString(kind) AS kind, id FROM tagwerk.identity_overrides FINAL "
        f"WHERE site_id = {{site:String}} AND {PAIR} IN {{pairs:Array(String)}} "
        "AND person_id != ''", {"site": site_id, "pairs": [f"{k}:{i}" for k, i in pairs]})
    return {(r["kind"], r["id"]) for r in rows}


def _tombstones(tombstones: Tombstones, site_id: str, person: Person,
                alone: list[tuple[str, str]], shared: list[tuple[str, str]]
                ) -> dict[str, Spans]:
    """What to drop from now on: any hit naming an identifier that was theirs alone, and
    hits of their past time on a shared one (a late replay or an old timestamp; the time
    after the erasure stays the device's next owner's, or nobody's)."""
    now = time_text()
    subjects = {tombstones.subject(site_id, k, i): ALWAYS for k, i in alone}
    by_identifier = person.spans_by_identifier()
    for pair in shared:
        past = tuple((span.start, min(span.end, now)) for span in by_identifier[pair]
                     if span.start < now)
        if past:
            subjects[tombstones.subject(site_id, *pair)] = past
    return subjects


def _erase_identity(store: Store, site_id: str, person: Person,
                    orphaned: set[tuple[str, str]], shared: list[tuple[str, str]],
                    request_id: str, settings: str) -> dict[str, int]:
    users = [person_id(site_id, "user", u) for u in person.users]
    members = sorted(person.members)
    base = {"site": site_id, "users": users, "members": members}
    # Held otherwise only by persons erased before: nobody is left whom it identifies. Its
    # links go, the erased anchors' with them (see ``_with_history``).
    removed = _forget_identifiers(store, site_id, users, orphaned, settings)
    if shared:
        # The time a shared identifier was theirs stays nobody's (see the module's doc).
        # One anchor per user id of theirs: an identifier past the limit of users counts
        # each (one for two merged customers took a kiosk back under it).
        anchors = [f"{ERASED}{request_id}:{n}" for n in range(len(users))]
        store.execute(
            "INSERT INTO tagwerk.identity_links_by_identifier (site_id, kind, id, user_id, "
            "person_id, ts, source, event_id, retention_days) SELECT site_id, kind, id, "
            "{anchors:Array(String)}[indexOf({users:Array(String)}, person_id)], "
            "{anchor_persons:Array(String)}[indexOf({users:Array(String)}, person_id)], ts, "
            "'erased', generateUUIDv4(), retention_days "
            "FROM tagwerk.identity_links_by_identifier WHERE site_id = {site:String} "
            f"AND person_id IN {{users:Array(String)}} AND {PAIR} IN {{pairs:Array(String)}}",
            {**base, "anchors": anchors,
             "anchor_persons": [person_id(site_id, "user", a) for a in anchors],
             "pairs": [f"{k}:{i}" for k, i in shared]})
    theirs = "site_id = {site:String} AND person_id IN {users:Array(String)}"
    removed["identity_links"] += delete_where(store, "tagwerk.identity_links_by_identifier",
                                         [theirs], base, settings)
    removed["identity_links_by_person"] += delete_where(store, "tagwerk.identity_links_by_person",
                                                   [theirs], base, settings)
    removed |= {
        "identity_merges": delete_where(
            store, "tagwerk.identity_merges", ["site_id = {site:String} AND "
            "(person_id IN {members:Array(String)} OR into_person IN {members:Array(String)})"],
            base, settings),
    }
    pairs = sorted({f"{s.kind}:{s.id}" for s in person.spans}
                   | {f"user:{u}" for u in person.users}
                   | {f"{kind}:{ident}" for kind, ident in person.merged.values()}
                   | {f"{person.kind}:{person.id}"})
    removed["identity_overrides"] = delete_where(
        store, "tagwerk.identity_overrides", ["site_id = {site:String} AND "
        f"(person_id IN {{members:Array(String)}} OR {PAIR} IN {{pairs:Array(String)}})"],
        {**base, "pairs": pairs}, settings)
    # Audit rows of merges and splits that named them stay, without them; a shared
    # identifier another person still holds stays named (it is theirs too).
    still_held = {f"{kind}:{ident}" for kind, ident in shared}
    blank = {pair for pair in pairs if pair not in still_held}
    # Person ids are digests anyone can compute again from an identifier: those of the
    # blanked identifiers go too, not only of the persons that were theirs.
    persons = set(members) | {person_id(site_id, *pair.split(":", 1)) for pair in blank}
    removed["identity_operations_redacted"] = _redact_operations(
        store, site_id, persons, blank, settings)
    return removed


def _redact_operations(store: Store, site_id: str, persons: set[str], pairs: set[str],
                       settings: str) -> int:
    """Blank the persons ``persons`` and the identifiers ``pairs`` ('kind:id') in the audit
    rows of the operations that name them: each stays on record (what was done, by whom,
    when, to which other persons), and can no longer be undone (``Operations.undo``). The
    rows are deleted before their blanked copies are written: a failure in between loses
    the record, never keeps the person in it. How many rows were blanked."""
    where = ("site_id = {site:String} AND (hasAny(persons, {persons:Array(String)}) "
             "OR hasAny(identifiers, {pairs:Array(String)}))")
    params = {"site": site_id, "persons": sorted(persons), "pairs": sorted(pairs)}
    rows = store.rows("SELECT site_id, toString(op_id) AS op_id, op, target, before, after, "
                      "toString(undoes) AS undoes, actor, toString(at) AS at, persons, "
                      f"identifiers FROM tagwerk.identity_operations WHERE {where}", params)
    if not rows:
        return 0
    delete_where(store, "tagwerk.identity_operations",
                 [f"op_id IN {{ops:Array(UUID)}} AND {where}"],
                 {**params, "ops": [row["op_id"] for row in rows]}, settings)
    store.insert("tagwerk.identity_operations",
                 b"\n".join(orjson.dumps(_blanked(row, persons, pairs)) for row in rows),
                 "JSONEachRow")
    return len(rows)


def _blanked(audit: dict[str, Any], persons: set[str], pairs: set[str]) -> dict[str, Any]:
    """An audit row with ``persons`` and ``pairs`` ('kind:id') blanked: '' in place of a
    person id or an identifier's id (neither is ever empty otherwise), each left out of
    the row's ``persons`` and ``identifiers``."""

    def row(r: dict[str, str]) -> dict[str, str]:
        r = dict(r)
        for person in ("person_id", "into_person"):
            if r.get(person) in persons:
                r[person] = ""
        for kind, ident in (("kind", "id"), ("into_kind", "into_id")):
            if r.get(kind) and f"{r[kind]}:{r[ident]}" in pairs:
                r[ident] = ""
        return r

    def rows(text: str) -> str:
        found = orjson.loads(text)
        return orjson.dumps({table: [row(r) for r in found[table]]
                             for table in ("merges", "overrides")}).decode()

    target = {role: "" if pid in persons else pid
              for role, pid in orjson.loads(audit["target"]).items()}
    return {**audit, "target": orjson.dumps(target).decode(), "before": rows(audit["before"]),
            "after": rows(audit["after"]),
            "persons": [p for p in audit["persons"] if p not in persons],
            "identifiers": [i for i in audit["identifiers"] if i not in pairs]}


def _held_by_nobody_else(store: Store, site_id: str, person: Person,
                         shared: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of the shared identifiers no one but the person and erased anchors holds: not
    through a link, nor as the anchor of a merge with someone else."""
    if not shared:
        return set()
    pairs = {"site": site_id, **exactly(shared), "members": sorted(person.members),
             "users": [person_id(site_id, "user", u) for u in person.users]}
    linked = store.rows(
        "SELECT DISTINCT toString(kind) AS kind, id FROM tagwerk.identity_links_by_identifier "
        f"WHERE site_id = {{site:String}} AND {PAIRS} AND person_id NOT IN "
        "{users:Array(String)} AND NOT startsWith(user_id, {erased:String})",
        {**pairs, "erased": ERASED})
    merged = store.rows(
        "SELECT toString(kind) AS kind, id, toString(into_kind) AS into_kind, into_id "
        "FROM tagwerk.identity_merges FINAL WHERE site_id = {site:String} "
        f"AND into_person != '' AND ({PAIR} IN {{pairs:Array(String)}} OR concat("
        "toString(into_kind), ':', into_id) IN {pairs:Array(String)}) AND NOT (person_id IN "
        "{members:Array(String)} AND into_person IN {members:Array(String)})", pairs)
    held = {(r["kind"], r["id"]) for r in linked}
    held |= {pair for r in merged
             for pair in ((r["kind"], r["id"]), (r["into_kind"], r["into_id"]))}
    return set(shared) - held


def _with_history(person: Person, orphaned: set[tuple[str, str]]) -> Person:
    """The person with the whole history so far of each identifier nobody else holds: its
    time before their own spans belonged to persons erased before (their rows are gone) or
    to nobody (an erased anchor's time after that erasure: an anonymous visit, say). Its
    rows up to now go with theirs, and its tombstones cover that time; its links go
    (``_forget_identifiers``), and its hits from now on make a new anonymous person."""
    now = time_text()
    spans = [s for s in person.spans if (s.kind, s.id) not in orphaned]
    spans += [Span(kind, ident, BEGINNING, now) for kind, ident in sorted(orphaned)]
    return replace(person, spans=spans, _by_identifier=None)


def _forget_identifiers(store: Store, site_id: str, users: list[str],
                        pairs: set[tuple[str, str]], settings: str) -> dict[str, int]:
    """Delete the links of ``pairs`` held by the person's user ids or by erased anchors
    (not a link a living person made since ``_held_by_nobody_else`` read them)."""
    if not pairs:
        return {"identity_links": 0, "identity_links_by_person": 0}
    ours = ("site_id = {site:String} AND (person_id IN {users:Array(String)} "
            f"OR startsWith(user_id, {{erased:String}})) AND {PAIRS} AND {PAIR} IN "
            "{pairs:Array(String)}")
    params: dict[str, Any] = {"site": site_id, "users": users, "erased": ERASED,
                              **exactly(sorted(pairs))}
    holders = store.rows(
        f"SELECT DISTINCT person_id FROM tagwerk.identity_links_by_identifier WHERE {ours}",
        params)
    params["holders"] = sorted({r["person_id"] for r in holders} | set(users))
    return {
        "identity_links": delete_where(store, "tagwerk.identity_links_by_identifier", [ours],
                                  params, settings),
        "identity_links_by_person": delete_where(
            store, "tagwerk.identity_links_by_person",
            ["site_id = {site:String} AND person_id IN {holders:Array(String)} "
             f"AND {PAIRS} AND {PAIR} IN {{pairs:Array(String)}}"], params, settings),
    }


def delete_settings(store: Store) -> str:
    """PATCH_DELETES if the engine knows the setting, else nothing (asked once)."""
    found = _delete_settings.get(store)
    if found is None:
        [row] = store.rows("SELECT count() AS n FROM system.settings "
                           "WHERE name = 'lightweight_delete_mode'")
        found = _delete_settings[store] = PATCH_DELETES if int(row["n"]) else ""
    return found


def delete_where(store: Store, table: str, parts: list[str], params: dict[str, Any], settings: str
            ) -> int:
    """Delete the rows each of ``parts`` (disjoint conditions) matches; how many there were.
    Counted in one statement; each part that matched deleted on its own, so that its index
    narrows the read (a DELETE of their disjunction reads what the disjunction does). With
    a patch part (the rows' ``_row_exists`` only) where the table keeps block numbers and
    offsets and ``settings`` allow it, else with a mutation: the mutation rewrote every
    part's row mask, 8.7 s on 10 million events for one person's 1,000 rows (patch: well
    under one)."""
    if not parts:
        return 0
    counts = " UNION ALL ".join(f"SELECT {n} AS part, count() AS n FROM {table} WHERE {part}"
                                for n, part in enumerate(parts))
    found = {int(row["part"]): int(row["n"]) for row in store.rows(counts, params)}
    for n, part in enumerate(parts):
        if found.get(n):
            store.execute(f"DELETE FROM {table} WHERE {part}{settings}", params)
    return sum(found.values())


def _audit(store: Store, site_id: str, request_id: str, digest: str, identifiers: int,
           removed: dict[str, int], actor: str) -> None:
    row = {"site_id": site_id, "request_id": request_id, "op": "erase", "subject": digest,
           "keyed": True, "identifiers": identifiers, "removed": orjson.dumps(removed).decode(),
           "actor": actor, "at": time_text()}
    store.insert("tagwerk.privacy_requests", orjson.dumps(row), "JSONEachRow")


def wait_flushed(spool_durable: Callable[[], Any], flushed: Callable[[], Any]
                 ) -> Callable[[float], bool]:
    """``flush(timeout)`` for a collector: wait until the flusher has stored what was
    durable when it was called."""
    def flush(timeout: float) -> bool:
        target = spool_durable()
        deadline = time.monotonic() + timeout
        while flushed() < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True
    return flush
