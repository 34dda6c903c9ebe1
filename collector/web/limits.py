"""uvicorn's httptools protocol with limits on what a client may send, and how slowly: the
protocol of both of ``tagwerk serve``'s ports (the collector's, through
``fasthttp.IngestProtocol``, and the SQL interface's).

Limits (module constants, read when used: tests lower them with monkeypatch):

- ``MAX_HEADERS`` header fields and ``MAX_HEAD_BYTES`` for the request target and the header
  fields together (each field counted as ``name: value`` and its CRLF; the method and the
  HTTP version are not counted). More is answered ``431 Request Header Fields Too Large``;
  a request target that alone is longer than ``MAX_HEAD_BYTES`` is answered
  ``414 URI Too Long`` (the target comes before any field, so it alone ran over). Both with
  ``Connection: close``, and the connection is closed. The size is counted in the parser's
  callbacks (``on_url``, ``on_header``: name and value; the 4 bytes more per field when
  the head is complete), so a huge head is refused once the limit is passed, not after it
  was buffered whole. httptools hands over a header field only when it is complete (and
  buffers it until then, growing a bytes object by concatenation): a field still arriving
  is counted by the bytes received while the head is unfinished, and refused at most one
  read (asyncio reads up to 256 KiB) past the limit. The number of fields is checked when
  the head is complete (``on_headers_complete``): until then the size limit bounds it. A
  chunked body's trailer fields count as the head's, and are refused alike.
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
  between requests, which cancel uvicorn's keep-alive timer) do not keep a connection open.

Each refusal is written, then the connection is closed: our side at once (the client reads
the answer, then the end of the stream), the socket when the client closes its side, or
after ``LINGER_TIMEOUT`` seconds; meanwhile what the client still sends is dropped unread.
A refusal raised in a parser callback reaches uvicorn as a parser error, which it logs
(``Invalid HTTP request received.``) before answering through ``send_400_response``.

The timeouts count only while the server reads: when uvicorn stops reading (a pipelined
request waiting for the one before it, or a body the application does not read as fast as
it arrives), or the client waits for ``100 Continue``, waiting is not the client's fault.

Cost on the hot path (a pixel: a head that arrives in one read): one subtraction and
comparison per header field, a few attribute stores per request, no clock read. The
timeouts use one timer per connection (``loop.call_at``), a watchdog armed from the
connection's start to its end: it fires at the current phase's deadline or earlier, and
is rearmed then; deadlines are set only when a head or body spans reads.

What this relies on in uvicorn (pinned ``>=0.54,<0.55``): its parser callbacks
(``on_url``, ``on_header``: reimplemented here, so they keep filling ``self.url``,
``self.headers`` and ``self.expect_100_continue``), that a parser error is answered through
``send_400_response``, the attributes ``cycle``, ``pipeline``, ``flow``,
``timeout_keep_alive``, ``timeout_keep_alive_task`` and ``server_state.default_headers``, and
``STATUS_LINE`` (``tests/test_uvicorn_compat.py`` checks each).
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
_IDLE = 0  # between requests: no byte of the next one yet (false: the hot path's test)
_BEGUN = 1  # a request's head began in the data being parsed now
_HEAD = 2  # a request's head began in data parsed before
_BODY = 3  # the head is complete; its body (if any) is being read
_CHUNK_BEGUN = 4  # a chunk's size line was read now, none of its data yet
_CHUNK_WAIT = 5  # a chunk's size line was read before, none of its data since: the last
# chunk's trailer fields, which httptools buffers as it does the head's fields
_CLOSED = 6  # refused: what arrives is dropped, the connection closes after an answer
_LINGER = 7  # refused and answered: what arrives is dropped until the client closes

_NEVER = float("inf")

_REASONS = {408: b"request timeout", 414: b"request target too long",
            431: b"request header fields too large"}


class _Refused(Exception):
    """Raised in a parser callback to stop the parser; the refusal is in ``_refusal``."""


class LimitedProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the limits above. A subclass that overrides
    ``on_message_begin``, ``on_headers_complete`` or ``on_message_complete`` without calling
    these must call ``_head_begins``, ``_head_ends`` or ``_message_ends`` itself."""

    # In slots: uvicorn's protocol has 28 attributes in its __dict__, and CPython (3.11)
    # shares the keys of, and specializes attribute access for, instance dicts only up to
    # 30; more made every attribute access on the hot path slower (measured: +0.4 us).
    __slots__ = ("_phase", "_room", "_head_raw", "_deadline", "_timer", "_timer_at",
                 "_refusal")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = KEEP_ALIVE_TIMEOUT
        self._phase = _IDLE
        self._room = MAX_HEAD_BYTES  # left for the request target and header fields
        self._head_raw = 0  # bytes received while the head was unfinished (beyond the 1st read)
        self._deadline = 0.0  # of the current phase
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER  # when it fires
        self._refusal: tuple[int, str] | None = None

    # -- the connection -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(self.loop.time() + KEEP_ALIVE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._phase = _CLOSED
        self._disarm()

    def data_received(self, data: bytes) -> None:
        if self._phase:  # a request unfinished, or refused
            self._data_received_busy(data)
            return
        _data_received(self, data)
        if self._phase:  # a request is unfinished after this read
            self._after_read(len(data))

    def _data_received_busy(self, data: bytes) -> None:
        if self._phase >= _CLOSED:
            return  # dropped
        _data_received(self, data)
        if self._phase:
            self._after_read(len(data))

    def _after_read(self, size: int) -> None:
        phase = self._phase
        if phase == _HEAD:  # the head was unfinished before this read and still is
            self._head_raw += size
            if self._head_raw > MAX_HEAD_BYTES:
                self._refuse_request(431, f"request head over {MAX_HEAD_BYTES} bytes")
        elif phase == _BEGUN:  # a head began in this read and is still unfinished: its
            self._phase = _HEAD  # first byte came now (a head that fits one read never waits)
            self._expect(self.loop.time() + HEAD_TIMEOUT)
        elif phase >= _BODY:
            if phase == _CHUNK_WAIT:  # the read held only trailer fields
                self._head_raw += size
                if self._head_raw > MAX_HEAD_BYTES:
                    self._refuse_request(431, f"trailer over {MAX_HEAD_BYTES} bytes")
                    return
            elif phase == _CHUNK_BEGUN:
                self._phase = _CHUNK_WAIT
            self._expect(self.loop.time() + BODY_TIMEOUT)

    # -- the parser's callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_begins()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._room -= len(url)
        if self._room < 0:
            self._stop_parser(414, f"request target over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The hot path's only cost per field. The 4 bytes of ": " and CRLF per field, and
        # the number of fields, are checked when the head is complete (the size limit
        # bounds the number meanwhile: a field is at least 3 bytes).
        self._room -= len(name) + len(value)
        if self._room < 0:
            self._stop_parser(431, f"request head over {MAX_HEAD_BYTES} bytes")
        # as HttpToolsProtocol.on_header
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_ends()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._phase = _BODY
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._phase = _CHUNK_BEGUN
        self._head_raw = 0

    def on_chunk_complete(self) -> None:
        self._phase = _BODY

    def on_message_complete(self) -> None:
        self._message_ends()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error so, the exceptions of our callbacks included
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse_request(*refusal)

    # -- the phases -----------------------------------------------------------------------

    def _head_begins(self) -> None:
        self._phase = _BEGUN  # the deadline is set after this read if the head is unfinished
        self._room = MAX_HEAD_BYTES
        self._head_raw = 0

    def _head_ends(self) -> None:
        fields = len(self.headers)
        if fields > MAX_HEADERS or self._room < 4 * fields:
            self._stop_parser(431, f"request head over {MAX_HEAD_BYTES} bytes or "
                                   f"{MAX_HEADERS} fields")
        self._phase = _BODY  # the deadline is set after this read (data_received)

    def _message_ends(self) -> None:
        self._phase = _IDLE  # the answer is the application's; then the keep-alive timer

    # -- the timer --------------------------------------------------------------------------

    def _expect(self, deadline: float) -> None:
        """Check the connection at ``deadline``: arm the timer unless it fires before."""
        self._deadline = deadline
        if self._timer_at > deadline:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = _NEVER

    def _on_timer(self) -> None:
        """The connection's watchdog: armed from its start to its end, it fires at the
        current phase's deadline, or earlier, and then looks at the phase."""
        self._timer, self._timer_at = None, _NEVER
        phase = self._phase
        if phase == _LINGER:
            self.transport.close()
            return
        if phase == _CLOSED or self.transport.is_closing() \
                or self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            return
        now = self.loop.time()
        cycle = self.cycle
        if phase == _IDLE:
            keep_alive = self.timeout_keep_alive_task
            if keep_alive is not None:
                # uvicorn's keep-alive timer closes it then; bytes that begin no request
                # (blank lines) cancel that timer without arming it again: this one will.
                self._deadline = keep_alive.when()
            elif cycle is not None and not cycle.response_complete:
                self._deadline = now + KEEP_ALIVE_TIMEOUT  # being answered: look again
            elif now >= self._deadline:
                self.transport.close()  # idle (fresh, or after blank lines): closed
                return
            self._arm(self._deadline)
            return
        if self.flow.read_paused or getattr(cycle, "waiting_for_100_continue", False):
            # uvicorn is not reading, or the client waits for 100 Continue: not its fault
            self._deadline = now + (BODY_TIMEOUT if phase >= _BODY else HEAD_TIMEOUT)
        if now < self._deadline:
            self._arm(self._deadline)
        elif phase >= _BODY:
            self._refuse_request(408, f"no body bytes for {BODY_TIMEOUT:g} s")
        else:
            self._refuse_request(408, f"request head not complete within {HEAD_TIMEOUT:g} s")

    # -- refusing -------------------------------------------------------------------------

    def _stop_parser(self, status: int, why: str) -> None:
        """Stop the parser from within a callback; ``send_400_response`` refuses."""
        self._refusal = (status, why)
        raise _Refused(why)

    def _refuse_request(self, status: int, why: str) -> None:
        """Refuse the request being read, and close the connection."""
        phase, self._phase = self._phase, _CLOSED
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if phase >= _BODY and cycle is not None:  # the request's own cycle
            answered = bool(self.pipeline) or getattr(cycle, "response_started",
                                                      cycle.response_complete)
            cycle.disconnected = True  # the application's receive() and send() see it
            cycle.message_event.set()
            if answered:  # or queued behind an answer not yet given: nothing to say
                log.info("%s: %s, closed", _peer(self.client), why)
                self.transport.close()
                return
        elif cycle is not None and not cycle.response_complete:
            # An earlier request on this connection is still being answered: its answer
            # goes first and closes the connection; this request gets none.
            log.info("%s: %s, closed after the answer before", _peer(self.client), why)
            cycle.keep_alive = False
            return
        log.info("%s: %s, %d", _peer(self.client), why, status)
        self._send_refusal(status)

    def _status_and_defaults(self, status: int) -> bytes:
        """The status line and the server's default headers (``Date``) of an answer written
        straight to the transport (here and by the ingestion fast path)."""
        defaults = self.server_state.default_headers
        if defaults is not _defaults[0]:  # uvicorn makes a new list each second (the date)
            _defaults[:] = defaults, b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        return STATUS_LINE[status] + _defaults[1]

    def _send_refusal(self, status: int) -> None:
        body = _REASONS[status]
        out = [self._status_and_defaults(status),
               b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
               b"connection: close\r\n\r\n%s" % (len(body), body)]
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
        self._arm(self.loop.time() + LINGER_TIMEOUT)


_data_received = HttpToolsProtocol.data_received  # without super(): this is the hot path
# The server's default headers as uvicorn last gave them, and joined: one join a second.
_defaults: list[Any] = [None, b""]


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
