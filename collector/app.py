"""The collector's ASGI application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from collector import ingest
from collector.http import json_response
from collector.service import Collector


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    if await run_in_threadpool(collector.ready):
        return json_response({"status": "ready"})
    return json_response({"status": "storage unavailable"}, 503)


async def metrics(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    text = await run_in_threadpool(collector.metrics.render)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"error": exc.detail}, exc.status_code, exc.headers)


class HotPaths:
    """Sends the busiest paths straight to their bare ASGI apps, everything else (and the
    lifespan) to Starlette. Routing and middleware would otherwise cost ~10% per hit."""

    def __init__(self, app: Starlette, paths: dict[str, ASGIApp]) -> None:
        self.app, self.paths = app, paths
        self.state = {"collector": app.state.collector}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (handler := self.paths.get(scope["path"])):
            if scope["method"] not in ("GET", "HEAD"):
                handler = _method_not_allowed
            scope["app_state"] = self.state
            await handler(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _method_not_allowed(scope: Scope, receive: Receive, send: Send) -> None:
    response = json_response({"error": "use GET"}, 405, {"Allow": "GET, HEAD"})
    await response(scope, receive, send)


def create_app(collector: Collector) -> HotPaths:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(collector.start)
        try:
            yield
        finally:
            await run_in_threadpool(collector.stop)

    routes = [
        Route("/collect", ingest.collect, methods=["POST"]),
        Route("/collect", ingest.collect_preflight, methods=["OPTIONS"]),
        Route("/api/v1/batch", ingest.batch, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.collector = collector
    return HotPaths(app, {"/p.gif": ingest.pixel})
