"""Who identifiers belong to, kept in memory until one of the person's links changes.

A profile asked again after the person's new hit reads their rows again, but who they are
(their user ids, the identifiers they hold and when) changes only with a new link (a login,
an alias), a merge, a split or an erasure: resolving it again would cost two or three of the
profile's four statements. A resolution is kept (``cache.PersonAnswers``) with the keys of
the links it was read from, as the change feed names new ``identity_links_by_identifier`` rows
(``link:<kind>:<id>``, ``changes.LINK``): the identifier asked for (its first link), the
person's anchors, their user ids among them (a new identifier linked to a user names the
user too) and every identifier they hold or held (a new owner of a shared device names it).
Merges, splits and erasures drop everything: the feed cannot follow them row by row.

A resolution reads no hits (``Graph.resolve_many``: no listing), so a hit leaves it kept.
"""

from __future__ import annotations

from collector.identity.cache import PersonAnswers
from collector.identity.changes import LINK
from collector.identity.graph import BEGINNING, END, Graph, Person
from collector.identity.link_index import LinkIndex
from collector.storage import StorageError


def link_keys(person: Person | None, kind: str, ident: str) -> set[str]:
    """The keys of the links a resolution of ``kind:ident`` was computed from; an answer
    computed from the resolution depends on them too."""
    names = {f"{kind}:{ident}"}
    if person is not None:  # (their user ids are among their anchors)
        names |= {f"{k}:{i}" for k, i in (*person.merged.values(), (person.kind, person.id))}
        names |= {f"{span.kind}:{span.id}" for span in person.spans}
    return {LINK + name for name in names}


def resolve_kept(kept: PersonAnswers, graph: Graph, asks: list[tuple[str, str]],
                 index: LinkIndex | None = None) -> list[Person | None]:
    """``graph.resolve_many(asks)``, each resolution kept until a link it depends on changes
    (blocking), from the links held in memory (``index``) where they are fresh. Kept
    resolutions are shared: callers must not change them."""
    site_id = graph.site_id
    since = kept.begin()
    found: dict[tuple[str, str], Person | None] = {}
    missing = []
    for ask in dict.fromkeys(asks):
        hit, person = kept.get(site_id, ("person", *ask), counted=False)
        if hit:
            found[ask] = person  # type: ignore[assignment]
        else:
            missing.append(ask)
    for ask, person in zip(missing, _resolve(graph, missing, index) if missing else (),
                           strict=True):
        found[ask] = person
        kept.put(site_id, ("person", *ask), person, link_keys(person, *ask), since)
    return [found[ask] for ask in asks]


def sole_owners(kept: PersonAnswers, graph: Graph, pairs: list[tuple[str, str]],
                index: LinkIndex | None = None) -> list[str | None]:
    """For each identifier, the person every hit of it belongs to: a user id's person (after
    merges), the person of another identifier that never changed hands (or nobody linked);
    None for one whose hits are not all one person's: a shared device, a split one, one
    that stopped linking past the cap or whose last owner was erased (nobody's now, which
    is not somebody else: its hits were its owners'). Blocking; resolutions kept as
    ``resolve_kept``'s."""
    whole = [BEGINNING, END]
    found: list[str | None] = []
    for (kind, ident), person in zip(pairs, resolve_kept(kept, graph, pairs, index),
                                     strict=True):
        if person is None:
            found.append(None)
        elif kind == "user":
            found.append(person.person_id)
        else:
            spans = person.spans_by_identifier().get((kind, ident), [])
            held = [[span.start, span.end] for span in spans] == [whole]
            found.append(person.person_id if held else None)
    return found


def _resolve(graph: Graph, asks: list[tuple[str, str]], index: LinkIndex | None
             ) -> list[Person | None]:
    """``graph.resolve_many(asks)``, from the links in memory when they can serve: an ask
    whose own link is newer than the copy is read from the tables at once; a resolution
    that turns out to depend on a newer link (or on a copy replaced meanwhile) again."""
    token = index.begin() if index is not None and graph.decisions is not None else None
    if token is None:
        return graph.resolve_many(asks)
    found: dict[int, Person | None] = {}
    from_copy = [n for n, ask in enumerate(asks)
                 if index.fresh(graph.site_id, link_keys(None, *ask), token)]
    persons: list[Person | None] | None = []
    if from_copy:
        try:
            persons = Graph(graph.store, graph.site, graph.decisions, index).resolve_many(
                [asks[n] for n in from_copy])
        except LookupError:  # a hash collision in the copy: the tables decide for all
            persons = None
        except StorageError:
            # Dropped meanwhile: by this collector's erasure (forget_erased), or by another
            # collector's on the same ClickHouse, which this index hears of only when its
            # feed sees the erasure. The tables answer; their own failure, if the engine
            # fails, is the answer's. (Not "everything stale": under a memory limit that
            # would load the whole copy again.)
            persons = None
    if persons is not None:
        found = {n: person for n, person in zip(from_copy, persons, strict=True)
                 if index.fresh(graph.site_id, link_keys(person, *asks[n]), token)}
    again = [n for n in range(len(asks)) if n not in found]
    if again:
        found.update(zip(again, graph.resolve_many([asks[n] for n in again]), strict=True))
    return [found[n] for n in range(len(asks))]
