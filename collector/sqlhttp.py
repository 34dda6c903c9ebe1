"""ClickHouse's own HTTP interface (the port 8123 protocol) over the embedded store.

chDB lives inside the collector's process, so no other program can open its data. This app
answers ClickHouse's HTTP protocol instead, for curl, clickhouse-connect and other clients.

How requests map onto chDB (costs measured on the 2-core dev machine):

- Isolation. A request runs on a fresh chDB connection that is closed afterwards: connect +
  close costs ~0.1 ms, a ``SET`` ~0.08 ms and ``SELECT 1`` ~0.7 ms. So URL settings, ``SET``
  and ``USE`` statements and temporary tables can never leak into another request, which a
  pool could only promise by undoing every change, including those made by the queries.
- Sessions (``session_id``) keep one connection per user and session id, used by one
  request at a time as in ClickHouse. URL settings and ``database`` apply to one request
  only: they are undone afterwards, back to the engine's defaults, or, once the session has
  run ``SET`` or ``USE``, to its values read from ``system.settings`` (~3 ms). Idle
  sessions expire after ``session_timeout`` seconds.
- Read-only requests (read-only users, and every method but POST) are stateless. They get
  ``readonly = 1``, set after the URL settings have been applied, so settings still come
  from the URL while the query can neither write nor change them. Not ``readonly = 2``
  (what a ClickHouse server sets for GET): chDB then still runs ``INSERT INTO FUNCTION``
  and the table functions ``file()``, ``url()``, ``s3()``, ``remote()``, ``executable()``
  and ``Python()``, which write local files, reach the network and read this process's
  Python objects. Holes the engine leaves open in every mode are closed before a query
  reaches it: ``INTO OUTFILE`` and ``FROM INFILE`` for everyone (a ClickHouse server refuses
  them over HTTP too) and, for read-only requests, the scalar function ``file()``.
- Results are buffered, not streamed: chDB's ``send_query`` streams nothing but SELECTs,
  formats each chunk as a document of its own (JSON, CSVWithNames, Parquet and Arrow repeat
  their header) and yields nothing for an empty result, so a stream would not be what
  ClickHouse sends; buffering also gives every error its proper status. Insert data is
  streamed into ``send_insert`` as it arrives.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import hmac
import ipaddress
import itertools
import logging
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl

import anyio.from_thread
import anyio.to_thread
import lz4.frame
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from collector.storage.embedded import EmbeddedStore

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd

logger = logging.getLogger(__name__)

MAX_QUERY_BYTES = 1 << 20  # a query without data (ClickHouse's max_query_size is 256 KiB)
MAX_DATA_BYTES = 1 << 30  # a whole request body, after decompression
DEFAULT_SESSION_TIMEOUT = 60  # seconds, ClickHouse's default_session_timeout
MAX_SESSION_TIMEOUT = 3600
MAX_SESSIONS = 1000  # each holds a chDB connection
_STEP = 1 << 20  # decompress at most this much at once, so that a bomb is stopped early

_Connection = Any  # chdb.state.Connection, which has no type hints


@dataclass(frozen=True)
class SqlUser:
    name: str
    password: str
    readonly: bool


# --- errors -------------------------------------------------------------------------------

_NAMES = {
    36: "BAD_ARGUMENTS",
    48: "NOT_IMPLEMENTED",
    62: "SYNTAX_ERROR",
    73: "UNKNOWN_FORMAT",
    78: "UNKNOWN_TYPE_OF_QUERY",
    115: "UNKNOWN_SETTING",
    164: "READONLY",
    229: "QUERY_IS_TOO_LARGE",
    271: "CANNOT_DECOMPRESS",
    358: "INTO_OUTFILE_NOT_ALLOWED",
    372: "SESSION_NOT_FOUND",
    373: "SESSION_IS_LOCKED",
    374: "INVALID_SESSION_TIMEOUT",
    516: "AUTHENTICATION_FAILED",
    700: "USER_SESSION_LIMIT_EXCEEDED",
    779: "UNSUPPORTED_MEDIA_TYPE",
    1001: "STD_EXCEPTION",
}

# ClickHouse's exceptionCodeToHTTPStatus; every other code (READONLY among them) is a 500.
_STATUS = {
    194: 401,  # REQUIRED_PASSWORD
    # UNKNOWN_USER, WRONG_PASSWORD, ACCESS_DENIED, SET_NON_GRANTED_ROLE, AUTHENTICATION_FAILED
    **dict.fromkeys((192, 193, 497, 512, 516), 403),
    # BAD_ARGUMENTS, CANNOT_PARSE_*, SYNTAX_ERROR, INCORRECT_DATA, TYPE_MISMATCH, bad ASTs...
    **dict.fromkeys(
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168,
         223, 62, 117, 53, 321),
        400,
    ),
    # UNKNOWN_TABLE, _FUNCTION, _IDENTIFIER, _TYPE, _DATABASE, _SETTING, _FORMAT...
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((209, 76, 439), 503),  # SOCKET_TIMEOUT, CANNOT_OPEN_FILE, CANNOT_SCHEDULE_TASK
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    779: 415,  # UNSUPPORTED_MEDIA_TYPE
}

_CODE = re.compile(r"Code: (\d+)\.")
_VERSION_SUFFIX = re.compile(r"\(version [^)]*\)\s*$")


class SqlError(Exception):
    """A ClickHouse exception: its code and its text ``Code: N. DB::Exception: ... (NAME)``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @classmethod
    def of(cls, code: int, message: str) -> SqlError:
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({_NAMES[code]})")

    @classmethod
    def from_engine(cls, exc: Exception) -> SqlError:
        # chDB prefixes some messages ("Streaming insert finish failed: Code: 27. ...").
        text = str(exc)
        at = text.find("Code: ")
        match = _CODE.match(text, at) if at >= 0 else None
        if match is None:
            return cls.of(1001, text or type(exc).__name__)
        return cls(int(match.group(1)), text[at:].strip())


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    # chDB raises ChdbError (a RuntimeError) or a plain RuntimeError from send_insert.
    try:
        yield
    except RuntimeError as exc:
        raise SqlError.from_engine(exc) from None


