"""Who an identifier belongs to, and everything that belongs to a person, resolved at query
time from the links, merges and splits (``clickhouse/0012_identity.sql``).

The rules:

- A person is anchored on their user id; a person nobody linked, on the one identifier
  they were seen with. Two user ids are two persons until an admin merges them.
- Any other identifier (device, e-mail, loyalty card...) belongs, at a time t, to the user
  of its latest link at or before t; before its first link, to its first user. A shared
  device therefore belongs to whoever logged in last, from that moment on, and earlier hits
  stay with the earlier person, with no ``reset`` needed from the page.
- An identifier linked to more than the site's ``identity_max_persons`` users only follows
  its links to the first ones (by first link): beyond that it stops linking, and
  ``overloaded`` reports it.
- A split gives an identifier a person of its own whatever its links say; a merge makes a
  person resolve to another. Merges are kept flat (see ``operations``): one lookup.
- A row with a user id belongs to that user's person; a row without one to the owner of its
  identifiers at the row's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.identifiers import person_id
from collector.identity.link_index import LinkIndex
from collector.sites import Site
from collector.storage import Store

# Far enough outside any event time to bound every span.
BEGINNING = "1970-01-01 00:00:00.000"
END = "2299-12-31 00:00:00.000"
MAX_LINKS = 10_000  # owner changes read for one person's identifiers
# The statements below are kept simple on purpose: a CTE is evaluated once per reference,
# and each sub-pipeline costs milliseconds, so several plain statements beat one clever one.

# Whose an identifier is: its split (override) and its first `cap` users by first link
# (rows: part, a, b, c, d); read with one more, whose presence says it stopped linking.
ANCHOR = """
SELECT 'override' AS part, person_id AS a, '' AS b, '' AS c, '' AS d
FROM tagwerk.identity_overrides FINAL
WHERE site_id = {site:String} AND kind = {kind:String} AND id = {id:String} AND person_id != ''
UNION ALL
SELECT 'owner', user_id, toString(first), toString(last), ''
FROM (SELECT user_id, min(ts) AS first, max(ts) AS last
      FROM tagwerk.identity_links_by_identifier
      WHERE site_id = {site:String} AND kind = {kind:String} AND id = {id:String}
      GROUP BY user_id ORDER BY first, user_id LIMIT {cap:UInt32})
"""
# ANCHOR without the split, for a site whose decisions are kept.
OWNERS = """
SELECT 'owner' AS part, user_id AS a, toString(first) AS b, toString(last) AS c, '' AS d
FROM (SELECT user_id, min(ts) AS first, max(ts) AS last
      FROM tagwerk.identity_links_by_identifier
      WHERE site_id = {site:String} AND kind = {kind:String} AND id = {id:String}
      GROUP BY user_id ORDER BY first, user_id LIMIT {cap:UInt32})
"""
# A person's merges: whom it was merged into ('into'), and who was merged into it
# ('member'); merges are kept flat, so one of the two is empty. (Aliases must not be column
# names: ClickHouse would read them in WHERE.)
MERGES = """
SELECT 'into' AS part, into_person AS p, into_kind AS k, into_id AS i
FROM tagwerk.identity_merges FINAL
WHERE site_id = {site:String} AND person_id = {pid:String} AND into_person != ''
UNION ALL
SELECT 'member', person_id, kind, id FROM tagwerk.identity_merges FINAL
WHERE site_id = {site:String} AND into_person = {pid:String}
"""
# Which of some persons an admin merged with another, either way (a device's own person).
MERGED_WITH = """
SELECT person_id AS p FROM tagwerk.identity_merges FINAL
WHERE site_id = {site:String} AND person_id IN {pids:Array(String)} AND into_person != ''
UNION ALL
SELECT into_person FROM tagwerk.identity_merges FINAL
WHERE site_id = {site:String} AND into_person IN {pids:Array(String)}
"""
# MERGES for a user id's person, in ANCHOR's columns, to ask both at once.
MERGES_AS_ANCHOR = f"""
SELECT part, p, k, i, '' FROM ({MERGES})
"""
# The identifiers ever linked to some user ids' persons, per person.
HELD = """
SELECT DISTINCT person_id AS p, toString(kind) AS k, id AS i
FROM tagwerk.identity_links_by_person
WHERE site_id = {site:String} AND person_id IN {pids:Array(String)}
"""
PAIRS_IN = "(kind, id) IN (SELECT tupleElement(pair, 1), tupleElement(pair, 2) FROM " \
    "(SELECT arrayJoin(arrayZip({kinds:Array(String)}, {ids:Array(String)})) AS pair))"
# The links of some identifiers and maybe of others (a kind asked with another's id): the
# primary key's ranges straight from the two lists, where PAIRS_IN's subquery and set cost
# a statement on the links 2-4x as much; the reader keeps the pairs it asked for.
AMONG = "kind IN {kinds:Array(String)} AND id IN {ids:Array(String)}"
# For some identifiers: their links in time order, at most `each` per identifier ('link'),
# their splits ('override'), and the user ids' first and last links ('user') (rows: part,
# kind, id, user_id, ts, last). Who held an identifier when is worked out from its links in
# Python (``_holders``): one read, where grouping and a window in the engine cost two
# statements of several milliseconds each. An identifier with more links than `each` (a
# shared coupon, a QA device) is worked out by the engine instead (SEEN, CHANGES).
LINKS_OF = f"""
SELECT 'link' AS part, toString(kind) AS kind, id, user_id, toString(ts) AS ts, '' AS last
FROM (SELECT kind, id, user_id, ts FROM tagwerk.identity_links_by_identifier
      WHERE site_id = {{site:String}} AND {AMONG}
      ORDER BY kind, id, ts, user_id LIMIT {{each:UInt32}} BY kind, id)
