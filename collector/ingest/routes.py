"""Ingestion's lookups, from its entries of the collector's route table
(``collector/routes.py``, ``Ingest``): ``INGEST`` for the ASGI app (``collector/app.py``)
and ``FAST`` for the fast path (``fasthttp.py``), both from the same entries.
"""

from __future__ import annotations

from collector.ingest import asgi
from collector.ingest.adapters import Adapter
from collector.ingest.asgi import Handler
from collector.routes import INGESTION, Ingest


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


INGEST = asgi_routes(INGESTION)
FAST = fast_routes(INGESTION)
