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

- ``HTTP_VERSIONS``: a request line of another version (none at all: HTTP/0.9; HTTP/2.0,
  which comes only through TLS here) is answered ``505 HTTP Version Not Supported``, and
  the connection closed: answered as HTTP/1.1, a proxy in front reading it otherwise would
  disagree with us about where a request ends.
- ``MAX_PIPELINED`` requests read and waiting behind the one being answered (pipelined by a
  client that does not wait for the answers): one more, and the connection closes after
  the answers before it (this request and what follows get none).
- ``WRITE_TIMEOUT``: answers the client does not read back up past the transport's
  high-water mark (64 KiB beyond what the kernel holds), and then no more requests are read
  (``UvicornProtocol.writes_stalled``); if the client then reads nothing of them for this
  many seconds (what is left unsent did not shrink), the connection is aborted: nothing it
  would read is left to send. A client reading a large answer slowly keeps it. So is one
  whose transport was closed with bytes still unsent (an answer given with ``connection:
  close``), which would otherwise wait for the client for good.

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

uvicorn's protocol is reached through ``uvicorn_protocol.UvicornProtocol`` and its hooks
only (that module lists, and its test checks, what it relies on in uvicorn).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from collector.web import connections, inflight
from collector.web.clientip import Network
from collector.web.uvicorn_protocol import UvicornProtocol, parse_data

log = logging.getLogger("tagwerk.http")

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5.0
HTTP_VERSIONS = ("1.1", "1.0")  # else 505: HTTP/2 comes only with TLS (ALPN) here
LINGER_TIMEOUT = 2.0
MAX_PIPELINED = 32
WRITE_TIMEOUT = 10.0

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



class _Refused(Exception):
    """Raised in a parser callback to stop the parser; the refusal is in ``_refusal``."""


