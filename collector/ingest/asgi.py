"""The ASGI driver: an adapter's requests as bare ASGI handlers (``collector/web/http.py``'s
``Hit`` and ``respond``, no Starlette request or response). It serves every ingestion
request, on the test client and behind any ASGI server, and under uvicorn those the fast
path (``fasthttp.py``) leaves to it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Send

from collector.ingest import accept
from collector.ingest.adapters import Adapter
from collector.ingest.answers import ORIGIN_NOT_ALLOWED, cors_headers
from collector.service import Collector
from collector.web.http import Hit, HTTPError, header_safe, respond

Handler = Callable[[Collector, Hit, Send], Awaitable[None]]


async def take(adapter: Adapter, c: Collector, hit: Hit, send: Send) -> None:
    """Read, accept, spool and answer one request of ``adapter``'s format."""
    head = hit.method == "HEAD"
    origin = hit.headers.get("origin")
    try:
        site, data = await accept.read(c, adapter, hit)
        record, count, cookie = accept.accept(c, adapter, hit, site, data, origin)
        if record:
            await accept.spool(c, record)
            c.metrics.hits_accepted.inc(adapter.name, by=count)
    except HTTPError as exc:
        await respond(send, exc.status, exc.body(), headers=adapter.refused(c, exc, origin),
                      head=head)
        return
    status, body, media, headers = adapter.accepted(count, origin, cookie)
    await respond(send, status, body, media, headers, head=head)


def handler(adapter: Adapter) -> Handler:
    async def handle(c: Collector, hit: Hit, send: Send) -> None:
        await take(adapter, c, hit, send)

    handle.__name__ = handle.__qualname__ = adapter.name
    return handle


async def preflight(c: Collector, hit: Hit, send: Send) -> None:
    """CORS preflight of a browser's POST: the site is in the body, not sent yet, so any
    site's origin passes here and the POST itself is checked against its own site."""
    origin = hit.headers.get("origin", "")
    if origin and not header_safe(origin):
        await respond(send, 400, accept.bad_origin().body())
        return
    if not origin or not c.sites.any_allows_origin(origin):
        await respond(send, 403, ORIGIN_NOT_ALLOWED)
        return
    await respond(send, 204, media=b"text/plain", headers={
        **cors_headers(origin),
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "86400",
    })
