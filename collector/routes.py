"""The collector's route table: every path and method the service answers, in one list.

A new endpoint is a line here; its handler stays in the module of its concern (``ingest/``,
``api/``, ``tag/``, ``health.py``), which declares no path. The list is read in its order,
in three parts:

1. ``Ingest``: the ingestion paths, answered before anything else as bare ASGI handlers
   (the hot paths skip Starlette's request and routing). An entry names an adapter (the
   wire format, ``ingest/adapters.py``, which ``ingest/asgi.py`` serves) or an ASGI handler
   of its own; with ``fast`` it is answered inside uvicorn's protocol too
   (``ingest/fasthttp.py``). :func:`asgi_routes` and :func:`fast_routes` turn these
   entries into both drivers' lookups (``INGEST``, ``FAST``).
2. Starlette's ``Route``: everything else. The first match wins, so where paths overlap
   the order matters; a path matched with another method answers 405 with its ``Allow``,
   and a GET route answers HEAD too.
3. ``Unmatched``, last: asked for a request no route matched, before the JSON 404. A
   container's own tag path is data (any path a site chooses), not a route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from collector import health
from collector.api import container, export, persons, privacy, products, recommend, stream
from collector.ingest import asgi, consentlog
from collector.ingest.adapters import BATCH, COLLECT, PIXEL_HIT, Adapter
from collector.ingest.asgi import Handler
from collector.tag import consent_texts, demo, serving
from collector.web.http import header_safe


class Ingest(NamedTuple):
    path: str
    method: str
    adapter: Adapter | None = None
    handler: Handler | None = None  # an entry without an adapter: its own ASGI handler
    # Answered inside the HTTP protocol too (``fasthttp.py``): a query-string adapter's GET,
    # or a body's POST with its Content-Length.
    fast: bool = False


class Unmatched(NamedTuple):
    """The table's last entry: ``handler`` answers a request of ``methods`` that no route
    matched, or returns None for the 404 (Starlette's router asks it as its default, after
    its 405s and :func:`slash_redirect`, as for any unknown path)."""

    methods: tuple[str, ...]
    handler: Callable[[Request], Awaitable[Response | None]]

    def before(self, not_found: ASGIApp) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["method"] in self.methods:
                response = await self.handler(Request(scope, receive))
                if response is not None:
                    await response(scope, receive, send)
                    return
            await not_found(scope, receive, send)

        return app


def slash_redirect(routes: list[Route], then: ASGIApp) -> ASGIApp:
    """Starlette's trailing-slash redirect, with a Location relative to the host the client
    asked. The router's own (turned off in ``collector/app.py``) names the request's
    ``Host``, which a shared cache would then serve to everyone as a redirect to any host.
    A path no route matches with its last slash toggled goes on to ``then``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["type"] == "http" and path != "/":
            toggled = dict(scope, path=path[:-1] if path.endswith("/") else path + "/")
            if any(route.matches(toggled)[0] is not Match.NONE for route in routes):
                # The path as sent (%2F in an id stays encoded), its slash toggled; a route
                # matched, so it starts with "/" and a route's first letter, never "//".
                sent = scope.get("raw_path") or path.encode()
                location = (sent[:-1] if sent.endswith(b"/") else sent + b"/").decode("latin-1")
                if scope["query_string"]:
                    location += "?" + scope["query_string"].decode("latin-1")
                if location[1:2] not in ("/", "\\") and header_safe(location):
                    await Response(status_code=307, headers={"location": location})(
                        scope, receive, send)
                    return
        await then(scope, receive, send)

    return app


