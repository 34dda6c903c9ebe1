"""The identity graph over HTTP.

    GET  {site}/persons/{kind}:{id}                 the person (read key); 404 when unknown
    GET  {site}/persons/{kind}:{id}/profile         what they viewed, bought, like (read key)
    POST {site}/identity/merge    {"from": "kind:id", "into": "kind:id"}      (admin key)
    POST {site}/identity/split    {"id": "kind:id"}                            (admin key)
    POST {site}/identity/operations/{op_id}/undo                              (admin key)
    GET  {site}/identity/operations?limit=50        the audit trail           (admin key)
    GET  {site}/identity/overloaded?limit=100       identifiers that stopped linking (admin)
"""

from __future__ import annotations

import uuid
from urllib.parse import unquote

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collector.api import body, query
from collector.api.access import ADMIN, READ, ApiError, json_response, keyed
from collector.identifiers import IdentifierError, parse
from collector.identity import profile as profiles
from collector.identity.graph import Graph, Person
from collector.identity.operations import OperationError, Operations
from collector.identity.resolutions import link_keys, resolve_kept
from collector.service import Collector
from collector.sites import Site
from collector.web.batches import Busy


def identifier(site: Site, text: object, field: str) -> tuple[str, str]:
    """``kind:id`` as the site knows kinds, or a 400 naming ``field``."""
    if not isinstance(text, str):
        raise ApiError(400, f"{field!r} must be a string kind:id", field)
    try:
        return parse(text, site.identifier_kinds, field)
    except IdentifierError as exc:
        raise ApiError(400, str(exc), field) from None


def actor(site: Site) -> str:
    """Who did it, for the audit trail: the admin key's fingerprint (never the key)."""
    return f"admin:{site.admin_key_hash[:12]}"


async def _operate(collector: Collector, call, *args):  # type: ignore[no-untyped-def]
    try:
        return await run_in_threadpool(call, *args)
    except OperationError as exc:
        raise ApiError(exc.status, str(exc), exc.field) from None
    finally:
        collector.identities_changed()


@keyed(READ)
async def person(request: Request, collector: Collector, site: Site) -> Response:
    query.params(request, ())
    return await _person(collector, site, query.path_text(request, "ident", 300))


async def _person(collector: Collector, site: Site, text: str) -> Response:
    kind, ident = identifier(site, text, "ident")
    found = await run_in_threadpool(_listed, collector, site, kind, ident)
    if found is None:
        raise ApiError(404, f"nobody is known by {kind}:{ident[:64]} on this site", "ident")
    ops = await run_in_threadpool(_merge_ops, collector, site, sorted(found.merged))
    return json_response(found.as_dict(ops))


@keyed(READ)
async def profile(request: Request, collector: Collector, site: Site) -> Response:
    """404 both for nobody and for a person without personalization consent: the answer
    never tells which. Kept in memory until the person has a new hit (identity/cache.py)."""
    query.params(request, ())
    text = query.path_text(request, "ident", 300)
    raw = request.scope.get("raw_path") or b"/profile"
    if unquote(raw.rsplit(b"/", 1)[-1].decode("latin-1")) != "profile":
        # The route matched the decoded path: "/profile" was the end of an id, its slash
        # sent as %2F (ids may hold "/"), so the person is asked for, not a profile.
        return await _person(collector, site, f"{text}/profile")
    kind, ident = identifier(site, text, "ident")

    kept = collector.person_answers
    hit, answer = kept.get(site.site_id, ("profile", kind, ident))
    if not hit:
        try:
            answer = await collector.batches.ask(
                ("profile", site.site_id), (kind, ident),
                lambda asks: read_profiles(collector, site, asks))
        except Busy:
            raise ApiError(503, "too many profiles are being read for this site at once; "
                           "retry shortly", headers={"Retry-After": "1"}) from None
    if answer is None:
        raise ApiError(404, f"no profile for {kind}:{ident[:64]}: nobody known by it, or no "
                       "hits with personalization consent", "ident")
    return json_response(answer)