# --- statements ---------------------------------------------------------------------------

# Just enough of ClickHouse's lexer to find where a statement's parts are; what a statement
# may do is left to the engine. Possessive quantifiers keep unterminated input linear.
# Whitespace and comments are unnamed; a "run" is bytes that mean nothing here (numbers,
# operators, binary data), matched at once to keep a large VALUES list cheap to scan.
_TOKEN = re.compile(
    rb"""
      [ \t\r\n\f\v]++
    | --[^\n]*+
    | /\*(?:[^*]++|\*(?!/))*+(?:\*/)?
    | (?P<string>'(?:[^'\\]++|\\.|'')*+'?
        | \$(?P<tag>[A-Za-z0-9_]*)\$(?:[^$]++|\$(?!(?P=tag)\$))*+(?:\$(?P=tag)\$)?)
    | (?P<quoted>"(?:[^"\\]++|\\.|"")*+"?|`(?:[^`\\]++|\\.|``)*+`?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*+)
    | (?P<run>[^A-Za-z_ \t\r\n\f\v'"`$\-/;()\[\]{}]++)
    | (?P<other>.)
    """,
    re.X | re.S,
)
_OPEN, _CLOSE = frozenset(b"([{"), frozenset(b")]}")
_RESULT_KEYWORDS = frozenset(
    (b"select", b"with", b"from", b"show", b"describe", b"desc", b"exists", b"explain",
     b"check", b"kill", b"watch", b"(")
)


class _Token(NamedTuple):
    kind: str
    text: bytes
    start: int
    end: int

    @property
    def name(self) -> bytes:
        """A word, or a quoted identifier without its quotes, lowercased."""
        return (self.text[1:-1] if self.kind == "quoted" else self.text).lower()


_NO_TOKEN = _Token("", b"", 0, 0)


def _tokens(sql: bytes) -> Iterator[_Token]:
    """The significant tokens of ``sql``: whitespace and comments are skipped."""
    for match in _TOKEN.finditer(sql):
        if match.lastgroup:
            yield _Token(match.lastgroup, match.group(), match.start(), match.end())


@dataclass
class _Statement:
    first: bytes = b""  # the first token (a keyword, or "("), lowercased; empty: no query
    multi: bool = False
    output_format: str | None = None  # a query's own FORMAT clause
    insert_format: str | None = None  # INSERT ... FORMAT X, or "Values" for a trailing VALUES
    head_end: int = 0  # INSERT: where that clause starts
    data_start: int = 0  # INSERT: where the inline data starts
    refusal: SqlError | None = None
    calls_file: bool = False

    @property
    def has_result(self) -> bool:
        return self.first in _RESULT_KEYWORDS