class Identifier(Convertor[str]):
    """A ``kind:id`` or a product id in the path, which may hold "/" (sent as %2F) and any
    other character: ``path`` stops at a line break, which must reach the endpoint to be
    refused there (a 400 naming the parameter, not a 404)."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("identifier", Identifier())


class UInt32(Convertor[int | None]):
    """A number in the path, as a UInt32 (a container version): None when it has more
    significant digits than one can. Starlette's ``int`` calls int() on any number of
    digits, which Python refuses beyond 4300 (a 500 for anyone, before any key is asked);
    any digits match here, so an out-of-range number answers as 2**32 does."""

    regex = "[0-9]+"
    digits = len(str(2**32 - 1))

    def convert(self, value: str) -> int | None:
        significant = value.lstrip("0")
        return int(significant or "0") if len(significant) <= self.digits else None

    def to_string(self, value: int | None) -> str:
        if value is None or not 0 <= value < 2**32:
            raise ValueError("not a UInt32")
        return str(value)


register_url_convertor("uint32", UInt32())

SITE = "/api/v1/sites/{site}"  # the site's keys decide (api/access.py, web/authorization.py)

TABLE: list[Ingest | Route | Unmatched] = [
    # -- ingestion: hits and consent decisions from browsers and servers
    Ingest("/collect", "POST", COLLECT, fast=True),
    Ingest("/collect", "OPTIONS", handler=asgi.preflight),
    Ingest("/p.gif", "GET", PIXEL_HIT, fast=True),
    Ingest("/p.gif", "HEAD", PIXEL_HIT),
    Ingest("/api/v1/batch", "POST", BATCH, fast=True),
    Ingest("/consent", "POST", handler=consentlog.consent),
    Ingest("/consent", "OPTIONS", handler=asgi.preflight),
    # -- operations
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    # -- the container: the admin key
    Route(SITE + "/container/preview", container.preview, methods=["POST"]),
    Route(SITE + "/container", container.container, methods=["GET", "PUT"]),
    Route(SITE + "/container/publish", container.publish, methods=["POST"]),
    Route(SITE + "/container/rollback", container.rollback, methods=["POST"]),
    Route(SITE + "/container/versions", container.versions, methods=["GET"]),
    Route(SITE + "/container/versions/{n:uint32}", container.version, methods=["GET"]),
    # -- the read side and privacy operations. Ids may hold "/" (sent as %2F): the
    # profile's route is tried before the person's.
    Route(SITE + "/persons/{ident:identifier}/profile", persons.profile, methods=["GET"]),
    Route(SITE + "/persons/{ident:identifier}", persons.person, methods=["GET"]),
    Route(SITE + "/identity/merge", persons.merge, methods=["POST"]),
    Route(SITE + "/identity/split", persons.split, methods=["POST"]),
    Route(SITE + "/identity/operations", persons.operations, methods=["GET"]),
    Route(SITE + "/identity/operations/{op_id}/undo", persons.undo, methods=["POST"]),
    Route(SITE + "/identity/overloaded", persons.overloaded, methods=["GET"]),
    Route(SITE + "/privacy/erase", privacy.erase, methods=["POST"]),
    Route(SITE + "/privacy/access", privacy.access, methods=["GET"]),
    Route(SITE + "/export", export.export, methods=["GET"]),
    Route(SITE + "/stream", stream.stream, methods=["GET"]),
    Route(SITE + "/products/top", products.top, methods=["GET"]),
    Route(SITE + "/products/trending", products.trending, methods=["GET"]),
    Route(SITE + "/products/{product_id:identifier}/related", products.related, methods=["GET"]),
    # -- the shop's pages, without a key: the tag, its files, consent texts, product lists
    Route("/t/preview", serving.preview, methods=["GET"]),
    Route("/t/{name}.css", serving.stylesheet, methods=["GET"]),
    Route("/t/{name}.js", serving.tag_js, methods=["GET"]),
    Route("/t/{site}/tm.js", serving.engine_js, methods=["GET"]),
    Route("/t/{site}/consent.json", consent_texts.consent_json, methods=["GET"]),
    Route("/t/{site}/recommend/top", recommend.top, methods=["GET"]),
    Route("/t/{site}/recommend/trending", recommend.trending, methods=["GET"]),
    Route("/t/{site}/recommend/related/{product_id:identifier}", recommend.related,
          methods=["GET"]),
    # -- the demo shop
    Route("/demo", demo.bare, methods=["GET", "HEAD"]),
    Route("/demo/static/{name}", demo.static, methods=["GET", "HEAD"]),
    Route("/demo/api/identity-token", demo.identity_token, methods=["GET"]),
    Route("/demo/{path:path}", demo.shell, methods=["GET", "HEAD"]),
    # -- last: a container's own ``settings.tag_path``, looked up in a table
    Unmatched(("GET", "HEAD"), serving.own_tag_path),
]


def parts(table: list[Ingest | Route | Unmatched]
          ) -> tuple[tuple[Ingest, ...], list[Route], Unmatched]:
    """The table's three parts, checked to be in the order they are answered in."""
    count = sum(isinstance(entry, Ingest) for entry in table)
    ingest = tuple(entry for entry in table[:count] if isinstance(entry, Ingest))
    routes = [entry for entry in table[count:-1] if isinstance(entry, Route)]
    last = table[-1]
    if len(ingest) + len(routes) != len(table) - 1 or not isinstance(last, Unmatched):
        raise ValueError("the route table is ingestion's entries, then the routes, then "
                         "one Unmatched entry, in the order they are answered")
    return ingest, routes, last

