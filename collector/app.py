"""The collector's ASGI application, assembled from the route table (``collector/routes.py``):
the ingestion paths are bare ASGI handlers, answered first; everything else, and the
lifespan, goes to Starlette, whose router asks the table's last entry before its 404.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from collector.ingest.fasthttp import IngestProtocol
from collector.routes import FAST, INGEST, ROUTES, UNMATCHED, slash_redirect, taken
from collector.service import Collector
from collector.tag import demo_shoppers, serving
from collector.web import openfiles
from collector.web.http import Hit, error_body, error_response, respond

METHOD_NOT_ALLOWED = error_body("method not allowed")


class App:
    def __init__(self, collector: Collector, rest: Starlette) -> None:
        self.collector, self.rest = collector, rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = INGEST.get(scope["path"]) if scope["type"] == "http" else None
        if methods is None:
            await self.rest(scope, receive, send)
            return
        handler = methods.get(scope["method"])
        if handler is None:
            await respond(send, 405, METHOD_NOT_ALLOWED,
                          headers={"Allow": ", ".join(methods), "Cache-Control": "no-store"})
            return
        await handler(self.collector, Hit(scope, receive), send)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, headers=exc.headers)


def create_app(collector: Collector) -> App:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(collector.start)
        if collector.demo_created and collector.settings.demo_shoppers:
            await demo_shoppers.store(collector)
        try:
            yield
        finally:
            await run_in_threadpool(collector.stop)

    rest = Starlette(routes=ROUTES, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})
    rest.state.collector = collector
    rest.state.tags = serving.TagServer(collector)
    rest.router.redirect_slashes = False  # its Location names the Host: slash_redirect's does not
    rest.router.default = slash_redirect(rest.router.routes,
                                         UNMATCHED.before(rest.router.default))
    collector.containers.taken = taken  # a container's tag path must be left to UNMATCHED
    return App(collector, rest)


def protocol_for(collector: Collector) -> type[IngestProtocol]:
    """The HTTP protocol class uvicorn instantiates per connection: the fast path
    (``collector/ingest/fasthttp.py``) on the table's fast routes, bound to ``collector``;
    the bodies it receives count against the process's budget (bodies are held whole
    here: ``web/inflight.py``); its connections leave file descriptors for the rest
    (``web/openfiles.py``)."""
    return type("IngestProtocol", (IngestProtocol,),
                {"collector": collector, "routes": FAST, "counts_bodies": True,
                 "trusted": collector.settings.networks,
                 "port_connections": openfiles.connection_share()})