def _scan(sql: bytes, formats: Mapping[str, _Format]) -> _Statement:
    """Where ``sql``'s parts are. An INSERT's scan stops at its FORMAT clause: data follows."""
    st = _Statement()
    depth, ended, insert, data_follows = 0, False, False, False
    before = last = _NO_TOKEN  # the two tokens before this one
    for tok in _tokens(sql):
        if ended:
            st.multi = True
            break
        if tok.kind == "other":
            depth = _depth(tok.text, depth)
            ended = tok.text == b";" and depth == 0
            # Function names are case-sensitive, but may be quoted: `file`('/etc/passwd').
            st.calls_file |= tok.text == b"(" and last.kind in ("word", "quoted") and (
                last.text.strip(b'`"') == b"file"
            )
        elif tok.kind == "word":
            word = tok.text.lower()
            if not st.first:
                insert = data_follows = word == b"insert"
            elif word in (b"select", b"with", b"values") and depth == 0:
                # INSERT ... SELECT: a FORMAT there starts no data. INSERT ... VALUES: all
                # that follows is data, as in ClickHouse, whatever it says.
                data_follows = False
        elif tok.kind == "string":
            st.refusal = st.refusal or _refusal(before, last)
        st.first = st.first or tok.text.lower()
        fmt = _format_clause(last, tok, formats) if depth == 0 else None
        if fmt and data_follows:
            st.insert_format, st.head_end = fmt, last.start
            st.data_start = _data_start(sql, tok.end)
            return st
        st.output_format = fmt or st.output_format
        before, last = last, tok
    if insert and last.kind == "word" and last.name == b"values" and depth == 0:
        st.insert_format, st.head_end, st.data_start = "Values", last.start, len(sql)
    return st


def _depth(bracket: bytes, depth: int) -> int:
    if bracket[0] in _OPEN:
        return depth + 1
    if bracket[0] in _CLOSE:
        return max(depth - 1, 0)
    return depth


def _first_word(sql: bytes) -> bytes:
    return next(_tokens(sql), _NO_TOKEN).text.lower()


def _format_clause(last: _Token, tok: _Token, formats: Mapping[str, _Format]) -> str | None:
    # The format must be a known one: "INSERT INTO format FORMAT CSV" names a table "format".
    if tok.kind not in ("word", "quoted") or last.kind != "word" or last.name != b"format":
        return None
    known = formats.get(tok.name.decode("latin-1"))
    return known.name if known else None


def _refusal(before: _Token, last: _Token) -> SqlError | None:
    """What ClickHouse's HTTP interface refuses: reading or writing the server's own files."""
    pair = (before.name, last.name) if before.kind == last.kind == "word" else None
    if pair == (b"into", b"outfile"):
        return SqlError.of(358, "INTO OUTFILE is not allowed")
    if pair == (b"from", b"infile"):
        return SqlError.of(78, "Query has infile and was send directly to server")
    return None


def _data_start(sql: bytes, pos: int) -> int:
    # As ClickHouse: data starts after spaces and at most one line break past the format name.
    while pos < len(sql) and sql[pos] in b" \t\f":
        pos += 1
    if sql[pos : pos + 1] == b"\r":
        pos += 1
    if sql[pos : pos + 1] == b"\n":
        pos += 1
    return pos


def _decode(sql: bytes) -> str:
    try:
        return sql.decode("utf-8")
    except UnicodeDecodeError:
        raise SqlError.of(36, "The query is not valid UTF-8") from None


# --- compression --------------------------------------------------------------------------