INGESTION, ROUTES, UNMATCHED = parts(TABLE)


def asgi_routes(routes: tuple[Ingest, ...]) -> dict[str, dict[str, Handler]]:
    """path -> method -> ASGI handler (methods in the table's order: the ``Allow`` of a 405)."""
    table: dict[str, dict[str, Handler]] = {}
    handlers: dict[int, Handler] = {}  # one handler per adapter
    for route in routes:
        if route.adapter is not None:
            handler = handlers.setdefault(id(route.adapter), asgi.handler(route.adapter))
        elif route.handler is not None:
            handler = route.handler
        else:
            raise ValueError(f"route {route.method} {route.path} has no adapter or handler")
        table.setdefault(route.path, {})[route.method] = handler
    return table


def fast_routes(routes: tuple[Ingest, ...]) -> dict[bytes, dict[bytes, Adapter]]:
    """method -> path -> adapter, as the HTTP parser gives them (bytes)."""
    table: dict[bytes, dict[bytes, Adapter]] = {}
    for route in routes:
        if route.fast:
            if route.adapter is None or route.method != ("POST" if route.adapter.body_limit
                                                           else "GET"):
                raise ValueError(f"the fast path takes an adapter's GET (hit in the query) or "
                                 f"POST (in the body), not {route.method} {route.path}")
            table.setdefault(route.method.encode(), {})[route.path.encode()] = route.adapter
    return table


INGEST = asgi_routes(INGESTION)  # the ASGI app's (collector/app.py)
FAST = fast_routes(INGESTION)  # the fast path's (collector/app.py protocol_for)


def taken(path: str, table: list[Ingest | Route | Unmatched] = TABLE) -> str | None:
    """The entry answering ``path`` before the table's last one could, as its methods and
    pattern (``"GET, HEAD /t/{site}/tm.js"``), or None: a path free for a container's own
    tag. Any method counts (another one answers 405), and so does a route matching the path
    with a trailing slash toggled (:func:`slash_redirect` sends it there). The patterns are
    matched by Starlette, path convertors included, as the router does."""
    ingest, routes, _ = parts(table)
    methods = sorted(entry.method for entry in ingest if entry.path == path)
    if methods:
        return f"{', '.join(methods)} {path}"
    toggled = path.removesuffix("/") if path.endswith("/") else path + "/"
    for candidate in (path,) if path == "/" else (path, toggled):
        scope = {"type": "http", "path": candidate, "method": "GET", "root_path": ""}
        for route in routes:
            if route.matches(scope)[0] is not Match.NONE:
                return f"{', '.join(sorted(route.methods or ()))} {route.path}"
    return None
