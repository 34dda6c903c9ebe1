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
from collector.identity.graph import Graph, Person


def link_keys(person: Person | None, kind: str, ident: str) -> set[str]:
    """The keys of the links a resolution of ``kind:ident`` was computed from; an answer
    computed from the resolution depends on them too."""
    names = {f"{kind}:{ident}"}
    if person is not None:  # (their user ids are among their anchors)
        names |= {f"{k}:{i}" for k, i in (*person.merged.values(), (person.kind, person.id))}
        names |= {f"{span.kind}:{span.id}" for span in person.spans}
    return {LINK + name for name in names}


def resolve_kept(kept: PersonAnswers, graph: Graph, asks: list[tuple[str, str]]
                 ) -> list[Person | None]:
    """``graph.resolve_many(asks)``, each resolution kept until a link it depends on changes
    (blocking). Kept resolutions are shared: callers must not change them."""
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
    for ask, person in zip(missing, graph.resolve_many(missing) if missing else (),
                           strict=True):
        found[ask] = person
        kept.put(site_id, ("person", *ask), person, link_keys(person, *ask), since)
    return [found[ask] for ask in asks]