class _Inflater(Protocol):
    eof: bool
    unused_data: bytes
    needs_input: bool

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _ZlibInflater:
    """zlib's decompressor with the interface of lz4's and zstd's."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib, told by the header
        self._tail = b""
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        out = self._z.decompress(self._tail + data, max(max_length, 0))
        self._tail = self._z.unconsumed_tail
        self.needs_input = not self._tail and (max_length < 0 or len(out) < max_length)
        return out

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data


_INFLATERS: dict[str, Callable[[], _Inflater]] = {
    "gzip": _ZlibInflater,
    "x-gzip": _ZlibInflater,
    "deflate": _ZlibInflater,
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "zstd": zstd.ZstdDecompressor,
}


class _Decoder:
    """Decompresses a body of one or more frames (clickhouse-connect sends a frame per block)."""

    def __init__(self, new: Callable[[], _Inflater]) -> None:
        self._new = new
        self._inflater: _Inflater | None = None

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while data or (self._inflater and not self._inflater.needs_input):
                self._inflater = self._inflater or self._new()
                out = self._inflater.decompress(data, _STEP)
                data = b""
                if out:
                    yield out
                if self._inflater.eof:
                    data, self._inflater = self._inflater.unused_data, None
        except (zlib.error, RuntimeError, zstd.ZstdError, EOFError) as exc:
            raise SqlError.of(271, f"Cannot decompress the request body: {exc}") from None

    def finish(self) -> None:
        if self._inflater is not None:
            raise SqlError.of(271, "Cannot decompress the request body: it ends mid-frame")


def _zlib(data: bytes, level: int, wbits: int) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return z.compress(data) + z.flush()


_DEFLATERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: _zlib(data, 3, 16 + zlib.MAX_WBITS),  # level 3 as ClickHouse's default
    "deflate": lambda data: _zlib(data, 3, zlib.MAX_WBITS),
    "zstd": zstd.compress,
    "lz4": lz4.frame.compress,
}


_REFUSED = re.compile(r"\s*q\s*=\s*0(?:\.0*)?\s*")


def _response_encoding(accept: str) -> str | None:
    """The first encoding the client lists that we support (clickhouse-connect lists lz4 first)."""
    for item in accept.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower().removeprefix("x-")
        if name in _DEFLATERS and not _REFUSED.fullmatch(params):
            return name
    return None


# --- request bodies -----------------------------------------------------------------------


class _Body:
    """The request body, decompressed, pulled from the event loop by the worker thread."""

    def __init__(
        self, pull: Callable[[], bytes | None], decoder: _Decoder | None, limit: int
    ) -> None:
        self._pull, self._decoder, self._limit = pull, decoder, limit
        self._size = 0
        self._chunks = self._generate()

    def _generate(self) -> Iterator[bytes]:
        while (raw := self._pull()) is not None:
            for chunk in self._decoder.feed(raw) if self._decoder else (raw,):
                self._size += len(chunk)
                if self._size > self._limit:
                    raise SqlError.of(229, f"The request body is larger than {self._limit} bytes")
                yield chunk
        if self._decoder:
            self._decoder.finish()

    def read(self, size: int) -> bytes:
        """At least ``size`` bytes from where the body is, or all of it if it is shorter."""
        buf = bytearray()
        for chunk in self._chunks:
            buf += chunk
            if len(buf) >= size:
                break
        return bytes(buf)

    def rest(self) -> Iterator[bytes]:
        return self._chunks


def _no_body() -> None:
    return None


async def _receive(stream: AsyncIterator[bytes]) -> bytes | None:
    return await anext(stream, None)


def _puller(stream: AsyncIterator[bytes]) -> Callable[[], bytes | None]:
    """Reads the next chunk of ``stream`` from a worker thread, through the event loop."""

    def pull() -> bytes | None:
        return anyio.from_thread.run(_receive, stream)

    return pull


# --- sessions -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Session:
    conn: _Connection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    expires: float = 0.0
    # Whether a SET or USE statement ran: until then the connection holds the engine's
    # defaults, and a request's URL settings can be undone without reading them first.
    changed: bool = False

    def reset(self) -> None:
        """Drop the connection: its state could not be restored, the next request starts anew."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        self.changed = False


class _Sessions:
    def __init__(self, connect: Callable[[], _Connection]) -> None:
        self._connect = connect
        self._items: dict[tuple[str, str], _Session] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(
        self, key: tuple[str, str], timeout: float, check: bool, close: bool
    ) -> Iterator[_Session]:
        """The session ``key`` (made if new), locked to this request; ``close`` ends it after."""
        session = self._acquire(key, check)
        try:
            if session.conn is None:
                session.conn = self._connect()
            yield session
        finally:
            session.expires = time.monotonic() + timeout
            if close:
                with self._lock:
                    self._items.pop(key, None)
                session.reset()
            session.lock.release()

    def _acquire(self, key: tuple[str, str], check: bool) -> _Session:
        with self._lock:
            self._expire()
            session = self._items.get(key)
            if session is None:
                if check:
                    raise SqlError.of(372, f"Session {key[1]} not found")
                if len(self._items) >= MAX_SESSIONS:
                    raise SqlError.of(700, f"Too many sessions: {MAX_SESSIONS} are open")
                session = self._items[key] = _Session()
            if not session.lock.acquire(blocking=False):
                raise SqlError.of(373, f"Session {key[1]} is locked by a concurrent client")
            return session

    def _expire(self) -> None:
        now = time.monotonic()
        for key, session in list(self._items.items()):
            if session.expires and session.expires < now and session.lock.acquire(blocking=False):
                del self._items[key]
                session.reset()
                session.lock.release()

    def close_all(self) -> None:
        with self._lock:
            sessions, self._items = list(self._items.values()), {}
        for session in sessions:
            session.reset()


# --- a request ----------------------------------------------------------------------------

