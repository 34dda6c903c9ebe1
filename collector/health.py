"""What operators and orchestrators poll: ``/healthz`` (the process answers), ``/readyz``
(the storage answers too) and ``/metrics`` (Prometheus' text format)."""

from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from collector.service import Collector


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


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")
