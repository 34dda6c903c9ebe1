"""The fast path: uvicorn's httptools protocol, answering the fast routes of the route table
(``collector/routes.py``: ``GET /p.gif``, ``POST /collect``, ``POST /api/v1/batch``) without
the ASGI layer.
It reaches uvicorn's protocol only through ``collector/web/uvicorn_protocol.py``'s hooks
(``take``, ``body_complete``) and helpers (``hold``, ``respond``).

These are the hot paths and their work is small (parse, enrich, append to the spool), so
the ASGI machinery uvicorn runs for every request (a scope, a request-response cycle with
its event, a task, the send messages) cost about as much as a pixel hit itself. Here such a
request is handled in the parser's callbacks, with the steps of any other driver
(``accept.py``, on the route's adapter): the record goes to the spool with a callback, and
the callback writes the answer once the record is fsynced. The ASGI driver (``asgi.py``)
still serves every request this path does not take: ``HEAD``, a body without
``Content-Length`` or larger than allowed, ``Expect: 100-continue``, a request pipelined
behind another; a query-string hit of an unknown site or key (it may need a reload of the
sites, in a thread). A body of an unknown site or key waits for that reload in a task.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from collector.ingest import accept
from collector.ingest.adapters import Adapter
from collector.ingest.answers import PIXEL_HEADERS
from collector.service import Collector
from collector.spool.disk import SpoolError, SpoolFull
from collector.web.http import INTERNAL_ERROR, JSON, Hit, HTTPError
from collector.web.limits import LimitedProtocol
from collector.web.uvicorn_protocol import Pending

log = logging.getLogger("tagwerk.http")


class IngestProtocol(LimitedProtocol):
    """Set ``collector`` and ``routes`` on a subclass (``collector.app.protocol_for``). The
    limits on heads, slow clients and idle connections are LimitedProtocol's
    (``collector/web/limits.py``)."""

    collector: Collector
    routes: dict[bytes, dict[bytes, Adapter]]  # method -> path -> adapter (routes.FAST)

    def server_stopping(self) -> None:
        self.collector.drain()

    def take(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
             expects_continue: bool) -> bool:
        paths = self.routes.get(method)
        if paths is None:
            return False
        # (a fragment is no part of the query: uvicorn's URL parser drops it too)
        path, _, query = target.partition(b"#")[0].partition(b"?")
        adapter = paths.get(path)
        if adapter is None:
            return False
        if not adapter.body_limit:  # the hit is in the query string
            return self._query(adapter, query, headers)
        if expects_continue or not _body_fits(adapter, headers):
            return False
        self.hold(adapter)
        return True  # the body follows: body_complete

    # -- a hit in the query string ----------------------------------------------------------

    def _query(self, adapter: Adapter, query: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        """Take a query-string hit, or return False to leave it to the ASGI path."""
        c = self.collector
        hit = self._hit("GET", query, headers)  # a query adapter's fast route is a GET (routes.py)
        try:
            found = accept.read_now(c, adapter, hit, query)
            if found is None:
                return False  # missing (the ASGI path says so) or unknown: may need a reload
            pending = self.hold(adapter)
            pending.more_body = True  # nothing more to do when the message completes
            self._accept(pending, hit, *found, None)
        except HTTPError as exc:
            self._refuse(self.hold(adapter), exc, None)
        except Exception:
            self._fail(self.hold(adapter))
        return True

    # -- a hit in the body ------------------------------------------------------------------

    def body_complete(self, pending: Pending, headers: list[tuple[bytes, bytes]]) -> None:
        adapter = pending.route
        c = self.collector
        hit = self._hit("POST", b"", headers)  # a body adapter's fast route is a POST (routes.py)
        origin = hit.headers.get("origin")
        try:
            found = accept.read_now(c, adapter, hit, pending.body)
            if found is None:  # missing, or unknown: may need a reload in a thread
                self.event_loop.create_task(self._later(pending, hit, origin))
                return
            pending.body = b""
            self._accept(pending, hit, *found, origin)
        except HTTPError as exc:
            self._refuse(pending, exc, origin)
        except Exception:
            self._fail(pending)

    async def _later(self, pending: Pending, hit: Hit, origin: str | None) -> None:
        """The request read again, waiting for the lookup of its site or key."""
        try:
            site, data = await accept.read(self.collector, pending.route, hit, pending.body)
            pending.body = b""
            self._accept(pending, hit, site, data, origin)
        except HTTPError as exc:
            self._refuse(pending, exc, origin)
        except Exception:
            self._fail(pending)

    # -- shared ---------------------------------------------------------------------------

    def _hit(self, method: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> Hit:
        return Hit({"method": method, "headers": headers, "client": self.peer,
                    "scheme": self.url_scheme, "query_string": query}, _no_body)
    def _accept(
        self, pending: Pending, hit: Hit, site: Any, data: dict[str, Any], origin: str | None
    ) -> None:
        """Accept, spool the record, then answer (at once when there is nothing to spool: the
        site drops these hits), or refuse with a 503 if the disk failed. Raises HTTPError
        when the request is refused or the spool cannot take it."""
        c, adapter = self.collector, pending.route
        record, count, cookie = accept.accept(c, adapter, hit, site, data, origin)
        if not record:
            status, body, media, headers = adapter.accepted(count, origin, cookie)
            self._answer(pending, status, body, media, headers)
            return
        try:  # a partial, not a closure: two objects per hit rather than eight
            c.spool.submit(record, partial(self._stored, pending, count, origin, cookie),
                           self.event_loop)
        except (SpoolFull, SpoolError) as exc:
            raise accept.spool_refusal(exc) from None

    def _stored(
        self, pending: Pending, count: int, origin: str | None, cookie: str | None,
        error: Exception | None,
    ) -> None:
        """The spool's callback: the record is on disk (``error`` None), or failed."""
        adapter = pending.route
        if error is None:
            self.collector.metrics.hits_accepted.inc(adapter.name, by=count)
            status, body, media, headers = adapter.accepted(count, origin, cookie)
            self._answer(pending, status, body, media, headers)
        else:
            self._refuse(pending, accept.spool_refusal(error), origin)  # type: ignore[arg-type]

    def _refuse(self, pending: Pending, exc: HTTPError, origin: str | None) -> None:
        headers = pending.route.refused(self.collector, exc, origin)
        self._answer(pending, exc.status, exc.body(), JSON, headers)

    def _fail(self, pending: Pending) -> None:
        log.exception("fast path: unexpected error")
        pending.keep_alive = False
        self._answer(pending, 500, INTERNAL_ERROR)

    def _answer(
        self, pending: Pending, status: int, body: bytes, media: bytes = JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        head = b"content-type: %s\r\ncontent-length: %d\r\n" % (media, len(body))
        if headers is PIXEL_HEADERS:  # every pixel hit's: encoded once
            head += _PIXEL_HEAD
        elif headers:
            head += _header_lines(headers)
        self.respond(pending, status, head, body)


def _header_lines(headers: dict[str, str]) -> bytes:
    return b"".join(b"%s: %s\r\n" % (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers.items())


_PIXEL_HEAD = _header_lines(PIXEL_HEADERS)


def _body_fits(adapter: Adapter, headers: list[tuple[bytes, bytes]]) -> bool:
    """A body this path can take: its length declared and within the adapter's limit."""
    length = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            return False
    return length is not None and length.isdigit() and int(length) <= adapter.body_limit


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}