# Parameters that are not settings (as ClickHouse's HTTPHandler reserves them).
_RESERVED = frozenset(
    ("query", "user", "password", "quota_key", "query_id", "database", "default_format",
     "session_id", "session_timeout", "session_check", "close_session", "compress",
     "decompress", "buffer_size", "wait_end_of_query", "stacktrace", "client_protocol_version",
     "role")
)
# Settings a ClickHouse server's HTTP layer consumes; chDB has no HTTP layer to pass them to.
_HTTP_SETTINGS = frozenset(
    ("send_progress_in_http_headers", "http_headers_progress_interval_ms",
     "enable_http_compression", "http_zlib_compression_level")
)
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class _Format:
    name: str
    content_type: str


@dataclass
class _Call:
    user: SqlUser
    readonly: bool
    query_id: str
    query: str | None
    binds: dict[str, str]
    settings: dict[str, str]
    database: str | None
    default_format: _Format
    session: tuple[str, str] | None
    session_timeout: float
    session_check: bool
    close_session: bool
    encoding: str | None  # of the response


@dataclass
class _Result:
    body: bytes
    summary: dict[str, int]
    output_format: _Format | None  # None: the statement returns no result set
    encoding: str | None = None


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true")


def _session_timeout(value: str | None) -> float:
    if value is None:
        return DEFAULT_SESSION_TIMEOUT
    if not value.isdigit():
        raise SqlError.of(374, f"Invalid session timeout: '{value}'")
    if int(value) > MAX_SESSION_TIMEOUT:
        raise SqlError.of(
            374,
            f"Session timeout '{value}' is larger than max_session_timeout: {MAX_SESSION_TIMEOUT}",
        )
    return int(value)


def _set(conn: _Connection, settings: Mapping[str, str | None]) -> None:
    """One SET for all ``settings``; None restores a setting's default."""
    if settings:
        changes = (f"{k} = {'DEFAULT' if v is None else _quote(v)}" for k, v in settings.items())
        conn.query("SET " + ", ".join(changes))


def _apply(conn: _Connection, call: _Call) -> None:
    settings = call.settings
    if call.readonly:  # readonly is ours to set, below
        settings = {k: v for k, v in settings.items() if k != "readonly"}
    _set(conn, settings)
    if call.database:
        conn.query(f"USE {_identifier(call.database)}")
    if call.readonly:
        conn.query("SET readonly = 1")


@dataclass
class _Saved:
    database: str
    settings: dict[str, str | None]


def _read_state(conn: _Connection, call: _Call) -> _Saved:
    names = ", ".join(map(_quote, call.settings)) or "''"
    row = orjson.loads(
        conn.query(
            "SELECT currentDatabase() AS db, groupArray((name, value, changed)) AS s "
            f"FROM system.settings WHERE name IN ({names})",
            "JSONEachRow",
        ).bytes()
    )
    # A name missing from system.settings was refused by SET and needs no restoring.
    settings = {name: value if changed else None for name, value, changed in row["s"]}
    return _Saved(row["db"], settings)


def _restore(conn: _Connection, saved: _Saved) -> None:
    _set(conn, saved.settings)
    conn.query(f"USE {_identifier(saved.database)}")


def _summary(
    read: tuple[int, int], written: tuple[int, int], result: tuple[int, int], elapsed: float
) -> dict[str, int]:
    return {
        "read_rows": read[0],
        "read_bytes": read[1],
        "written_rows": written[0],
        "written_bytes": written[1],
        "total_rows_to_read": read[0],  # chDB reports no estimate; what was read is exact
        "result_rows": result[0],
        "result_bytes": result[1],
        "elapsed_ns": int(elapsed * 1e9),
    }


def _query_summary(result: Any) -> dict[str, int]:
    def stat(name: str) -> int:
        return int(getattr(result, name, lambda: 0)())

    return _summary(
        (stat("storage_rows_read"), stat("storage_bytes_read")),
        (stat("rows_written"), stat("bytes_written")),
        (stat("rows_read"), stat("bytes_read")),
        float(getattr(result, "elapsed", lambda: 0.0)()),
    )


def _is_loopback(client: tuple[str, int] | None) -> bool:
    if client is None:  # a Unix socket: not from the network
        return True
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


