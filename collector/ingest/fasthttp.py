"""The fast path: uvicorn's httptools protocol, answering the fast routes of ``routes.py``
(``GET /p.gif``, ``POST /collect``, ``POST /api/v1/batch``) without the ASGI layer.
Ingestion's only module that touches uvicorn's internals: ``UVICORN_INTERNALS`` lists them,
and ``tests/test_uvicorn_compat.py`` fails, naming what changed, on a uvicorn without them.

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
from collector.ingest.routes import FAST
from collector.service import Collector
from collector.spool.disk import SpoolError, SpoolFull
from collector.web.http import INTERNAL_ERROR, JSON, Hit, HTTPError, decode_body
from collector.web.limits import LimitedProtocol

log = logging.getLogger("tagwerk.http")

# What this module relies on in uvicorn's HttpToolsProtocol beyond its public use as an
# asyncio protocol (checked by tests/test_uvicorn_compat.py): the parser callbacks it
# overrides and calls, and the attributes it reads or sets. (Its base, web/limits.py, says
# what that relies on; the answer's first lines come from there.)
UVICORN_INTERNALS = {
    "methods": ("on_message_begin", "on_headers_complete", "on_body", "on_message_complete",
                "on_response_complete"),
    # set by uvicorn's protocol: in __init__, connection_made or on_message_begin
    "attributes": ("parser", "url", "headers", "expect_100_continue", "scope", "cycle",
                   "transport", "server_state", "loop", "client", "scheme"),
    # cycle attributes uvicorn's connection code reads or writes (``_Pending`` has them)
    "cycle": ("keep_alive", "response_complete", "disconnected", "more_body",
              "message_event"),
}


class _Ignore:
    def set(self) -> None:
        pass


class _Pending:
    """Stands in for uvicorn's RequestResponseCycle while a request of the fast path is
    read or waits for the spool: the attributes uvicorn's connection code reads or writes
    on ``self.cycle``, the route's adapter and the body being read."""

    __slots__ = ("keep_alive", "response_complete", "disconnected", "more_body", "body",
                 "adapter")
    message_event = _Ignore()

    def __init__(self, keep_alive: bool, adapter: Adapter) -> None:
        self.keep_alive = keep_alive
        self.response_complete = self.disconnected = False
        self.more_body, self.body = False, b""
        self.adapter = adapter


