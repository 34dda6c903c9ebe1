"""uvicorn's httptools protocol, with ``GET /p.gif`` and ``POST /collect`` answered without
the ASGI layer.

These are the hot paths and their work is small (parse, enrich, append to the spool), so
the ASGI machinery uvicorn runs for every request (a scope, a request-response cycle with
its event, a task, the send messages) cost about as much as a pixel hit itself. Here such a
request is handled in the parser's callbacks: the record goes to the spool with a callback,
and the callback writes the answer once the record is fsynced. The steps are those of the
ASGI handlers in ``endpoints.py`` (shared functions), which still serve every request this
path does not take: ``HEAD``, a body without ``Content-Length`` or larger than allowed,
``Expect: 100-continue``, a request pipelined behind another; a pixel of an unknown site
(it may need a reload of the sites, in a thread). A ``/collect`` body of an unknown site
waits for that reload in a task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from collector.ingest import endpoints
from collector.service import Collector
from collector.sites import Site
from collector.spool.disk import SpoolError, SpoolFull
from collector.web.http import INTERNAL_ERROR, Hit, HTTPError, decode_body
from collector.web.limits import LimitedProtocol

log = logging.getLogger("tagwerk.http")

PIXEL_PATH = b"/p.gif"
COLLECT_PATH = b"/collect"


class _Ignore:
    def set(self) -> None:
        pass


class _Pending:
    """Stands in for uvicorn's RequestResponseCycle while a request of the fast path is
    read or waits for the spool: the attributes uvicorn's connection code reads or writes
    on ``self.cycle``, and the body of a ``/collect``."""

    __slots__ = ("keep_alive", "response_complete", "disconnected", "more_body", "body")
    message_event = _Ignore()

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.response_complete = self.disconnected = False
        self.more_body, self.body = False, b""


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
            method = self.parser.get_method()
            if method == b"GET" and self.url.startswith(PIXEL_PATH) and self._pixel():
                return
            if method == b"POST" and self.url == COLLECT_PATH and self._collect_fits():
                self.cycle = _Pending(self.parser.should_keep_alive())  # type: ignore[assignment]
                return  # the body follows: on_body, on_message_complete
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if isinstance(self.cycle, _Pending):
            if not self.cycle.more_body:  # a /collect being read (a pixel's body is ignored)
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
            self._collect(pending)

    # -- the pixel ----------------------------------------------------------------------

    def _pixel(self) -> bool:
        """Handle a pixel request, or return False to leave it to the ASGI path."""
        path, _, query = self.url.partition(b"?")
        if path != PIXEL_PATH:
            return False
        c = self.collector
        keep_alive = self.parser.should_keep_alive()
        try:
            raw = endpoints.pixel_event(query)
            site_id = raw.get("site")
            site = c.sites.get(site_id) if isinstance(site_id, str) else None
            if site is None:
                return False  # missing (the ASGI path says so) or unknown: may need a reload
            # From here this request owns the connection until it is answered; requests
            # pipelined behind it wait in uvicorn's queue.
            self.cycle = pending = _Pending(keep_alive)  # type: ignore[assignment]
            pending.more_body = True  # nothing more to do in on_message_complete
            hit = self._hit("GET", query)
            record, count = endpoints.pixel_record(c, hit, raw, site)
            self._store(pending, record, count, "pixel",
                        lambda: self._answer(pending, 200, endpoints.PIXEL, endpoints.PIXEL_HEADERS,
                                             b"image/gif"),
                        lambda exc: self._refuse_pixel(pending, exc))
        except HTTPError as exc:
            self.cycle = pending = _Pending(keep_alive)  # type: ignore[assignment]
            self._refuse_pixel(pending, exc)
        except Exception:
            self.cycle = pending = _Pending(False)  # type: ignore[assignment]
            self._fail(pending)
        return True

    def _refuse_pixel(self, pending: _Pending, exc: HTTPError) -> None:
        headers = endpoints.pixel_refusal_headers(self.collector, exc)
        self._answer(pending, exc.status, exc.body(), headers)

    # -- /collect -------------------------------------------------------------------------

    def _collect_fits(self) -> bool:
        """A body this path can take: its length declared and within the limit."""
        if self.expect_100_continue:
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return False
        return (length is not None and length.isdigit()
                and int(length) <= endpoints.COLLECT_MAX_BYTES)

    def _collect(self, pending: _Pending) -> None:
        c = self.collector
        hit = self._hit("POST", b"")
        origin = hit.headers.get("origin")
        try:
            endpoints.check_media(hit)
            data = endpoints.browser_json(decode_body(hit.headers, pending.body,
                                                   endpoints.COLLECT_MAX_BYTES))
            pending.body = b""
            site_id = data.get("site")
            site = c.sites.get(site_id) if isinstance(site_id, str) else None
            if site is None:  # missing, or unknown: may need a reload in a thread
                self.loop.create_task(self._collect_unknown(pending, hit, data, origin))
                return
            self._collect_site(pending, hit, data, site, origin)
        except HTTPError as exc:
            self._refuse(pending, exc, origin)
        except Exception:
            self._fail(pending)

    async def _collect_unknown(
        self, pending: _Pending, hit: Hit, data: dict[str, Any], origin: str | None
    ) -> None:
        try:
            site = await endpoints.find_site(self.collector, data.get("site"))
            self._collect_site(pending, hit, data, site, origin)
        except HTTPError as exc:
            self._refuse(pending, exc, origin)
        except Exception:
            self._fail(pending)

    def _collect_site(
        self, pending: _Pending, hit: Hit, data: dict[str, Any], site: Site, origin: str | None
    ) -> None:
        endpoints.check_origin(site, origin)
        record, count, headers = endpoints.collect_hits(self.collector, hit, data, site, origin)
        self._store(pending, record, count, "collect",
                    lambda: self._answer(pending, 202, b'{"accepted":%d}' % count, headers),
                    lambda exc: self._refuse(pending, exc, origin))

    def _refuse(self, pending: _Pending, exc: HTTPError, origin: str | None) -> None:
        headers = endpoints.refusal_headers(self.collector, exc, origin, "collect")
        self._answer(pending, exc.status, exc.body(), headers)

    # -- shared ---------------------------------------------------------------------------

    def _hit(self, method: str, query: bytes) -> Hit:
        return Hit({"method": method, "headers": self.headers, "client": self.client,
                    "scheme": self.scheme, "query_string": query}, _no_body)

    def _store(
        self, pending: _Pending, record: bytes, count: int, endpoint: str,
        answer: Callable[[], None], refuse: Callable[[HTTPError], None],
    ) -> None:
        """Spool ``record``, then ``answer()`` (at once when there is nothing to spool: the
        site drops these hits), or ``refuse(503)`` if the disk failed. Raises HTTPError
        when the spool cannot take it."""
        c = self.collector

        def stored(error: Exception | None) -> None:
            if error is None:
                c.metrics.hits_accepted.inc(endpoint, by=count)
                answer()
            else:
                refuse(endpoints.spool_refusal(error))  # type: ignore[arg-type]

        if not record:
            answer()
            return
        try:
            c.spool.submit(record, stored, self.loop)
        except (SpoolFull, SpoolError) as exc:
            raise endpoints.spool_refusal(exc) from None

    def _fail(self, pending: _Pending) -> None:
        log.exception("fast path: unexpected error")
        pending.keep_alive = False
        self._answer(pending, 500, INTERNAL_ERROR)

    def _answer(
        self, pending: _Pending, status: int, body: bytes,
        headers: dict[str, str] | None = None, media: bytes = b"application/json",
    ) -> None:
        pending.response_complete = True
        if self.transport.is_closing():
            return
        out = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            out += [name, b": ", value, b"\r\n"]
        out.append(b"content-type: %s\r\ncontent-length: %d\r\n" % (media, len(body)))
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