class LimitedProtocol(UvicornProtocol):
    """uvicorn's protocol with the limits above, set through ``UvicornProtocol``'s hooks
    (``head_begins``, ``head_over``, ``head_ends``, ``body_arrives``, ``message_ends``,
    ``bad_request``). A subclass that overrides one of these must call it."""

    # In slots, as UvicornProtocol's (which says why).
    __slots__ = ("_phase", "_head_raw", "_deadline", "_timer", "_timer_at", "_refusal",
                 "_stalled_until", "_unsent", "_body_raw", "_charge", "_client_keys",
                 "_first_chunk")
    # Whether the bytes of a request still being received count against the process's
    # budget for them (``inflight.py``): on the collector's port, where bodies are held
    # whole; the SQL port streams its bodies to the engine.
    counts_bodies = False
    # Connections open at once on the port from all clients together (0: no such cap).
    port_connections = 0
    # The trusted proxies (networks), whose connections are not capped per client
    # (``connections.py``). (Not annotated: the fast path's subclass must share no name.)
    trusted = cast(tuple[Network, ...], ())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        self._phase = _IDLE
        self._head_raw = 0  # bytes received while the head was unfinished (beyond the 1st read)
        self._first_chunk = True  # of the request's body, when chunked
        self._deadline = 0.0  # of the current phase
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER  # when it fires
        self._refusal: tuple[int, str] | None = None
        self._stalled_until = 0.0  # the client reads no answer: cut then (0: it reads)
        self._unsent = 0  # bytes of answers left unsent when that was last looked at
        self._body_raw = 0  # bytes received while the request's body was unfinished
        self._charge: inflight.Charge | None = None  # those bytes, counted (counts_bodies)
        self._client_keys: tuple[str, ...] = ()  # what the connection counts against

    # -- the connection -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        keys = connections.admit(self.peer[0] if self.peer else "", self.trusted,
                                 self.listener, self.port_connections)
        if keys is None:  # the client has its share of connections open
            self._phase = _CLOSED
            transport.abort()  # nothing was read: nothing to answer
            return
        self._client_keys = keys
        self._expect(self.event_loop.time() + KEEP_ALIVE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._phase = _CLOSED
        self._disarm()
        self._received()
        connections.release(self._client_keys)
        self._client_keys = ()

    def data_received(self, data: bytes) -> None:
        if self._phase:  # a request unfinished, or refused
            self._data_received_busy(data)
            return
        parse_data(self, data)
        if self._phase:  # a request is unfinished after this read
            self._after_read(len(data))

    def _data_received_busy(self, data: bytes) -> None:
        if self._phase >= _CLOSED:
            return  # dropped
        parse_data(self, data)
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
            self._expect(self.event_loop.time() + HEAD_TIMEOUT)
        elif phase >= _BODY:
            if self.counts_bodies and not self._count_body(size):
                return
            if phase == _CHUNK_WAIT:  # the read held only trailer fields
                self._head_raw += size
                if self._head_raw > MAX_HEAD_BYTES:
                    self._refuse_request(431, f"trailer over {MAX_HEAD_BYTES} bytes")
                    return
            elif phase == _CHUNK_BEGUN:
                self._phase = _CHUNK_WAIT
            self._expect(self.event_loop.time() + BODY_TIMEOUT)

    # -- the parser's hooks -----------------------------------------------------------------

    def head_begins(self) -> None:
        self._phase = _BEGUN  # the deadline is set after this read if the head is unfinished
        # The hot path's only cost per field is UvicornProtocol's subtraction from
        # head_room. The 4 bytes of ": " and CRLF per field, and the number of fields, are
        # checked when the head is complete (the size limit bounds the number meanwhile: a
        # field is at least 3 bytes).
        self.head_room = MAX_HEAD_BYTES
        self._head_raw = 0
        self._first_chunk = True

    def head_over(self, target: bool) -> None:
        if target:
            self._stop_parser(414, f"request target over {MAX_HEAD_BYTES} bytes")
        self._stop_parser(431, f"request head over {MAX_HEAD_BYTES} bytes")

    def head_ends(self, fields: int) -> None:
        version = self.http_version()
        if version not in HTTP_VERSIONS:  # a request line without one is read as HTTP/0.9
            self._stop_parser(505, f"HTTP/{version} is not supported (1.1 and 1.0 are)")
        if fields > MAX_HEADERS or self.head_room < 4 * fields:
            self._stop_parser(431, f"request head over {MAX_HEAD_BYTES} bytes or "
                                   f"{MAX_HEADERS} fields")
        if self.queued() >= MAX_PIPELINED:
            self._stop_parser(400, f"more than {MAX_PIPELINED} requests ahead of their answers")
        self._phase = _BODY  # the deadline is set after this read (data_received)

    def writes_stalled(self, stalled: bool) -> None:
        now = self.event_loop.time()
        if stalled:
            self._stalled_until, self._unsent = now + WRITE_TIMEOUT, self.unsent()
            if self._timer_at > self._stalled_until:
                self._arm(self._stalled_until)
        else:  # it reads again: the phase's timeout starts over, as nothing was read meanwhile
            self._stalled_until = 0.0
            self._expect(now + BODY_TIMEOUT)

    def upgrade_asked(self, with_body: bool) -> None:
        if with_body:  # its body would not be read (UvicornProtocol says why)
            self._stop_parser(400, "a request with a body asked to upgrade the connection")

    def body_arrives(self) -> None:
        self._phase = _BODY

    def chunk_begins(self) -> None:
        if self._first_chunk:
            # RFC 9112 6.1: an unknown transfer coding is a 501. The parser reads the chunks
            # and drops the others: a gzipped body would be taken as sent.
            self._first_chunk = False
            if self.transfer_codings() != ["chunked"]:
                self._stop_parser(501, "no transfer coding but chunked is supported "
                                       "(compress with Content-Encoding)")
        self._phase = _CHUNK_BEGUN
        self._head_raw = 0

    def chunk_ends(self) -> None:
        self._phase = _BODY

    def message_ends(self) -> None:
        self._phase = _IDLE  # the answer is the application's; then the keep-alive timer
        self._received()

    # -- bodies being received (counts_bodies) --------------------------------------------

    def _count_body(self, size: int) -> bool:
        """Count a read that left the request's body unfinished: a body that arrives with
        its head in one read (a hit) is never counted, nor one thrown away as it arrives
        (its request answered, or ignoring it). False, and the request refused, once the
        bodies being received would hold more than ``inflight.BODIES`` allows."""
        if not self.body_kept():
            self._received()
            return True
        self._body_raw += size
        if self._charge is None:
            self._charge = inflight.Charge()
        if self._charge.hold(self._body_raw):
            return True
        self._refuse_request(503, inflight.BODIES.refusal())
        return False

    def _received(self) -> None:
        """The request's body is read whole (its request holds it now), or will never be."""
        if self._body_raw:
            self._body_raw = 0
            if self._charge is not None:
                self._charge.release()

    def idle(self) -> None:
        # Answered on the fast path: the watchdog closes the connection if it stays idle,
        # instead of uvicorn's keep-alive timer, armed and cancelled per request (2.5 us).
        self._expect(self.event_loop.time() + KEEP_ALIVE_TIMEOUT)

    def bad_request(self, msg: str) -> None:
        refusal, self._refusal = self._refusal, None
        if refusal is not None:
            self._refuse_request(*refusal)
        elif self._phase < _BODY and self.answering():
            # Bytes after a request still being answered do not parse: refused as a head
            # over the limits is, so that the request before gets its answer first.
            self._refuse_request(400, f"invalid HTTP request ({msg})")
        else:
            super().bad_request(msg)

    # -- the timer --------------------------------------------------------------------------

    def _expect(self, deadline: float) -> None:
        """Check the connection at ``deadline``: arm the timer unless it fires before."""
        self._deadline = deadline
        if self._timer_at > deadline:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.event_loop.call_at(when, self._on_timer)
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
            self.close()
            return
        if phase == _CLOSED:
            return
        now = self.event_loop.time()
        if self.closing():
            # Closed with answers still unsent (one given with ``connection: close``): the
            # transport waits for the client to read them, however long, holding the
            # connection. One that reads nothing of them for WRITE_TIMEOUT is cut, as below.
            unsent = self.unsent()
            if not unsent:
                return
            if not self._stalled_until:
                self._stalled_until, self._unsent = now + WRITE_TIMEOUT, unsent
                self._arm(self._stalled_until)
                return
        if self._stalled_until:  # answers back up
            unsent = self.unsent()
            if now < self._stalled_until:
                self._arm(self._stalled_until)
            elif unsent < self._unsent:  # the client read some: it may go on
                self._stalled_until, self._unsent = now + WRITE_TIMEOUT, unsent
                self._arm(self._stalled_until)
            else:
                log.info("%s: no answer read for %g s, cut", _peer(self.peer), WRITE_TIMEOUT)
                self.abort()
            return
        if phase == _IDLE:
            keep_alive = self.keep_alive_deadline()
            if keep_alive is not None:
                # uvicorn's keep-alive timer closes it then; bytes that begin no request
                # (blank lines) cancel that timer without arming it again: this one will.
                self._deadline = keep_alive
            elif self.answering():
                self._deadline = now + KEEP_ALIVE_TIMEOUT  # being answered: look again
            elif now >= self._deadline:
                self.close()  # idle (fresh, or after blank lines): closed
                return
            self._arm(self._deadline)
            return
        if self.not_reading():
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
        """Stop the parser from within a callback; ``bad_request`` refuses."""
        self._refusal = (status, why)
        raise _Refused(why)

    def _refuse_request(self, status: int, why: str) -> None:
        """Refuse the request being read, and close the connection."""
        phase, self._phase = self._phase, _CLOSED
        if self.closing():
            return
        if phase >= _BODY and self.in_request():  # the request's own cycle
            if self.abandon_request():  # answered, or queued behind an answer not yet given
                log.info("%s: %s, closed", _peer(self.peer), why)
                self.close()
                return
        elif self.answering():
            # An earlier request on this connection is still being answered: its answer
            # goes first and closes the connection; this request gets none.
            log.info("%s: %s, closed after the answer before", _peer(self.peer), why)
            self.close_after_answer()
            return
        log.info("%s: %s, %d", _peer(self.peer), why, status)
        self._send_refusal(status, why)

    def _send_refusal(self, status: int, why: str) -> None:
        # ``why`` is ours (the limit and its number), never the request's text.
        body = why.encode("ascii", "replace") + b"\n"
        self.write(self.status_and_defaults(status)
                   + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))
        # A lingering close: closed at once, with the client's bytes unread, the socket
        # would send a reset, which can cost the client the answer (Windows' TCP drops
        # what it had received). So only our side is shut; what arrives is dropped
        # (data_received) until the client closes, or LINGER_TIMEOUT.
        if self.shut_writing():
            self._phase = _LINGER
            self._arm(self.event_loop.time() + LINGER_TIMEOUT)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