def read_profiles(collector: Collector, site: Site, asks: list[tuple[str, str]]
                  ) -> list[bytes | None]:
    """The profiles (as JSON, None for nobody) of the identifiers, read together and kept
    (blocking): concurrent cold profiles cost about the statements of one. One kept while
    its ask waited for this batch (the batch before read it) is not read again."""
    kept = collector.person_answers
    since = kept.begin()
    bodies: dict[tuple[str, str], bytes | None] = {}
    for ask in asks:
        hit, body = kept.get(site.site_id, ("profile", *ask), counted=False)
        if hit:
            bodies[ask] = body  # type: ignore[assignment]
    unread = [ask for ask in dict.fromkeys(asks) if ask not in bodies]
    graph = Graph(collector.store, site, kept.decisions(collector.store, site.site_id))
    persons = resolve_kept(kept, graph, unread, collector.link_index) if unread else []
    found = [person for person in persons if person is not None]
    answers = iter(profiles.profiles_and_keys(collector.store, site.site_id, found,
                                              collector.link_index))
    for (kind, ident), person in zip(unread, persons, strict=True):
        answer, keys = next(answers) if person is not None else (None, set())
        body = None if answer is None else orjson.dumps(answer)  # kept small, as JSON
        keys |= {f"{kind}:{ident}", *link_keys(person, kind, ident)}
        kept.put(site.site_id, ("profile", kind, ident), body, keys, since)
        bodies[(kind, ident)] = body
    return [bodies[ask] for ask in asks]


def _listed(collector: Collector, site: Site, kind: str, ident: str) -> Person | None:
    """The person with their identifiers listed (blocking), the site's merges and splits
    kept (``PersonAnswers.decisions``): no statement of theirs."""
    decisions = collector.person_answers.decisions(collector.store, site.site_id)
    return Graph(collector.store, site, decisions).resolve(kind, ident)


def _merge_ops(collector: Collector, site: Site, persons: list[str]) -> dict[str, str]:
    if not persons:
        return {}
    rows = collector.store.rows(
        "SELECT person_id, toString(op_id) AS op_id FROM tagwerk.identity_merges FINAL "
        "WHERE site_id = {site:String} AND person_id IN {pids:Array(String)}",
        {"site": site.site_id, "pids": persons})
    return {row["person_id"]: row["op_id"] for row in rows}


@keyed(ADMIN)
async def merge(request: Request, collector: Collector, site: Site) -> Response:
    query.params(request, ())
    data = await body.json_object(request, ("from", "into"), ("from", "into"))
    source = identifier(site, data["from"], "from")
    target = identifier(site, data["into"], "into")
    ops = Operations(collector.store, site)
    return json_response(await _operate(collector, ops.merge, source, target, actor(site)), 201)


@keyed(ADMIN)
async def split(request: Request, collector: Collector, site: Site) -> Response:
    query.params(request, ())
    data = await body.json_object(request, ("id",), ("id",))
    ident = identifier(site, data["id"], "id")
    ops = Operations(collector.store, site)
    return json_response(await _operate(collector, ops.split, ident, actor(site)), 201)


@keyed(ADMIN)
async def undo(request: Request, collector: Collector, site: Site) -> Response:
    query.params(request, ())
    text = query.path_text(request, "op_id", 64)
    try:
        op_id = str(uuid.UUID(text))
    except ValueError:
        raise ApiError(400, "'op_id' must be an operation id (a UUID)", "op_id") from None
    ops = Operations(collector.store, site)
    return json_response(await _operate(collector, ops.undo, op_id, actor(site)), 201)


@keyed(ADMIN)
async def operations(request: Request, collector: Collector, site: Site) -> Response:
    values = query.params(request, ("limit",))
    limit = query.integer(values, "limit", 50, 1, 1000)
    ops = Operations(collector.store, site)
    return json_response({"operations": await run_in_threadpool(ops.history, limit)})


@keyed(ADMIN)
async def overloaded(request: Request, collector: Collector, site: Site) -> Response:
    values = query.params(request, ("limit",))
    limit = query.integer(values, "limit", 100, 1, 1000)
    graph = Graph(collector.store, site)
    return json_response({"max_persons": site.identity_max_persons,
                          "identifiers": await run_in_threadpool(graph.overloaded, limit)})