"""
LINKS_OVERRIDES = f"""
SELECT 'override', toString(kind), id, person_id, '', '' FROM tagwerk.identity_overrides FINAL
WHERE site_id = {{site:String}} AND {PAIRS_IN} AND person_id != ''
"""
LINKS_USERS = """
SELECT 'user', 'user', id, '', toString(min(ts)), toString(max(ts))
FROM tagwerk.identity_links_by_identifier
WHERE site_id = {site:String} AND kind = 'user' AND id IN {users:Array(String)} GROUP BY id
"""
# (``_holders`` reads the user ids' first and last links only for a listing, and splits only
# when the site's decisions are not kept: each part of a UNION costs milliseconds.)
LINKS_EACH = 500
# For identifiers with many links: their first `cap` users with first and last link.
SEEN = f"""
SELECT toString(kind) AS kind, id, user_id, toString(first) AS ts, toString(last) AS last
FROM (SELECT kind, id, user_id, min(ts) AS first, max(ts) AS last
      FROM tagwerk.identity_links_by_identifier
      WHERE site_id = {{site:String}} AND {AMONG}
      GROUP BY kind, id, user_id ORDER BY first, user_id LIMIT {{cap:UInt32}} BY kind, id)
"""
# The moments those identifiers changed hands among their allowed users (a link whose user
# differs from the previous one: repeated logins of one user are one), at most `most`.
CHANGES = f"""
SELECT toString(kind) AS kind, id, user_id, toString(ts) AS ts FROM (
    SELECT kind, id, user_id, ts, lagInFrame(user_id, 1, '') OVER (
        PARTITION BY kind, id ORDER BY ts, user_id
        ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS previous
    FROM tagwerk.identity_links_by_identifier
    WHERE site_id = {{site:String}} AND {AMONG}
      AND concat(toString(kind), ':', id, ':', user_id) IN {{allowed:Array(String)}}
)
WHERE user_id != previous
ORDER BY kind, id, ts, user_id LIMIT {{most:UInt32}}
"""


# A site's merges and splits in force, read at once (``load_decisions``), at most MOST_DECISIONS.
DECISIONS = """
SELECT * FROM (
    SELECT 'merge' AS part, person_id AS a, toString(kind) AS b, id AS c, into_person AS d,
           toString(into_kind) AS e, into_id AS f
    FROM tagwerk.identity_merges FINAL WHERE site_id = {site:String} AND into_person != ''
    UNION ALL
    SELECT 'override', toString(kind), id, person_id, '', '', ''
    FROM tagwerk.identity_overrides FINAL WHERE site_id = {site:String} AND person_id != ''
) LIMIT {most:UInt32}
"""
MOST_DECISIONS = 10_000


@dataclass(frozen=True)
class Decisions:
    """A site's merges and splits (admin operations, rare): kept in memory by the profile's
    caller until the change feed reports a new one (``cache.py``), they save a statement and
    two parts of others per resolution. ``merges`` holds MERGES' rows per person id."""

    merges: dict[str, list[dict[str, str]]]
    overrides: dict[tuple[str, str], str]  # (kind, id) -> the person it was split to


def load_decisions(store: Store, site_id: str) -> Decisions | None:
    """The site's decisions, or None when there are too many to keep (then every resolution
    reads them)."""
    rows = store.rows(DECISIONS, {"site": site_id, "most": MOST_DECISIONS + 1})
    if len(rows) > MOST_DECISIONS:
        return None
    merges: dict[str, list[dict[str, str]]] = {}
    overrides: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["part"] == "override":
            overrides[(row["a"], row["b"])] = row["c"]
            continue
        merges.setdefault(row["a"], []).append(
            {"part": "into", "p": row["d"], "k": row["e"], "i": row["f"]})
        merges.setdefault(row["d"], []).append(
            {"part": "member", "p": row["a"], "k": row["b"], "i": row["c"]})
    return Decisions(merges, overrides)


@dataclass(frozen=True)
class Span:
    """While an identifier (not a user id) belongs to the person: [start, end)."""

    kind: str
    id: str
    start: str
    end: str


@dataclass
class Person:
    person_id: str
    kind: str  # the anchor identifier
    id: str
    # Persons merged into this one: person_id -> (kind, id) of their anchors.
    merged: dict[str, tuple[str, str]] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    identifiers: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False  # more owner changes than MAX_LINKS: the spans are incomplete
    # The person the asked identifier's own links name, before merges: another than
    # person_id when an admin merged that one into this one.
    named: str = ""
    _by_identifier: dict[tuple[str, str], list[Span]] | None = field(default=None, repr=False)

    @property
    def members(self) -> set[str]:
        return {self.person_id, *self.merged}

    def spans_by_identifier(self) -> dict[tuple[str, str], list[Span]]:
        """The spans per (kind, id)."""
        if self._by_identifier is None:
            self._by_identifier = {}
            for span in self.spans:
                self._by_identifier.setdefault((span.kind, span.id), []).append(span)
        return self._by_identifier

    def as_dict(self, merged_ops: dict[str, str]) -> dict[str, Any]:
        return {
            "person_id": self.person_id,
            "identifiers": self.identifiers,
            "merged": [{"person_id": pid, "kind": kind, "id": ident,
                        "op_id": merged_ops.get(pid, "")}
                       for pid, (kind, ident) in sorted(self.merged.items())],
        }


class Graph:
    """The identity graph of one site."""

    def __init__(self, store: Store, site: Site, decisions: Decisions | None = None,
                 links: LinkIndex | None = None) -> None:
        self.store, self.site = store, site
        self.site_id = site.site_id
        self.cap = site.identity_max_persons
        self.decisions = decisions  # the site's merges and splits, if kept (else read)
        # The links held in memory, for resolutions without a listing with the decisions
        # kept (``_memory``; the caller checks they were fresh: resolutions._resolve).
        # Identifiers with LINKS_EACH links or more are read from the tables all the same.
        self.links = links

    # -- one identifier -----------------------------------------------------------------------

    def resolve(self, kind: str, ident: str, listing: bool = True) -> Person | None:
        """The person the identifier belongs to now (after merges), with all they hold;
        None if the identifier was never seen. ``listing``: also when each identifier was
        first and last seen, and None for an identifier seen nowhere (a profile needs
        neither: its rows decide, and reading events for it costs more than the rest).
        Three statements for a user id (its anchor and merges, the identifiers it holds,
        their links), four for another identifier (its owner's merges apart), each one more
        when an identifier they hold has links (whether an admin merged its own person:
        MERGED_WITH): each costs a few milliseconds however few rows it reads. With the
        site's decisions kept, three for any identifier, and smaller (no merges or splits
        read); two for a user id without a listing."""
        known = self.decisions
        if known is not None and not listing:
            return self.resolve_many([(kind, ident)])[0]
        user_pid = person_id(self.site_id, "user", ident) if kind == "user" else None
        if known is not None:
            sql = OWNERS
        else:
            sql = ANCHOR if user_pid is None else f"{ANCHOR} UNION ALL {MERGES_AS_ANCHOR}"
        parts: dict[str, list[dict[str, Any]]] = {}
        for row in self._rows(sql, kind=kind, id=ident, cap=self.cap + 1, pid=user_pid or ""):
            parts.setdefault(row["part"], []).append(row)
        if known is not None and (kind, ident) in known.overrides:
            parts["override"] = [{"a": known.overrides[kind, ident]}]
        person = self._person(kind, ident, parts, listing)
        if person is not None:
            self._fill_all([person], listing)
        return person

    def resolve_many(self, asks: list[tuple[str, str]]) -> list[Person | None]:
        """``resolve(kind, ident, listing=False)`` of each identifier, every statement read
        once for all of them: concurrent profiles answered together. Needs the site's
        decisions kept (else one resolution each). A user id anchors its own person:
        without a listing its owners decide nothing, and are not read."""
        known = self.decisions
        if known is None:
            return [self.resolve(kind, ident, listing=False) for kind, ident in asks]
        asked = sorted({(kind, ident) for kind, ident in asks
                        if kind != "user" and (kind, ident) not in known.overrides})
        owners: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if asked and (memory := self._memory(listing=False)):  # SEEN from the links there
            found = memory.links(self.site_id, asked)
            for pair, (_, rows) in found.items():
                if len(rows) < LINKS_EACH:
                    owners[pair] = [{"a": user["user_id"], "c": user["last"]}
                                    for user in _first_users(rows, self.cap + 1)]
            asked = [pair for pair in asked if len(found.get(pair, (0, ()))[1]) >= LINKS_EACH]
        if asked:  # ANCHOR's owner part, for all of them (SEEN has its order and cut)
            for row in self._rows(SEEN, kinds=[k for k, _ in asked], ids=[i for _, i in asked],
                                  cap=self.cap + 1):
                owners.setdefault((row["kind"], row["id"]), []).append(
                    {"a": row["user_id"], "c": row["last"]})
        found = []
        for kind, ident in asks:
            parts = {"owner": owners.get((kind, ident), [])}
            if (kind, ident) in known.overrides:
                parts["override"] = [{"a": known.overrides[kind, ident]}]
            found.append(self._person(kind, ident, parts, listing=False))
        self._fill_all([person for person in found if person is not None], listing=False)
        return found

    def _person(self, kind: str, ident: str, parts: dict[str, list[dict[str, Any]]],
                listing: bool) -> Person | None:
        """The person (after merges) the identifier's anchor rows (``parts``) name."""
        anchor = self._anchor(kind, ident, parts, listing)
        if anchor is None:
            return None
        pid = named = person_id(self.site_id, *anchor)
        if self.decisions is None and kind == "user" and anchor == (kind, ident):
            merges = [{"part": r["part"], "p": r["a"], "k": r["b"], "i": r["c"]}
                      for part in ("into", "member") for r in parts.get(part, [])]
        else:
            merges = self._merges(pid)
        into = [r for r in merges if r["part"] == "into"]
        if into:  # merged into another: theirs are the members
            pid, anchor = into[0]["p"], (into[0]["k"], into[0]["i"])
            merges = self._merges(pid)
        person = Person(pid, *anchor, named=named)
        for row in merges:
            if row["part"] == "member":
                person.merged[row["p"]] = (row["k"], row["i"])
        return person

    def _merges(self, pid: str) -> list[dict[str, Any]]:
        """MERGES' rows for the person: kept, or read."""
        if self.decisions is not None:
            return self.decisions.merges.get(pid, [])
        return self._rows(MERGES, pid=pid)

    def _merged(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of the identifiers whose own person (the one they are before anyone links
        them) an admin merged with another, into it or it into another: kept, or read in
        one statement."""
        own = {person_id(self.site_id, kind, ident): (kind, ident) for kind, ident in pairs
               if kind != "user"}
        if not own:
            return set()
        if self.decisions is not None:
            return {pair for pid, pair in own.items() if self.decisions.merges.get(pid)}
        return {own[row["p"]] for row in self._rows(MERGED_WITH, pids=sorted(own))}

    def _anchor(self, kind: str, ident: str, parts: dict[str, list[dict[str, Any]]],
                listing: bool) -> tuple[str, str] | None:
        if parts.get("override"):
            return kind, ident
        owners = parts.get("owner", [])
        if kind == "user":
            return (kind, ident) if owners or not listing or self._seen(kind, ident) else None
        if len(owners) > self.cap:  # it stopped linking: nobody's now (read: cap + 1)
            return None
        if owners:  # the latest link among the first `cap` users (ANCHOR orders them)
            owner = max(owners, key=lambda r: (r["c"], r["a"]))["a"]
            if owner.startswith("\0"):  # its last owner was erased: nobody's, as far as we say
                return None
            return "user", owner
        return (kind, ident) if not listing or self._seen(kind, ident) else None

    def _seen(self, kind: str, ident: str) -> bool:
        where, params = row_condition_for(kind, ident)
        return bool(self._rows(
            f"SELECT 1 FROM tagwerk.events WHERE site_id = {{site:String}} AND {where} LIMIT 1",
            **params))

    # -- a person's identifiers and spans -------------------------------------------------------

    def _fill_all(self, persons: list[Person], listing: bool) -> None:
        """Each person's user ids, spans and identifiers, the identifiers they hold and
        those identifiers' links read once for all of them."""
        plans = []
        for person in persons:
            anchors = dict(person.merged)
            anchors[person.person_id] = (person.kind, person.id)
            person.users = sorted(ident for kind, ident in anchors.values() if kind == "user")
            user_persons = sorted(pid for pid, (kind, _) in anchors.items() if kind == "user")
            others = sorted(anchor for anchor in anchors.values() if anchor[0] != "user")
            plans.append((person, user_persons, others))
        wanted = sorted({pid for _, user_persons, _ in plans for pid in user_persons})
        held: dict[str, set[tuple[str, str]]] = {}
        read = None  # the links of what they hold and of their other anchors, if read here
        if memory := self._memory(listing):  # both in one lookup
            found, read = memory.held_and_links(
                self.site_id, wanted, sorted({pair for *_, others in plans for pair in others}))
            held = {pid: set(pairs) for pid, pairs in found.items()}
        else:
            for row in self._rows(HELD, pids=wanted) if wanted else ():
                held.setdefault(row["p"], set()).add((row["k"], row["i"]))
        pairs_of = [sorted({*others, *(pair for pid in user_persons for pair in held.get(pid, ()))})
                    for _, user_persons, others in plans]
        users_seen, changes, overrides, seen, stopped = self._holders(
            sorted({pair for pairs in pairs_of for pair in pairs}),
            sorted({user for person in persons for user in person.users}), listing, read)
        if len(persons) > 1 and len(changes) >= MAX_LINKS:  # cut for all: halves, until a
            half = len(persons) // 2  # person with that many owner changes is alone
            self._fill_all(persons[:half], listing)
            self._fill_all(persons[half:], listing)
            return
        claimed = self._merged(sorted({(row["kind"], row["id"]) for row in changes}))
        changed: dict[tuple[str, str], list[dict]] = {}
        for row in changes:
            changed.setdefault((row["kind"], row["id"]), []).append(
                {"user_id": row["user_id"], "ts": row["ts"]})
        for (person, _, others), pairs in zip(plans, pairs_of, strict=True):
            links: dict[tuple[str, str], list[dict]] = {pair: [] for pair in others}
            for pair in pairs:
                if pair in changed or pair in users_seen:
                    links[pair] = list(changed.get(pair, ()))
            self._complete(person, links, users_seen, overrides, dict(seen), stopped, claimed,
                           listing)

    def _complete(self, person: Person, links: dict[tuple[str, str], list[dict]],
                  users_seen: dict[tuple[str, str], list[dict]],
                  overrides: dict[tuple[str, str], str],
                  seen: dict[tuple[str, str], tuple[str, str]],
                  stopped: dict[tuple[str, str], str], claimed: set[tuple[str, str]],
                  listing: bool) -> None:
        """The person's spans and identifiers from the owner changes of what they hold."""
        members = person.members
        # Owners changed more often than we read: the spans would be wrong, so say so.
        person.truncated = sum(map(len, links.values())) >= MAX_LINKS
        for pair in sorted(links):
            spans = self._spans(pair, sorted(links[pair], key=lambda r: (r["ts"], r["user_id"])),
                                overrides.get(pair), members, stopped.get(pair, END),
                                pair in claimed)
            person.spans.extend(spans)
            mine = [r for r in users_seen.get(pair, [])
                    if person_id(self.site_id, "user", r["user_id"]) in members]
            if spans and mine:
                seen[pair] = (min(r["ts"] for r in mine), max(r["last"] for r in mine))
        listed = [("user", u) for u in person.users]
        listed += sorted({(s.kind, s.id) for s in person.spans})
        if listing:
            seen.update(self._seen_in_events([pair for pair in listed if pair not in seen]))
        person.identifiers = [
            {"kind": kind, "id": ident, "first_seen": seen.get((kind, ident), ("", ""))[0] or None,
             "last_seen": seen.get((kind, ident), ("", ""))[1] or None}
            for kind, ident in listed
        ]

    def _holders(self, pairs: list[tuple[str, str]], users: list[str], listing: bool,
                 read: dict[tuple[str, str], tuple[int, list[dict]]] | None = None) -> tuple[
            dict[tuple[str, str], list[dict]], list[dict], dict[tuple[str, str], str],
            dict[tuple[str, str], tuple[str, str]], dict[tuple[str, str], str]]:
        """For the identifiers: their first ``cap`` users by first link, each with their
        first and last link ('seen'); the moments they changed hands among those users, in
        order, at most MAX_LINKS in all; their splits; the user ids' first and last links
        (for a ``listing`` only); and when those linked to more users than ``cap`` stopped
        linking. ``read``: their links, read already from memory."""
        by_pair: dict[tuple[str, str], list[dict]] = {}
        asked = set(pairs)
        known = self.decisions
        overrides: dict[tuple[str, str], str] = {} if known is None else {
            pair: known.overrides[pair] for pair in pairs if pair in known.overrides}
        seen: dict[tuple[str, str], tuple[str, str]] = {}
        sql = " UNION ALL ".join((LINKS_OF, *(() if known else (LINKS_OVERRIDES,)),
                                  *((LINKS_USERS,) if listing else ())))
        if memory := self._memory(listing):  # LINKS_OF alone
            if read is None:
                read = memory.links(self.site_id, pairs)
            rows = [row for pair in pairs for row in read.get(pair, (0, []))[1]]
        else:
            rows = self._rows(sql, kinds=[k for k, _ in pairs], ids=[i for _, i in pairs],
                              users=users, each=LINKS_EACH)
        for row in rows:
            pair = (row["kind"], row["id"])
            if row["part"] == "link":
                if pair in asked:  # (AMONG may find others)
                    by_pair.setdefault(pair, []).append(row)
            elif row["part"] == "override":
                overrides[pair] = row["user_id"]
            else:  # "user": a user id's first and last link
                seen[pair] = (row["ts"], row["last"])
        users_seen: dict[tuple[str, str], list[dict]] = {}
        changes: list[dict] = []
        many = sorted(pair for pair, rows in by_pair.items() if len(rows) >= LINKS_EACH)
        for pair in sorted(set(by_pair) - set(many)):
            rows = sorted(by_pair[pair], key=lambda r: (r["ts"], r["user_id"]))
            users_seen[pair] = _first_users(rows, self.cap + 1)
            allowed = {user["user_id"] for user in users_seen[pair][:self.cap]}
            previous = ""
            for row in rows:
                if row["user_id"] in allowed and row["user_id"] != previous:
                    changes.append(row)
                    previous = row["user_id"]
        if many:
            kinds, ids = [k for k, _ in many], [i for _, i in many]
            among = set(many)
            for row in self._rows(SEEN, kinds=kinds, ids=ids, cap=self.cap + 1):
                if (row["kind"], row["id"]) in among:
                    users_seen.setdefault((row["kind"], row["id"]), []).append(row)
            for pair in many:  # (SEEN's order: by first link)
                users_seen[pair] = sorted(users_seen.get(pair, []),
                                          key=lambda r: (r["ts"], r["user_id"]))
            allowed = [f"{k}:{i}:{r['user_id']}" for (k, i) in many
                       for r in users_seen.get((k, i), [])[:self.cap]]
            changes += self._rows(CHANGES, kinds=kinds, ids=ids, allowed=allowed,
                                  most=MAX_LINKS)
            changes.sort(key=lambda r: (r["kind"], r["id"], r["ts"], r["user_id"]))
        # An identifier linked to more users than the cap stopped linking at the first link
        # of the one past it: from then on its rows are nobody's.
        stopped = {pair: users[self.cap]["ts"] for pair, users in users_seen.items()
                   if len(users) > self.cap}
        users_seen = {pair: users[:self.cap] for pair, users in users_seen.items()}
        return users_seen, changes[:MAX_LINKS], overrides, seen, stopped

    def _spans(self, pair: tuple[str, str], links: list[dict], override: str | None,
               members: set[str], until: str = END, claimed: bool = False) -> list[Span]:
        """When the identifier was the person's: from its splits, or from its owner changes
        up to ``until`` (when it stopped linking, past the cap: its rows after are nobody's,
        not the last allowed owner's). Its rows before its first link go to its first owner,
        unless ``claimed``: an admin merged its own person with another (either way), and
        they stay that merged person's."""
        kind, ident = pair
        if override is not None:
            return [Span(kind, ident, BEGINNING, END)] if override in members else []
        # (`links` holds owner changes among the first `cap` users only: see CHANGES)
        if not links:  # an anchor nobody linked: all its rows are the person's
            own = person_id(self.site_id, kind, ident)
            return [Span(kind, ident, BEGINNING, END)] if own in members else []
        spans: list[Span] = []
        if claimed and person_id(self.site_id, kind, ident) in members:
            spans.append(Span(kind, ident, BEGINNING, min(links[0]["ts"], until)))
        for index, row in enumerate(links):
            if person_id(self.site_id, "user", row["user_id"]) not in members:
                continue
            start = BEGINNING if index == 0 and not claimed else row["ts"]
            end = min(links[index + 1]["ts"] if index + 1 < len(links) else END, until)
            if start >= end:
                continue
            if spans and spans[-1].end == start:
                spans[-1] = Span(kind, ident, spans[-1].start, end)
            else:
                spans.append(Span(kind, ident, start, end))
        return spans

    def _seen_in_events(
        self, pairs: list[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, str]]:
        found = {}
        for kind, ident in pairs:
            where, params = row_condition_for(kind, ident)
            rows = self._rows(
                f"SELECT min(ts) AS first, max(ts) AS last, count() AS n FROM tagwerk.events "
                f"WHERE site_id = {{site:String}} AND {where}", **params)
            if rows and int(rows[0]["n"]):
                found[(kind, ident)] = (rows[0]["first"], rows[0]["last"])
        return found

    # -- reports ----------------------------------------------------------------------------------

    def overloaded(self, limit: int = 100) -> list[dict[str, Any]]:
        """Identifiers linked to more users than the site allows: they stopped linking."""
        return self._rows(
            "SELECT kind, id, uniqExact(user_id) AS persons, min(ts) AS first_seen, "
            "max(ts) AS last_seen FROM tagwerk.identity_links_by_identifier "
            "WHERE site_id = {site:String} "
            "AND kind != 'user' GROUP BY kind, id HAVING persons > {cap:UInt32} "
            "ORDER BY persons DESC, kind, id LIMIT {limit:UInt32}", cap=self.cap, limit=limit)

    def _memory(self, listing: bool) -> LinkIndex | None:
        """The links in memory, if they serve: only LINKS_OF, HELD and SEEN have a copy
        there, so not for a listing (first and last seen) nor without the decisions kept
        (splits are read with the links then)."""
        return self.links if self.decisions is not None and not listing else None

    def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return self.store.rows(sql, {"site": self.site_id, **params})


def _first_users(rows: list[dict[str, str]], cap: int) -> list[dict[str, str]]:
    """An identifier's first ``cap`` users by first link, each with their first ("ts") and
    last link, from all its links in time order (as SEEN reads them)."""
    linked: dict[str, list[str]] = {}  # user id -> [first link, last link]
    for row in rows:
        linked.setdefault(row["user_id"], [row["ts"], row["ts"]])[1] = row["ts"]
    first = sorted(linked, key=lambda user: (linked[user][0], user))[:cap]
    return [{"user_id": user, "ts": linked[user][0], "last": linked[user][1]}
            for user in first]


def row_condition_for(kind: str, ident: str) -> tuple[str, dict[str, Any]]:
    """SQL (over a table with the events' identifier columns) matching rows naming an
    identifier, with its parameters."""
    if kind == "user":
        return "user_id = {ident:String}", {"ident": ident}
    if kind == "device":
        return "device_id = {ident:String}", {"ident": ident}
    return ("has(mapValues(identifiers), {ident:String}) AND identifiers[{kind:String}] = "
            "{ident:String}", {"kind": kind, "ident": ident})


def rows_of(person: Person, ts: str = "ts", identifiers: bool = True, claims: bool = False
            ) -> tuple[str, dict[str, Any]]:
    """SQL matching the person's rows (over a table with the events' identifier columns):
    rows naming one of their user ids, and rows without a user id naming one of their
    identifiers at a time (``ts``: the column or expression) it was theirs. ``identifiers``:
    whether the table has the ``identifiers`` map (else only device ids count). ``claims``:
    whether it has ``user_verified``; then a row whose user id is a browser's unverified
    claim of someone else's counts as a row without one (it is its device's, as profiles
    file it)."""
    users, devices, others, params = _row_conditions(person, ts, identifiers)
    held = f"{devices} OR {others}" if others else devices
    return f"({users} OR ({_no_user(claims)} AND ({held})))", params


def _no_user(claims: bool) -> str:
    """A row that no user id of its own decides (disjoint from ``rows_of``'s users part)."""
    if not claims:
        return "user_id = ''"
    return "(user_id = '' OR (NOT user_verified AND user_id NOT IN {p_users:Array(String)}))"


def row_parts(person: Person, ts: str = "ts", identifiers: bool = True, claims: bool = False
              ) -> tuple[list[str], dict[str, Any]]:
    """``rows_of``'s condition as disjoint parts, each of which one index can narrow (the
    events' skip indexes on user_id, device_id, identifiers): ClickHouse narrows a
    disjunction of conditions on different indexes poorly (on the 10M bench, 977 of 1,271
    granules for one customer's rows, against 116 for the three parts). A part the person
    has nothing for (no user id, no device, no other identifier) is left out. The same
    parameters serve every part."""
    users, devices, others, params = _row_conditions(person, ts, identifiers)
    parts = [users] if person.users else []
    no_user = _no_user(claims)
    if params["p_dev"]:
        parts.append(f"{no_user} AND {devices}")
    if params["p_id"]:  # (none for a table without identifiers)
        parts.append(f"{no_user} AND {others} AND NOT {devices}")
    return parts, params


def _row_conditions(person: Person, ts: str, identifiers: bool
                    ) -> tuple[str, str, str, dict[str, Any]]:
    """The pieces of ``rows_of``: rows naming a user id; rows naming a device, at its span;
    rows naming another identifier, at its span ("" for a table without ``identifiers``)."""
    devices = [s for s in person.spans if s.kind == "device"]
    others = [s for s in person.spans if s.kind != "device"] if identifiers else []
    params: dict[str, Any] = {
        "p_users": person.users, "p_dev": [s.id for s in devices],
        "p_id": [s.id for s in others],
    }
    by_device = (f"(device_id IN {{p_dev:Array(String)}} AND "
                 f"{_at_spans(devices, 'device_id = i', ts, 'p_dev', params)})")
    by_identifier = (f"(hasAny(mapValues(identifiers), {{p_id:Array(String)}}) AND "
                     f"{_at_spans(others, 'identifiers[k] = i', ts, 'p_id', params)})"
                     ) if identifiers else ""
    return "user_id IN {p_users:Array(String)}", by_device, by_identifier, params


# Spans a row is tested against at once. The engine tests each row against every span of
# an arrayExists, with a copy of the span arrays per row: one device that changed hands
# 10,000 times is 5,000 spans, and its 50,000 rows asked 21 GiB (probe 70: an access
# request and an erasure of that person failed). Spans in chunks of this many, in time
# order, each behind the range of times it covers, test a row against the chunks whose
# range holds it (the engine's AND skips the rest): 0.6 s for those rows.
SPANS_AT_ONCE = 64


def _at_spans(spans: list[Span], match: str, ts: str, name: str, params: dict[str, Any]
              ) -> str:
    """A row at one of ``spans`` (``match``: the row names the span's identifier ``i``, of
    kind ``k``), one chunk of SPANS_AT_ONCE at a time; "0" for no span. Its parameters go
    into ``params`` (named after ``name``)."""
    # Times bind as text and convert in the lambda: a DELETE's mutation re-binds a
    # DateTime64 array parameter as epoch numbers it cannot read back (chDB 26.9).
    start, end = "toDateTime64(s, 3, 'UTC')", "toDateTime64(e, 3, 'UTC')"
    ordered = sorted(spans, key=lambda span: span.start)
    chunks = []
    for n, first in enumerate(range(0, len(ordered), SPANS_AT_ONCE)):
        chunk, key = ordered[first:first + SPANS_AT_ONCE], f"{name}_{n}"
        params.update({
            f"{key}_k": [span.kind for span in chunk], f"{key}_i": [span.id for span in chunk],
            f"{key}_s": [span.start for span in chunk], f"{key}_e": [span.end for span in chunk],
            f"{key}_lo": chunk[0].start, f"{key}_hi": max(span.end for span in chunk)})
        chunks.append(
            f"({ts} >= toDateTime64({{{key}_lo:String}}, 3, 'UTC') AND "
            f"{ts} < toDateTime64({{{key}_hi:String}}, 3, 'UTC') AND "
            f"arrayExists((k, i, s, e) -> {match} AND {ts} >= {start} AND {ts} < {end}, "
            f"{{{key}_k:Array(String)}}, {{{key}_i:Array(String)}}, "
            f"{{{key}_s:Array(String)}}, {{{key}_e:Array(String)}}))")
    return f"({' OR '.join(chunks)})" if chunks else "0"
