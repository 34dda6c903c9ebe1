"""uvicorn's httptools protocol behind a small API: the only module that imports uvicorn's
protocol internals or reads and writes their attributes.

The HTTP limits (``limits.py``) and the ingestion fast path (``ingest/fasthttp.py``)
extend uvicorn's ``HttpToolsProtocol``, which uvicorn does not offer as an API: its parser
callbacks, per-request attributes and request-response cycle may change in any release.
Everything they need of it is here, under names of our own; ``UVICORN_INTERNALS`` lists what
this module relies on, and ``tests/test_uvicorn_compat.py`` checks each entry on the
installed uvicorn, failing with a message that names what changed (pinned ``>=0.54,<0.55``).
``tests/test_layout.py`` checks that no other module under ``collector/`` imports
``uvicorn.protocols`` or touches these attributes.

:class:`UvicornProtocol` fills uvicorn's per-request state in the parser callbacks and calls
hooks, which a subclass overrides (each a no-op here):

- ``head_begins()``: a request's first byte was parsed;
- ``head_over(target)``: the head outgrew ``head_room`` (bytes the request target and the
  header fields' names and values may still take; a subclass sets it in ``head_begins``),
  in the request target (``target``) or a header field; may raise to stop the parser;
- ``head_ends(fields)``: the head is complete, with ``fields`` header fields;
- ``take(method, target, headers, expects_continue)``: True if the subclass answers this
  request itself (the ASGI application is then not called; the hook must call
  :meth:`hold`, answer with :meth:`respond`, or both); asked only when no earlier request on
  the connection is still being answered;
- ``body_arrives()``: body bytes of a request left to the ASGI application arrived;
- ``chunk_begins()`` and ``chunk_ends()``: a chunk of a chunked body begins (its size line
  is being read) and was read whole (httptools' own callbacks, which uvicorn does not use);
- ``body_complete(pending, headers)``: the whole body of a held request was read
  (``pending.body``);
- ``message_ends()``: a request was read whole;
- ``bad_request(msg)``: the parser failed (an exception raised in a callback included);
- ``idle()``: a held request was answered and the connection waits for the next one, with
  nothing queued behind it; here uvicorn's keep-alive timer is armed (a timer per answer:
  a subclass with a timer of its own may close idle connections with that instead);
- ``server_stopping()``: the server began a graceful shutdown and asks this connection to
  end (an idle one is closed, an answer under way is the last on its connection);
- ``writes_stalled(stalled)``: the client stopped reading its answers (they back up past
  the transport's high-water mark: True), or read them again (False). Meanwhile no more
  requests are read, so that answers nobody reads do not pile up;
- ``upgrade_asked(with_body)``: the head asks to upgrade the connection (``Upgrade`` with
  ``Connection: upgrade``: a WebSocket, h2c); ``with_body``: it has a body, which the parser
  would not read (it stops at such a head), so the default refuses it as a parser error.

No connection is upgraded. The parser reads nothing after an upgrade's head (what follows
is not HTTP to it, and once read as the next request: request smuggling), so an upgrade
without a body is answered as any request, and its connection closes with that answer;
what arrives after the head is dropped. A chunked body's trailer fields are not the
request's headers (a proxy may have stripped or set those: ``Origin``, ``Cookie``).

The scope of a request left to the application is built once its head is complete (uvicorn
builds it when the request begins), so a request answered by ``take`` costs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# What this module relies on in uvicorn (checked by tests/test_uvicorn_compat.py).
UVICORN_INTERNALS: dict[str, Any] = {
    # in uvicorn.protocols.http.httptools_impl
    "module": ("STATUS_LINE", "HttpToolsProtocol"),
    # HttpToolsProtocol's methods overridden or called here, with their parameters after self
    "methods": {
        "on_message_begin": [], "on_url": ["url"], "on_header": ["name", "value"],
        "on_headers_complete": [], "on_body": ["body"], "on_message_complete": [],
        "on_response_complete": [], "timeout_keep_alive_handler": [],
        "send_400_response": ["msg"], "data_received": ["data"],
        "connection_made": ["transport"], "connection_lost": ["exc"], "shutdown": [],
        "_unset_keepalive_if_required": [], "_should_upgrade": [], "pause_writing": [],
        "resume_writing": [],
    },
    # set by HttpToolsProtocol in __init__, connection_made or the parser callbacks
    "attributes": ("parser", "url", "headers", "expect_100_continue", "scope", "cycle",
                   "pipeline", "flow", "transport", "server_state", "loop", "client",
                   "scheme", "timeout_keep_alive", "timeout_keep_alive_task", "logger"),
    # read or written here on uvicorn's RequestResponseCycle (Pending has them too)
    "cycle": ("keep_alive", "response_complete", "disconnected", "more_body",
              "message_event"),
    # read here on uvicorn's cycle only (with a default: Pending lacks them)
    "cycle_read": ("response_started", "waiting_for_100_continue"),
    "parser": ("get_method", "get_http_version", "should_keep_alive", "should_upgrade"),
    "flow": ("read_paused", "write_paused", "pause_reading", "resume_reading"),
    # httptools' callbacks found on the protocol, since uvicorn builds its parser with it
    # (HttpRequestParser(self)); uvicorn defines neither
    "parser_callbacks": ("on_chunk_header", "on_chunk_complete"),
    "server_state": ("default_headers", "total_requests"),
}


class _Ignore:
    def set(self) -> None:
        pass


# An ASGI scope extension: a callable that closes the connection at once, dropping what is
# unsent (an answer cut midway: uvicorn then sees its client gone, where an application
# returning without the last message is logged as an error).
CUT = "tagwerk.cut"


class Pending:
    """Stands in for uvicorn's request-response cycle while a request that ``take`` held
    is read or waits for its answer: it has the attributes uvicorn's connection code reads
    or writes on its cycle, the body read so far, and ``route`` for the subclass (what it
    needs to answer). ``more_body`` True: the body is read, no more is gathered."""

    __slots__ = ("keep_alive", "response_complete", "disconnected", "more_body", "body",
                 "route")
    message_event = _Ignore()

    def __init__(self, keep_alive: bool, route: Any) -> None:
        self.keep_alive = keep_alive
        self.response_complete = self.disconnected = False
        self.more_body, self.body = False, b""
        self.route = route


class UvicornProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the hooks above. ``event_loop``, ``peer`` (the
    client's address and port, or None) and ``url_scheme`` are set for the connection;
    ``head_room`` is the head's budget (see ``head_over``)."""

    # In slots: uvicorn's protocol has 28 attributes in its __dict__, and CPython (3.11)
    # shares the keys of, and specializes attribute access for, instance dicts only up to
    # 30; more made every attribute access on the hot path slower (measured: +0.4 us).
    __slots__ = ("head_room", "event_loop", "peer", "url_scheme", "trailing", "upgraded",
                 "listener")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_room = 0
        self.trailing = False  # the head is complete: a field now is a trailer's
        self.upgraded = False  # the parser stopped at an upgrade's head: nothing more is read
        self.event_loop: asyncio.AbstractEventLoop = self.loop
        self.peer: tuple[str, int] | None = None
        self.url_scheme = "http"
        self.listener = 0  # which port the connection came to (connection_made)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer, self.url_scheme = self.client, self.scheme or "http"
        self.listener = id(self.server_state)  # the port's server: one per port

    # -- hooks ------------------------------------------------------------------------------

    def head_begins(self) -> None:
        pass

    def head_over(self, target: bool) -> None:
        pass

    def head_ends(self, fields: int) -> None:
        pass

    def take(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
             expects_continue: bool) -> bool:
        return False

    def body_arrives(self) -> None:
        pass

    def body_complete(self, pending: Pending, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def chunk_begins(self) -> None:
        pass

    def chunk_ends(self) -> None:
        pass

    def message_ends(self) -> None:
        pass

    def bad_request(self, msg: str) -> None:
        HttpToolsProtocol.send_400_response(self, msg)

    def server_stopping(self) -> None:
        pass

    def writes_stalled(self, stalled: bool) -> None:
        pass

    def upgrade_asked(self, with_body: bool) -> None:
        if with_body:
            raise HttpParserError("a request with a body may not ask to upgrade the connection")

    def idle(self) -> None:
        # uvicorn's keep-alive timer, as on_response_complete arms it
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    # -- the server's calls ----------------------------------------------------------------

    def shutdown(self) -> None:
        self.server_stopping()
        super().shutdown()

    def pause_writing(self) -> None:
        HttpToolsProtocol.pause_writing(self)
        self.flow.pause_reading()
        self.writes_stalled(True)

    def resume_writing(self) -> None:
        HttpToolsProtocol.resume_writing(self)
        self.writes_stalled(False)
        if not self.pipeline:  # else the answer before the next one resumes it
            self.flow.resume_reading()

    def on_response_complete(self) -> None:
        # uvicorn reads again after each answer, whatever waits: requests pipelined without
        # reading the answers piled up without bound (an HTTP-layer probe). Here it reads
        # again once the queue is empty and the client reads its answers.
        HttpToolsProtocol.on_response_complete(self)
        if self.pipeline or self.flow.write_paused:
            self.flow.pause_reading()

    # -- the parser's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.trailing = False
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.head_begins()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_room -= len(url)
        if self.head_room < 0:
            self.head_over(True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_room -= len(name) + len(value)
        if self.head_room < 0:
            self.head_over(False)
        if self.trailing:
            return  # a trailer's field: counted above, never the request's
        # as HttpToolsProtocol.on_header
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self.headers
        self.trailing = True
        self.head_ends(len(headers))
        if self.parser.should_upgrade():
            self.upgrade_asked(any(name == b"transfer-encoding" or (
                name == b"content-length" and value.strip(b" \t0")) for name, value in headers))
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and self.take(
                self.parser.get_method(), self.url, headers, self.expect_100_continue):
            return
        # Left to the application: the scope uvicorn would have built in on_message_begin.
        url, expect = self.url, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        self.scope["extensions"] = {CUT: self.abort}
        HttpToolsProtocol.on_headers_complete(self)

    def body_kept(self) -> bool:
        """Whether the body being received is kept for its request: False once the request
        was answered (uvicorn drops the rest as it arrives) or when it is ignored (a held
        GET's)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return False
        return not (type(cycle) is Pending and cycle.more_body)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Pending:
            if not cycle.more_body:  # a body being read (a GET's body is ignored)
                cycle.body += body  # at most Content-Length: httptools holds to it
            return
        self.body_arrives()
        HttpToolsProtocol.on_body(self, body)

    def on_chunk_header(self) -> None:
        self.chunk_begins()

    def on_chunk_complete(self) -> None:
        self.chunk_ends()

    def on_message_complete(self) -> None:
        self.message_ends()
        cycle = self.cycle
        if type(cycle) is not Pending:
            HttpToolsProtocol.on_message_complete(self)
        elif not cycle.response_complete and not cycle.more_body:
            cycle.more_body = True  # read: from here on it waits for its answer
            self.body_complete(cycle, self.headers)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error so, the exceptions of our callbacks included
        self.bad_request(msg)

    def _should_upgrade(self) -> bool:
        return False  # uvicorn's: then the request gets its cycle, as any other

    def upgrade_declined(self) -> None:
        """The parser stopped after an upgrade's head: its request is answered as any, and
        its connection closes with that answer."""
        self.upgraded = True
        if self.answering():
            self.close_after_answer()
        else:  # answered in a callback already
            self.transport.close()

    # -- requests the subclass answers -------------------------------------------------------

    def hold(self, route: Any) -> Pending:
        """Hold the request being read (in ``take``): from here the subclass owns the
        connection until it answers with :meth:`respond`; requests pipelined behind it wait
        in uvicorn's queue."""
        # Kept alive as uvicorn's cycles are: never an HTTP/1.0 client's, which would
        # wait for a close, whatever its Connection header.
        keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() != "1.0"
        self.cycle = pending = Pending(keep_alive, route)  # type: ignore[assignment]
        return pending

    def respond(self, pending: Pending, status: int, head: bytes, body: bytes) -> None:
        """Answer a held request: the status line, the server's default headers, ``head``
        (header lines, each ending in CRLF), then ``body``; the connection is closed after
        it unless ``pending.keep_alive``."""
        pending.response_complete = True
        transport = self.transport
        if transport.is_closing():
            return
        if pending.keep_alive:
            transport.write(b"%s%s\r\n%s" % (self.status_and_defaults(status), head, body))
            if self.pipeline or self.flow.read_paused:
                self.on_response_complete()  # starts the request queued behind, reads again
            else:  # what on_response_complete does then, but for its keep-alive timer
                self.server_state.total_requests += 1
                self.idle()
        else:
            transport.write(b"%s%sconnection: close\r\n\r\n%s"
                            % (self.status_and_defaults(status), head, body))
            transport.close()

    def status_and_defaults(self, status: int) -> bytes:
        """The status line and the server's default headers (``Date``) of an answer written
        straight to the transport."""
        defaults = self.server_state.default_headers
        if defaults is not _defaults[0]:  # uvicorn makes a new list each second (the date)
            _defaults[:] = defaults, b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        return STATUS_LINE[status] + _defaults[1]

    # -- the connection's state, for the limits ---------------------------------------------

    def set_keep_alive_timeout(self, seconds: float) -> None:
        """How long uvicorn keeps a connection open after an answer (its keep-alive timer)."""
        self.timeout_keep_alive = seconds

    def keep_alive_deadline(self) -> float | None:
        """When uvicorn's keep-alive timer closes the connection, if it is armed."""
        task = self.timeout_keep_alive_task
        return None if task is None else task.when()

    def closing(self) -> bool:
        """The connection is closing, or no longer ours (upgraded to a WebSocket)."""
        transport = self.transport
        return transport.is_closing() or transport.get_protocol() is not self

    def transfer_codings(self) -> list[str]:
        """The request's transfer codings, in order (``Transfer-Encoding``, all its fields)."""
        return [coding.strip() for name, value in self.headers if name == b"transfer-encoding"
                for coding in value.decode("latin-1").lower().split(",")]

    def http_version(self) -> str:
        """The request line's HTTP version ("0.9" for a line without one)."""
        return self.parser.get_http_version()

    def queued(self) -> int:
        """Requests read and waiting behind the one being answered."""
        return len(self.pipeline)

    def in_request(self) -> bool:
        """A request was read on this connection (its cycle is there, answered or not)."""
        return self.cycle is not None

    def answering(self) -> bool:
        """A request read on this connection is not answered yet."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete

    def not_reading(self) -> bool:
        """uvicorn stopped reading (flow control, a pipelined request waiting), or the
        client waits for ``100 Continue``: a slow client is not at fault."""
        return self.flow.read_paused or getattr(self.cycle, "waiting_for_100_continue", False)

    def abandon_request(self) -> bool:
        """The request being read is given up: the application's ``receive()`` and
        ``send()`` see a disconnect. True if its answer was begun, or it is queued behind
        an answer not yet given (nothing more can be said on the connection)."""
        cycle = self.cycle
        answered = bool(self.pipeline) or getattr(cycle, "response_started",
                                                  cycle.response_complete)
        cycle.disconnected = True
        cycle.message_event.set()
        return answered

    def close_after_answer(self) -> None:
        """The answer being given closes the connection."""
        self.cycle.keep_alive = False

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()

    def unsent(self) -> int:
        """Bytes of answers written and not yet read by the client: the transport's, and the
        kernel's send queue (MBs; a slow reader empties it first, while the transport's
        buffer waits for room there)."""
        queued = 0
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                        b"\0\0\0\0"))[0]
        return self.transport.get_write_buffer_size() + queued

    def abort(self) -> None:
        """Close at once, with what is still to be sent dropped."""
        self.transport.abort()

    def shut_writing(self) -> bool:
        """Close our side only (the client may still send); False if the transport cannot,
        and it was closed instead."""
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return False
        transport.write_eof()
        return True


def parse_data(protocol: UvicornProtocol, data: bytes) -> None:
    """Feed the parser, as uvicorn's ``data_received`` (without super(): the hot path; for
    a subclass's ``data_received``), except that no connection is upgraded (``upgrade_asked``,
    ``upgrade_declined``) and nothing after an upgrade's head is read."""
    if protocol.upgraded:
        return
    protocol._unset_keepalive_if_required()
    try:
        protocol.parser.feed_data(data)
    except HttpParserError:
        msg = "Invalid HTTP request received."
        protocol.logger.warning(msg)
        protocol.send_400_response(msg)
    except HttpParserUpgrade:
        protocol.upgrade_declined()


# The server's default headers as uvicorn last gave them, and joined: one join a second.
_defaults: list[Any] = [None, b""]
