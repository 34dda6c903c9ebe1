"""The ingestion route table: one list that feeds both the ASGI app (``INGEST``, in
``collector/app.py``) and the fast path (``FAST``, in ``fasthttp.py``).

A route names an adapter (the wire format; ``asgi.take`` serves it, and with ``fast`` the
fast path too) or an ASGI handler of its own. A new endpoint is one line here, with its
adapter in ``adapters.py``.
"""

from __future__ import annotations

from typing import NamedTuple

from collector.ingest import asgi, consentlog
from collector.ingest.adapters import BATCH, COLLECT, PIXEL_HIT, Adapter
from collector.ingest.asgi import Handler


class Route(NamedTuple):
    path: str
    method: str
    adapter: Adapter | None = None
    handler: Handler | None = None  # a route without an adapter: its own ASGI handler
    # Answered inside the HTTP protocol too (``fasthttp.py``): a query-string adapter's GET,
    # or a body's POST with its Content-Length.
    fast: bool = False


ROUTES = (
    Route("/collect", "POST", COLLECT, fast=True),
    Route("/collect", "OPTIONS", handler=asgi.preflight),
    Route("/p.gif", "GET", PIXEL_HIT, fast=True),
    Route("/p.gif", "HEAD", PIXEL_HIT),
    Route("/api/v1/batch", "POST", BATCH, fast=True),
    Route("/consent", "POST", handler=consentlog.consent),
    Route("/consent", "OPTIONS", handler=asgi.preflight),
)


def asgi_routes(routes: tuple[Route, ...]) -> dict[str, dict[str, Handler]]:
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


def fast_routes(routes: tuple[Route, ...]) -> dict[bytes, dict[bytes, Adapter]]:
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


INGEST = asgi_routes(ROUTES)
FAST = fast_routes(ROUTES)