class _LoopbackOnly:
    """Refuses peers outside the loopback range, whatever listens in front of the app."""

    def __init__(self, app: ASGIApp, refuse: Callable[[], Response]) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_loopback(scope.get("client")):
            await self.refuse()(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- the app ------------------------------------------------------------------------------


class _SqlInterface:
    def __init__(
        self, store: EmbeddedStore, users: Mapping[str, SqlUser], max_data_bytes: int
    ) -> None:
        self.store = store
        self.users = dict(users)
        self.max_data_bytes = max_data_bytes
        self.sessions = _Sessions(store.new_connection)
        self.display_name = socket.gethostname()
        conn = store.new_connection()
        try:
            self.version, self.timezone, compression, self.database = orjson.loads(
                conn.query(
                    "SELECT version(), timezone(), getSetting('enable_http_compression'), "
                    "currentDatabase()",
                    "JSONCompactEachRow",
                ).bytes()
            )
            rows = conn.query("SELECT name, content_type FROM system.formats", "JSONEachRow")
            names = conn.query("SELECT name FROM system.settings", "TabSeparatedRaw")
        finally:
            conn.close()
        self.setting_names = frozenset(names.bytes().decode().splitlines())
        # The engine's default, as ClickHouse does (chDB turns it on).
        self.compress_by_default = bool(compression)
        self.formats = {
            row["name"].lower(): _Format(row["name"], row["content_type"])
            for row in map(orjson.loads, rows.bytes().splitlines())
        }

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self.sessions.close_all)

    async def ping(self, request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def query(self, request: Request) -> Response:
        query_id = ""
        try:
            params = _query_params(request)
            query_id = (
                params.get("query_id") or request.headers.get("x-clickhouse-query-id")
            ) or str(uuid.uuid4())
            if request.method in ("GET", "HEAD") and not params.get("query"):
                return PlainTextResponse("Ok.\n")  # ClickHouse's root page
            user = self._authenticate(request, params)
            decoder = self._decoder(request)
            pull: Callable[[], bytes | None] = _no_body
            if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
                params.update(await self._form(request, decoder))
            else:
                pull = _puller(request.stream())
            call = self._call(request, params, user, query_id)
            body = _Body(pull, decoder, self.max_data_bytes)
            result = await anyio.to_thread.run_sync(self._execute, call, body)
            return self._response(call, result)
        except SqlError as exc:
            return self._error(exc, query_id)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening
        except Exception:
            logger.exception("SQL interface: unexpected error")
            return self._error(SqlError.of(1001, "Internal error, see the collector's log"), "")

    # -- request parsing (event loop)

    def _authenticate(self, request: Request, params: Mapping[str, str]) -> SqlUser:
        name, password = _credentials(request, params)
        user = self.users.get(name)
        # Compare even for an unknown user, so that timing does not tell which names exist.
        expected = user.password if user else uuid.uuid4().hex
        if not hmac.compare_digest(password.encode(), expected.encode()) or user is None:
            raise SqlError.of(
                516,
                f"{name}: Authentication failed: password is incorrect, "
                "or there is no user with such name",
            )
        return user

    def _call(
        self, request: Request, params: Mapping[str, str], user: SqlUser, query_id: str
    ) -> _Call:
        binds: dict[str, str] = {}
        settings: dict[str, str] = {}
        for name, value in params.items():
            if name.startswith("param_"):
                binds[name.removeprefix("param_")] = value
            elif name and name not in _RESERVED and name not in _HTTP_SETTINGS:
                if not _SETTING_NAME.fullmatch(name):
                    raise SqlError.of(115, f"Unknown setting '{name}'")
                settings[name] = value
        fmt_name = params.get("default_format") or request.headers.get("x-clickhouse-format")
        session_id = params.get("session_id")
        compress = params.get("enable_http_compression")
        accept = request.headers.get("accept-encoding", "")
        return _Call(
            user=user,
            # As ClickHouse: anything but POST is read-only.
            readonly=user.readonly or request.method != "POST",
            query_id=query_id,
            query=params.get("query"),
            binds=binds,
            settings=settings,
            database=params.get("database") or request.headers.get("x-clickhouse-database"),
            default_format=self._format(fmt_name or "TabSeparated"),
            session=(user.name, session_id) if session_id else None,
            session_timeout=_session_timeout(params.get("session_timeout")) if session_id else 0,
            session_check=_flag(params.get("session_check", "0")),
            close_session=_flag(params.get("close_session", "0")),
            encoding=(
                _response_encoding(accept)
                if (_flag(compress) if compress is not None else self.compress_by_default)
                else None
            ),
        )

    def _format(self, name: str) -> _Format:
        fmt = self.formats.get(name.lower())
        if fmt is None:
            raise SqlError.of(73, f"Unknown format {name}")
        return fmt

    def _decoder(self, request: Request) -> _Decoder | None:
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return None
        if encoding not in _INFLATERS:
            raise SqlError.of(779, f"Unsupported Content-Encoding: {encoding}")
        return _Decoder(_INFLATERS[encoding])

    async def _form(self, request: Request, decoder: _Decoder | None) -> dict[str, str]:
        """Fields of a multipart/form-data body (clickhouse-connect's long parameters)."""
        raw = bytearray()
        async for chunk in request.stream():
            raw += b"".join(decoder.feed(chunk)) if decoder else chunk
            if len(raw) > MAX_QUERY_BYTES:
                raise SqlError.of(229, f"The form is larger than {MAX_QUERY_BYTES} bytes")
        if decoder:
            decoder.finish()
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            if part.get_filename() is not None:
                raise SqlError.of(48, "External data (files in the form) is not supported")
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = _decode(part.get_payload(decode=True) or b"")
        return fields

    # -- execution (worker thread)

    def _execute(self, call: _Call, body: _Body) -> _Result:
        sql, st, data = self._statement(call, body)
        if not st.first:
            raise SqlError.of(62, "Syntax error: Empty query")
        if st.multi:
            raise SqlError.of(62, "Syntax error: Multi-statements are not allowed")
        if st.refusal:
            raise st.refusal
        if call.readonly and st.calls_file:
            raise SqlError.of(164, "Cannot execute query in readonly mode: file() is not allowed")
        with self._connection(call, st.first) as conn, _engine_errors():
            if data is not None:
                return self._insert(conn, sql, st.insert_format or "", data)
            result = conn.query(sql, call.default_format.name, params=call.binds)
            out = result.bytes()
        fmt = (self._format(st.output_format) if st.output_format else call.default_format)
        encoding = call.encoding if out else None
        if encoding:
            out = _DEFLATERS[encoding](out)
        return _Result(out, _query_summary(result), fmt if st.has_result else None, encoding)

    def _statement(
        self, call: _Call, body: _Body
    ) -> tuple[str, _Statement, Iterator[bytes] | None]:
        """The statement (a query, or an INSERT's head) and, for an INSERT, its data.

        As ClickHouse: the query is the ``query`` parameter, a line break and the body, or the
        body alone; an INSERT's data follows its FORMAT clause (or a trailing VALUES).
        """
        limit = MAX_QUERY_BYTES
        if call.query is not None:
            head = call.query.encode() + b"\n"
            st = _scan(head, self.formats)
            if st.insert_format:
                return self._insert_parts(head, st, body)
            rest = body.read(limit + 1 - len(head))
            text = head + rest if rest else call.query.encode()
            if rest:
                st = _scan(text, self.formats)
        else:
            text = body.read(limit + 1)
            if len(text) > limit and _first_word(text) != b"insert":  # no need to scan it
                raise SqlError.of(229, f"The query is larger than {limit} bytes")
            st = _scan(text, self.formats)
            if st.insert_format:
                return self._insert_parts(text, st, body)
        if len(text) > limit:
            raise SqlError.of(229, f"The query is larger than {limit} bytes")
        return _decode(text), st, None

    @staticmethod
    def _insert_parts(
        text: bytes, st: _Statement, body: _Body
    ) -> tuple[str, _Statement, Iterator[bytes]]:
        data = itertools.chain((text[st.data_start :],), body.rest())
        return _decode(text[: st.head_end]), st, data

    @staticmethod
    def _insert(conn: _Connection, head: str, fmt: str, data: Iterator[bytes]) -> _Result:
        with conn.send_insert(head, fmt) as inserter:
            for chunk in data:
                if chunk:
                    inserter.append(chunk)
            done = inserter.finish()
        written = (done.rows_written, done.bytes_written)
        return _Result(b"", _summary((0, 0), written, written, done.elapsed), None)

    @contextlib.contextmanager
    def _connection(self, call: _Call, first: bytes) -> Iterator[_Connection]:
        # A read-only request can keep no state (readonly = 1 allows neither SET nor
        # temporary tables), so its session id needs no connection of its own.
        if call.session is None or call.readonly:
            conn = self.store.new_connection()
            try:
                with _engine_errors():
                    _apply(conn, call)
                yield conn
            finally:
                conn.close()
            return
        with self.sessions.use(
            call.session, call.session_timeout, call.session_check, call.close_session
        ) as session:
            yield from self._in_session(session, call, first)

    def _in_session(self, session: _Session, call: _Call, first: bytes) -> Iterator[_Connection]:
        conn = session.conn
        saved = None
        try:
            with _engine_errors():
                if call.settings or call.database:
                    saved = self._save(session, call)
                _apply(conn, call)
            # Only SET and USE change a session (multi-statements are refused).
            session.changed = session.changed or first in (b"set", b"use")
            yield conn
        finally:
            if saved is not None:
                try:
                    _restore(conn, saved)
                except Exception:  # e.g. readonly=1 forbids changing settings back
                    session.reset()

    def _save(self, session: _Session, call: _Call) -> _Saved:
        if session.changed:
            return _read_state(session.conn, call)
        # Defaults throughout; a name the engine does not know was refused by SET anyway.
        defaults = {name: None for name in call.settings if name in self.setting_names}
        return _Saved(self.database, defaults)

    # -- responses

    def _headers(self, query_id: str) -> dict[str, str]:
        headers = {"X-ClickHouse-Server-Display-Name": self.display_name}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        return headers

    def _response(self, call: _Call, result: _Result) -> Response:
        headers = self._headers(call.query_id)
        headers["X-ClickHouse-Timezone"] = call.settings.get("session_timezone") or self.timezone
        headers["X-ClickHouse-Summary"] = orjson.dumps(
            {k: str(v) for k, v in result.summary.items()}
        ).decode()
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        if result.output_format:
            headers["X-ClickHouse-Format"] = result.output_format.name
            headers["Content-Type"] = result.output_format.content_type
        if result.encoding:
            headers["Content-Encoding"] = result.encoding
        return Response(result.body, headers=headers)

    def _error(self, exc: SqlError, query_id: str) -> Response:
        text = exc.text
        if not _VERSION_SUFFIX.search(text):
            text += f" (version {self.version})"
        headers = self._headers(query_id)
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        return Response(text + "\n", status_code=_STATUS.get(exc.code, 500), headers=headers)

    def refuse_peer(self) -> Response:
        return self._error(
            SqlError.of(516, "Authentication failed: connections are accepted from loopback only"),
            "",
        )


def _query_params(request: Request) -> dict[str, str]:
    # Starlette would replace invalid UTF-8 silently; the query must be refused instead.
    try:
        pairs = parse_qsl(
            request.scope["query_string"].decode("latin-1"), keep_blank_values=True, errors="strict"
        )
    except UnicodeDecodeError:
        raise SqlError.of(36, "The URL parameters are not valid UTF-8") from None
    return dict(pairs)


def _credentials(request: Request, params: Mapping[str, str]) -> tuple[str, str]:
    """User and password, from one of the three places ClickHouse accepts them."""
    header_user = request.headers.get("x-clickhouse-user", "")
    header_key = request.headers.get("x-clickhouse-key", "")
    authorization = request.headers.get("authorization")
    in_params = "user" in params or "password" in params
    if header_user or header_key:
        if authorization is not None:
            raise _mixed("X-ClickHouse HTTP headers", "Authorization HTTP header")
        if in_params:
            raise _mixed("X-ClickHouse HTTP headers", "authentication via parameters")
        return _user_name(header_user, "X-ClickHouse HTTP headers"), header_key
    if authorization is not None:
        if in_params:
            raise _mixed("Authorization HTTP header", "authentication via parameters")
        return _basic(authorization)
    user = _user_name(params.get("user", "default"), "authentication via parameters")
    return user, params.get("password", "")


def _basic(authorization: str) -> tuple[str, str]:
    scheme, _, info = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise SqlError.of(
            516, f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported"
        )
    try:
        decoded = base64.b64decode(info.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SqlError.of(516, "Invalid authentication: malformed Basic credentials") from None
    user, _, password = decoded.partition(":")
    return _user_name(user, "Authorization HTTP header"), password


def _user_name(name: str, source: str) -> str:
    if not name:
        raise SqlError.of(516, f"Got an empty user name from {source}")
    return name


def _mixed(first: str, second: str) -> SqlError:
    return SqlError.of(
        516, f"Invalid authentication: it is not allowed to use {first} and {second} simultaneously"
    )


def build_sql_app(
    store: EmbeddedStore,
    users: Mapping[str, SqlUser],
    loopback_only: bool,
    *,
    max_data_bytes: int = MAX_DATA_BYTES,
) -> ASGIApp:
    """ClickHouse's HTTP interface over ``store`` for the users of ``users``.

    ``users`` is the complete user table. With ``loopback_only``, peers outside the loopback
    range are refused even if a proxy or a wider listener lets them in.
    """
    sql = _SqlInterface(store, users, max_data_bytes)
    app = Starlette(
        routes=[
            Route("/", sql.query, methods=["GET", "POST"]),
            Route("/ping", sql.ping, methods=["GET"]),
            Route("/replicas_status", sql.ping, methods=["GET"]),
        ],
        lifespan=sql.lifespan,
    )
    return _LoopbackOnly(app, sql.refuse_peer) if loopback_only else app
