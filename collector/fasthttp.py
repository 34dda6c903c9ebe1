"""uvicorn's httptools protocol, with ``GET /p.gif`` answered without the ASGI layer.

The pixel is the hottest path and its work is small (parse a query string, enrich, append
to the spool), so the ASGI machinery uvicorn runs for every request (a scope, a
request-response cycle with its event, a task, the send messages) cost as much as the hit
itself. Here a pixel request is handled in the parser's ``on_headers_complete``: the record
goes to the spool with a callback, and the callback writes the prebuilt answer once the
record is fsynced. Everything else, and any pixel this path cannot finish synchronously (an
unknown site, which needs a reload in a thread; ``HEAD``; a request pipelined behind
another), takes uvicorn's own path to the same handlers in ``ingest.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from collector import ingest
from collector.http import Hit, HTTPError
from collector.service import Collector
from collector.spool import SpoolError, SpoolFull

log = logging.getLogger("tagwerk.http")

PIXEL_PATH = b"/p.gif"
_PIXEL_TAIL = (b"content-type: image/gif\r\ncontent-length: %d\r\n"
               b"cache-control: no-store, max-age=0\r\n" % len(ingest.PIXEL))


class _Ignore:
    def set(self) -> None:
        pass


class _Pending:
    """Stands in for uvicorn's RequestResponseCycle while a pixel waits for the spool:
    the attributes uvicorn's connection code reads or writes on ``self.cycle``."""

    __slots__ = ("keep_alive", "response_complete", "disconnected", "more_body", "body")
    message_event = _Ignore()

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.response_complete = self.disconnected = False
        self.more_body, self.body = False, b""


class IngestProtocol(HttpToolsProtocol):
    """Set ``collector`` on a subclass (see :func:`protocol_for`)."""

    collector: Collector

    def on_message_begin(self) -> None:
        # uvicorn builds the ASGI scope here; the fast path needs none, so it is built in
        # on_headers_complete only when the request goes the ASGI way.
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        if (self.url.startswith(PIXEL_PATH) and self.parser.get_method() == b"GET"
                and (self.cycle is None or self.cycle.response_complete)
                and self._pixel()):
            return
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not isinstance(self.cycle, _Pending):  # a GET's body is ignored, as by Starlette
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not isinstance(self.cycle, _Pending):
            super().on_message_complete()

    # -- the pixel ----------------------------------------------------------------------

    def _pixel(self) -> bool:
        """Handle a pixel request, or return False to leave it to the ASGI path."""
        path, _, query = self.url.partition(b"?")
        if path != PIXEL_PATH:
            return False
        c = self.collector
        hit = Hit({"method": "GET", "headers": self.headers, "client": self.client,
                   "query_string": query}, _no_body)
        keep_alive = self.parser.should_keep_alive()
        try:
            raw = ingest._pixel_event(query)
            site_id = raw.get("site")
            site = c.sites.get(site_id) if isinstance(site_id, str) else None
            if site is None:
                return False  # missing (the ASGI path says so) or unknown: may need a reload
            # From here this request owns the connection until it is answered; requests
            # pipelined behind it wait in uvicorn's queue.
            self.cycle = pending = _Pending(keep_alive)  # type: ignore[assignment]
            record, count = ingest.pixel_record(c, hit, raw, site)
            if record:
                try:
                    c.spool.submit(record, lambda error: self._stored(pending, count, error),
                                   self.loop)
                except (SpoolFull, SpoolError) as exc:
                    raise ingest.spool_refusal(exc) from None
                return True
            self._answer(pending, None)  # the site drops this hit: nothing to wait for
        except HTTPError as exc:
            c.metrics.hits_rejected.inc("pixel", exc.reason)
            self.cycle = pending = _Pending(keep_alive)  # type: ignore[assignment]
            self._answer(pending, exc)
        except Exception:
            log.exception("pixel: unexpected error")
            self.cycle = pending = _Pending(False)  # type: ignore[assignment]
            self._answer(pending, HTTPError(500, "internal error", "internal"))
        return True

    def _stored(self, pending: _Pending, count: int, error: Exception | None) -> None:
        if error is None:
            self.collector.metrics.hits_accepted.inc("pixel", by=count)
            self._answer(pending, None)
        else:
            exc = ingest.spool_refusal(error)  # type: ignore[arg-type]
            self.collector.metrics.hits_rejected.inc("pixel", exc.reason)
            self._answer(pending, exc)

    def _answer(self, pending: _Pending, exc: HTTPError | None) -> None:
        pending.response_complete = True
        if self.transport.is_closing():
            return
        out = [STATUS_LINE[exc.status if exc else 200]]
        for name, value in self.server_state.default_headers:
            out += [name, b": ", value, b"\r\n"]
        if exc is None:
            out.append(_PIXEL_TAIL)
            body = ingest.PIXEL
        else:
            body = exc.body()
            out.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                       b"cache-control: no-store, max-age=0\r\n" % len(body))
            for name, value in exc.headers.items():
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
