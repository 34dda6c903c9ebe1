"""uvicorn's httptools protocol with limits on what a client may send, and how slowly: the
protocol of both of ``tagwerk serve``'s ports (the collector's, through
``fasthttp.IngestProtocol``, and the SQL interface's).

Limits (module constants, read when used: tests lower them with monkeypatch):

- ``MAX_HEADERS`` header fields and ``MAX_HEAD_BYTES`` for the request target and the header
  fields together (each field counted as ``name: value`` and its CRLF; the method and the
  HTTP version are not counted). More is answered ``431 Request Header Fields Too Large``;
  a request target that alone is longer than ``MAX_HEAD_BYTES`` is answered
  ``414 URI Too Long`` (the target is read before any header, so it is the target that ran
  over). Both with ``Connection: close``, and the connection is closed. The count is kept
  in the parser's callbacks, so a huge head is refused once the limit is passed, not after
  it was buffered whole: httptools hands over a header field only when it is complete, so
  a field still arriving is counted by the bytes received while the head is unfinished
  (refused at most one read, 256 KiB, past the limit).
- ``HEAD_TIMEOUT``: a request's head (request line and headers) must be complete within
  this many seconds of its first byte, a deadline for the whole head: a head is small, any
  client sends it at once, and a per-read timeout would let a client keep the connection
  by sending a byte now and then (slowloris). Else ``408 Request Timeout``, and closed.
- ``BODY_TIMEOUT``: while a body is read, at most this many seconds between two reads, an
  inactivity timeout rather than a deadline for the whole body: bodies legitimately run to
  megabytes (a 1 MB ``/api/v1/batch`` from a till on a slow line, an ``INSERT`` on the SQL
  port), their size is bounded by each endpoint, and a deadline would refuse a large body
  for the client's bandwidth alone. A stalled body gets ``408`` if nothing was answered
  yet, and the connection is closed.
- ``KEEP_ALIVE_TIMEOUT``: a connection with no request in progress, whether fresh (uvicorn
  arms its keep-alive timer only after a first answer) or kept alive after one, is closed
  after this many seconds. It replaces uvicorn's ``timeout_keep_alive`` setting (same
  default), so that both ports have the same one. Bytes that begin no request (blank lines
  between requests) do not keep a connection open either.

Each refusal is written, then the connection is closed: our side at once (the client reads
the answer, then the end of the stream), the socket when the client closes its side, or
after ``LINGER_TIMEOUT`` seconds, meanwhile what the client still sends is dropped unread.

The timeouts count only while the server reads: when uvicorn stops reading (a pipelined
request waiting for the one before it, or a body the application does not read as fast as
it arrives), waiting is not the client's fault.

One timer per connection (``loop.call_at``), rearmed only when it fires early: a request
costs a clock read and a comparison, a header field two additions and a comparison.

What this relies on in uvicorn (pinned ``>=0.54,<0.55``): its parser callbacks
(``on_url``, ``on_header``: reimplemented here, so they keep filling ``self.url``,
``self.headers`` and ``self.expect_100_continue``), that a parser error is answered through
``send_400_response``, and the attributes ``cycle``, ``pipeline``, ``flow``,
``timeout_keep_alive`` and ``timeout_keep_alive_task``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("tagwerk.http")

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5.0
LINGER_TIMEOUT = 2.0

# Where the connection is in its current request.
_IDLE = 0  # between requests: no byte of the next one yet
_BEGUN = 1  # a request's head began in the data being parsed now
_HEAD = 2  # a request's head began in data parsed before
_BODY = 3  # the head is complete; its body (if any) is being read
_CLOSED = 4  # refused: what arrives is dropped, the connection closes after an answer
_LINGER = 5  # refused and answered: what arrives is dropped until the client closes

_REASONS = {408: b"request timeout", 414: b"request target too long",
            431: b"request header fields too large"}


class _Refused(Exception):
    """Raised in a parser callback to stop the parser; the refusal is in ``_refusal``."""


class LimitedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the limits above. A subclass that overrides
    ``on_message_begin``, ``on_headers_complete`` or ``on_message_complete`` without calling
    these must call ``_head_begins``, ``_head_ends`` or ``_message_ends`` itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = KEEP_ALIVE_TIMEOUT
        self._phase = _IDLE
        self._head_bytes = 0  # request target and complete header fields
        self._head_raw = 0  # bytes received while the head was unfinished (beyond the 1st read)
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    # -- the connection -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(self.loop.time() + KEEP_ALIVE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._phase = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._phase >= _CLOSED:
            return
        idle = self.timeout_keep_alive_task  # uvicorn's, cancelled by any byte received
        super().data_received(data)
        phase = self._phase
        if phase == _HEAD:  # the head was unfinished before this read and still is
            self._head_raw += len(data)
            if self._head_raw > MAX_HEAD_BYTES:
                self._refuse(431, f"request head over {MAX_HEAD_BYTES} bytes")
        elif phase == _BEGUN:
            self._phase = _HEAD
        elif phase == _BODY:
            self._expect(self.loop.time() + BODY_TIMEOUT)
        elif phase == _IDLE and self.timeout_keep_alive_task is None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                # Bytes that began no request (blank lines): the connection stays idle, with
                # the deadline it had (uvicorn's timer, or ours on a fresh connection).
                self._expect(idle.when() if idle is not None else self._deadline)

    # -- the parser's callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_begins()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._stop(414, f"request target over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES or len(self.headers) >= MAX_HEADERS:
            self._stop(431, f"request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields")
        # as HttpToolsProtocol.on_header
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_ends()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._message_ends()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error so, the exceptions of our callbacks included
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(*refusal)

    # -- the phases -----------------------------------------------------------------------

    def _head_begins(self) -> None:
        self._phase = _BEGUN
        self._head_bytes = self._head_raw = 0
        self._expect(self.loop.time() + HEAD_TIMEOUT)

    def _head_ends(self) -> None:
        self._phase = _BODY  # the deadline is set after this read (data_received)

    def _message_ends(self) -> None:
        self._phase = _IDLE  # the answer is the application's; then the keep-alive timer

    def _expect(self, deadline: float) -> None:
        """Check the connection at ``deadline``: arm the timer unless it fires before."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._phase
        if phase == _LINGER:
            self.transport.close()
            return
        if phase == _CLOSED or self.transport.is_closing() \
                or self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            return
        cycle = self.cycle
        if phase == _IDLE and (self.timeout_keep_alive_task is not None
                               or (cycle is not None and not cycle.response_complete)):
            return  # an answer is being made, or uvicorn's keep-alive timer is armed
        now = self.loop.time()
        if phase != _IDLE and self.flow.read_paused:  # uvicorn is not reading: wait
            self._deadline = now + (BODY_TIMEOUT if phase == _BODY else HEAD_TIMEOUT)
        if now < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
        elif phase == _IDLE:
            self.transport.close()  # nothing to answer: closed as uvicorn's keep-alive does
        elif phase == _BODY:
            self._body_timed_out()
        else:
            self._refuse(408, f"request head not complete within {HEAD_TIMEOUT:g} s")

    # -- refusing -------------------------------------------------------------------------

    def _stop(self, status: int, why: str) -> None:
        """Stop the parser from within a callback; ``send_400_response`` refuses."""
        self._refusal = (status, why)
        raise _Refused(why)

    def _refuse(self, status: int, why: str) -> None:
        """Refuse the request whose head is being read, and close the connection."""
        self._phase = _CLOSED
        if self.transport.is_closing():
            return
        log.info("%s: %d, %s", _peer(self.client), status, why)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # An earlier request on this connection is still being answered: its answer
            # goes first and closes the connection; this request gets none.
            cycle.keep_alive = False
            return
        self._send_error(status)

    def _body_timed_out(self) -> None:
        self._phase = _CLOSED
        log.info("%s: 408, no body bytes for %g s", _peer(self.client), BODY_TIMEOUT)
        cycle = self.cycle
        answered = True
        if cycle is not None:
            answered = bool(self.pipeline) or getattr(cycle, "response_started",
                                                      cycle.response_complete)
            cycle.disconnected = True  # the application's receive() and send() see it
            cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._send_error(408)

    def _send_error(self, status: int) -> None:
        body = _REASONS[status]
        out = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            out += [name, b": ", value, b"\r\n"]
        out.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                   b"connection: close\r\n\r\n%s" % (len(body), body))
        transport = self.transport
        transport.write(b"".join(out))
        if not transport.can_write_eof():
            transport.close()
            return
        # A lingering close: closed at once, with the client's bytes unread, the socket
        # would send a reset, which can cost the client the answer (Windows' TCP drops
        # what it had received). So only our side is shut; what arrives is dropped
        # (data_received) until the client closes, or LINGER_TIMEOUT.
        transport.write_eof()
        self._phase = _LINGER
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(LINGER_TIMEOUT, self._on_timer)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
