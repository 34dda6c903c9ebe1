"""The collector's ASGI application.

The ingestion paths are bare ASGI handlers, from their route table
(``collector/ingest/routes.py``); everything else, and the lifespan, goes to Starlette.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from collector.api import routes as api_routes
from collector.ingest.routes import INGEST
from collector.service import Collector
from collector.tag import consent_texts, container_api, demo, serving
from collector.web.http import Hit, error_body, respond

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
                          headers={"Allow": ", ".join(methods)})
            return
        await handler(self.collector, Hit(scope, receive), send)


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    if await run_in_threadpool(collector.ready):
        return _json({"status": "ready"})
    return _json({"status": "storage unavailable"}, 503)


async def metrics(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    text = await run_in_threadpool(collector.metrics.render)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return Response(error_body(exc.detail), exc.status_code, exc.headers,
                    media_type="application/json")


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def create_app(collector: Collector) -> App:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(collector.start)
        try:
            yield
        finally:
            await run_in_threadpool(collector.stop)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *container_api.ROUTES,
        *api_routes.ROUTES,
        *consent_texts.ROUTES,
        *serving.ROUTES,
        *demo.ROUTES,
    ]
    rest = Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})
    rest.state.collector = collector
    rest.state.tags = serving.TagServer(collector)
    # A container's own tag path is looked up when no route matched (see TagServer.fallback).
    rest.router.default = rest.state.tags.fallback(rest.router.default)
    return App(collector, rest)