class IngestProtocol(LimitedProtocol):
    """Set ``collector`` on a subclass (see :func:`protocol_for`). The limits on heads,
    slow clients and idle connections are LimitedProtocol's (``collector/web/limits.py``)."""

    collector: Collector

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; the fast path needs none, so it is built in
        # on_headers_complete only when the request goes the ASGI way.
        self._head_begins()
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        self._head_ends()
        if self.cycle is None or self.cycle.response_complete:
            paths = FAST.get(self.parser.get_method())
            if paths is not None:
                path, _, query = self.url.partition(b"?")
                adapter = paths.get(path)
                if adapter is not None:
                    if not adapter.body_limit:  # the hit is in the query string
                        if self._query(adapter, query):
                            return
                    elif self._body_fits(adapter):
                        self.cycle = _Pending(  # type: ignore[assignment]
                            self.parser.should_keep_alive(), adapter)
                        return  # the body follows: on_body, on_message_complete
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if isinstance(self.cycle, _Pending):
            if not self.cycle.more_body:  # a body being read (a GET's body is ignored)
                self.cycle.body += body  # at most Content-Length: httptools holds to it
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_ends()
        pending = self.cycle
        if not isinstance(pending, _Pending):
            super().on_message_complete()
        elif not pending.response_complete and not pending.more_body:
            pending.more_body = True  # read: from here on it waits for its answer
            self._body(pending)

    # -- a hit in the query string ----------------------------------------------------------

    def _query(self, adapter: Adapter, query: bytes) -> bool:
        """Take a query-string hit, or return False to leave it to the ASGI path."""
        c = self.collector
        keep_alive = self.parser.should_keep_alive()
        hit = self._hit("GET", query)  # a query adapter's fast route is a GET (routes.py)
        try:
            site = c.sites.by_write_key(accept.write_key(hit)) if adapter.keyed else None
            if adapter.head_checks:
                adapter.check_head(hit)
            data = adapter.parse(query)
            if not adapter.keyed:
                site = accept.site_now(c, data)
            if site is None:
                return False  # missing (the ASGI path says so) or unknown: may need a reload
            # From here this request owns the connection until it is answered; requests
            # pipelined behind it wait in uvicorn's queue.
            self.cycle = pending = _Pending(keep_alive, adapter)  # type: ignore[assignment]
            pending.more_body = True  # nothing more to do in on_message_complete
            self._accept(pending, hit, site, data, None)
        except HTTPError as exc:
            self.cycle = pending = _Pending(keep_alive, adapter)  # type: ignore[assignment]
            self._refuse(pending, exc, None)
        except Exception:
            self.cycle = pending = _Pending(False, adapter)  # type: ignore[assignment]
            self._fail(pending)
        return True

    # -- a hit in the body ------------------------------------------------------------------

    def _body_fits(self, adapter: Adapter) -> bool:
        """A body this path can take: its length declared and within the adapter's limit."""
        if self.expect_100_continue:
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return False
        return length is not None and length.isdigit() and int(length) <= adapter.body_limit

    def _body(self, pending: _Pending) -> None:
        adapter = pending.adapter
        c = self.collector
        hit = self._hit("POST", b"")  # a body adapter's fast route is a POST (routes.py)
        origin = hit.headers.get("origin")
        try:
            site = c.sites.by_write_key(accept.write_key(hit)) if adapter.keyed else None
            if adapter.keyed and site is None:  # unknown key: may need a reload in a thread
                self.loop.create_task(self._later(pending, hit, origin))
                return
            if adapter.head_checks:
                adapter.check_head(hit)
            data = adapter.parse(decode_body(hit.headers, pending.body, adapter.body_limit))
            if site is None:
                site = accept.site_now(c, data)
                if site is None:  # missing, or unknown: may need a reload in a thread
                    self.loop.create_task(self._later(pending, hit, origin))
                    return
            pending.body = b""
            self._accept(pending, hit, site, data, origin)
        except HTTPError as exc:
            self._refuse(pending, exc, origin)
        except Exception:
            self._fail(pending)

    async def _later(self, pending: _Pending, hit: Hit, origin: str | None) -> None:
        """The request read again, waiting for the lookup of its site or key."""
        try:
            site, data = await accept.read(self.collector, pending.adapter, hit, pending.body)
            pending.body = b""
            self._accept(pending, hit, site, data, origin)
        except HTTPError as exc:
            self._refuse(pending, exc, origin)
        except Exception:
            self._fail(pending)

    # -- shared ---------------------------------------------------------------------------

    def _hit(self, method: str, query: bytes) -> Hit:
        return Hit({"method": method, "headers": self.headers, "client": self.client,
                    "scheme": self.scheme, "query_string": query}, _no_body)

    def _accept(
        self, pending: _Pending, hit: Hit, site: Any, data: dict[str, Any], origin: str | None
    ) -> None:
        """Accept, spool the record, then answer (at once when there is nothing to spool: the
        site drops these hits), or refuse with a 503 if the disk failed. Raises HTTPError
        when the request is refused or the spool cannot take it."""
        c, adapter = self.collector, pending.adapter
        record, count, cookie = accept.accept(c, adapter, hit, site, data, origin)
        if not record:
            status, body, media, headers = adapter.accepted(count, origin, cookie)
            self._answer(pending, status, body, media, headers)
            return
        try:  # a partial, not a closure: two objects per hit rather than eight
            c.spool.submit(record, partial(self._stored, pending, count, origin, cookie),
                           self.loop)
        except (SpoolFull, SpoolError) as exc:
            raise accept.spool_refusal(exc) from None

    def _stored(
        self, pending: _Pending, count: int, origin: str | None, cookie: str | None,
        error: Exception | None,
    ) -> None:
        """The spool's callback: the record is on disk (``error`` None), or failed."""
        adapter = pending.adapter
        if error is None:
            self.collector.metrics.hits_accepted.inc(adapter.name, by=count)
            status, body, media, headers = adapter.accepted(count, origin, cookie)
            self._answer(pending, status, body, media, headers)
        else:
            self._refuse(pending, accept.spool_refusal(error), origin)  # type: ignore[arg-type]

    def _refuse(self, pending: _Pending, exc: HTTPError, origin: str | None) -> None:
        headers = pending.adapter.refused(self.collector, exc, origin)
        self._answer(pending, exc.status, exc.body(), JSON, headers)

    def _fail(self, pending: _Pending) -> None:
        log.exception("fast path: unexpected error")
        pending.keep_alive = False
        self._answer(pending, 500, INTERNAL_ERROR)

    def _answer(
        self, pending: _Pending, status: int, body: bytes, media: bytes = JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        pending.response_complete = True
        if self.transport.is_closing():
            return
        out = [self._status_and_defaults(status),
               b"content-type: %s\r\ncontent-length: %d\r\n" % (media, len(body))]
        if headers:
            for name, value in headers.items():
                out += [name.lower().encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        if not pending.keep_alive:
            out.append(b"connection: close\r\n")
        out += [b"\r\n", body]
        self.transport.write(b"".join(out))
        if pending.keep_alive:
            self.on_response_complete()
        else:
            self.transport.close()


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def protocol_for(collector: Collector) -> type[IngestProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``collector``."""
    return type("IngestProtocol", (IngestProtocol,), {"collector": collector})

