"""The ASGI app: authentication, routing of a request onto chDB, responses."""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import hmac
import itertools
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.from_thread
import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from collector.sqlhttp import bound_values, policy, strings
from collector.sqlhttp.bodies import Body, no_body, puller, receiver
from collector.sqlhttp.calls import (
    HTTP_SETTINGS,
    RESERVED,
    SETTING_NAME,
    Call,
    LoopbackOnly,
    Result,
    Saved,
    apply_call,
    call_summary,
    enforced_settings,
    flag,
    parse_session_timeout,
    query_summary,
    query_tag,
    read_state,
    reader_settings,
    restore,
    table_filters,
)
from collector.sqlhttp.compress import DEFLATERS, INFLATERS, Decoder, response_encoding
from collector.sqlhttp.config import (
    CANCEL_AGAIN_SECONDS,
    MAX_DATA_BYTES,
    MAX_QUERY_BYTES,
    QUERY_TEXT_SECONDS,
    REPLAY_BYTES,
    Connection,
    QueryLimits,
    SqlUser,
)
from collector.sqlhttp.errors import STATUS, VERSION_SUFFIX, SqlError, engine_errors
from collector.sqlhttp.results import PLACEHOLDER, check_outfile_only, read_bounded, with_outfile
from collector.sqlhttp.sessions import Session, Sessions
from collector.sqlhttp.slots import ReaderSlots
from collector.sqlhttp.statements import (
    Format,
    Statement,
    decode_text,
    first_word,
    scan_statement,
)
from collector.sqlhttp.syntax import Parsed, parse
from collector.sqlhttp.targets import insert_target, repeatable
from collector.sqlhttp.values import check_value
from collector.storage.base import StorageError, escape_param
from collector.storage.embedded import EmbeddedStore, errors_counted, insert_statement
from collector.storage.engine_config import SITE_TABLES
from collector.web.authorization import basic_credentials, split_authorization
from collector.web.held import HeldResponse

logger = logging.getLogger("collector.sqlhttp")


class _SqlInterface:
    def __init__(
        self, store: EmbeddedStore, users: Mapping[str, SqlUser], max_data_bytes: int,
        limits: QueryLimits,
    ) -> None:
        self.store = store
        self.users = dict(users)
        self.max_data_bytes = max_data_bytes
        self.limits = limits
        self.readers = ReaderSlots()
        # Tags (user and query id) of the queries executing now: one at a time per tag.
        self._running: set[str] = set()
        self._virtual: frozenset[str] = frozenset()  # _virtual_columns
        self.sessions = Sessions(store.new_connection)
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
            texts = conn.query("SELECT name FROM system.settings WHERE type IN "
                               "('String', 'Map', 'URI')", "TabSeparatedRaw")
            functions = conn.query("SELECT name FROM system.functions WHERE origin = 'System' "
                                   "UNION ALL SELECT name FROM system.table_functions",
                                   "TabSeparatedRaw")
        finally:
            conn.close()
        self.setting_names = frozenset(names.bytes().decode().splitlines())
        # Settings whose values are text: a writer's come from an allow-list (policy.py).
        self.text_settings = frozenset(texts.bytes().decode().splitlines())
        # A newer engine's functions, refused until reviewed (policy.unreviewed).
        self.unreviewed = policy.unreviewed(functions.bytes().decode().splitlines())
        if self.unreviewed:
            logger.warning("SQL interface: %d functions of this engine are refused until "
                           "reviewed (collector/sqlhttp/reviewed_functions.txt): %s",
                           len(self.unreviewed), ", ".join(sorted(self.unreviewed)[:20]))
        # The engine's default, as ClickHouse does (chDB turns it on).
        self.compress_by_default = bool(compression)
        self.formats = {
            row["name"].lower(): Format(row["name"], row["content_type"])
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
        body: Body | None = None
        try:
            params = _query_params(request)
            query_id = _query_id(
                params.get("query_id") or request.headers.get("x-clickhouse-query-id")
            )
            if request.method in ("GET", "HEAD") and not params.get("query"):
                return PlainTextResponse("Ok.\n")  # ClickHouse's root page
            user = self._authenticate(request, params)
            decoder = self._decoder(request)
            stream = request.stream()
            if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
                body = Body(no_body, decoder, MAX_QUERY_BYTES)
                await self._read_ahead(body, stream)
                params.update(self._form(request, body.read(MAX_QUERY_BYTES + 1)))
            else:
                body = Body(puller(stream), decoder, self.max_data_bytes)
                if user.readonly:  # its text, however it comes, before a thread or a slot
                    await self._read_ahead(body, stream)
            call = self._call(request, params, user, query_id)
            with contextlib.ExitStack() as slot:
                # A reader's slot covers what its query holds: the run, and the result
                # until it is sent (a client that does not read would hold it anyway).
                if user.readonly:
                    slot.enter_context(self.readers.taken(user.name))
                result = await self._run(request, call, body)
                response = self._response(call, result)
                response.release = slot.pop_all().close
                if user.readonly:  # as long as its query may run, and no longer
                    response.deadline = self.limits.max_execution_time
                return response
        except SqlError as exc:
            return self._error(exc, query_id, close=_unread(request, body))
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is listening
        except Exception:
            logger.exception("SQL interface: unexpected error")
            return self._error(SqlError.of(1001, "Internal error, see the collector's log"), "",
                               close=_unread(request, body))
        finally:
            if body is not None:  # what it read ahead, answered or not
                body.close()

    async def _run(self, request: Request, call: Call, body: Body) -> Result:
        """Execute ``call``; cancel its query in the engine if the client goes away once
        the request is read (a query nobody waits for would run on to its time limit).
        The cancel is repeated until the execution ends: a client gone while the statement
        is parsed and checked leaves nothing to cancel yet, and the query starts after."""
        # As ClickHouse refuses a query id already running: the cancel on hang-up finds
        # its query by the tag and would cancel a second one too (a client's retry).
        if call.tag in self._running:
            raise SqlError.of(216, f"Query with id = {call.query_id} is already running")
        self._running.add(call.tag)
        body_read = anyio.Event()

        async def watch() -> None:
            await body_read.wait()
            while (await request.receive())["type"] != "http.disconnect":
                pass
            while True:  # this task is cancelled when the execution ends
                await anyio.to_thread.run_sync(self._cancel, call.tag)
                await anyio.sleep(CANCEL_AGAIN_SECONDS)

        def read() -> None:
            anyio.from_thread.run_sync(body_read.set)

        watcher = asyncio.ensure_future(watch())
        try:
            return await anyio.to_thread.run_sync(self._execute, call, body, read)
        finally:
            watcher.cancel()
            # A cancel already sent to its thread runs to its end: the id is free only
            # after it, or it could cancel the next query under the id.
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._running.discard(call.tag)

    def _cancel(self, tag: str) -> None:
        conn = self.store.new_connection()
        try:
            conn.query(
                "KILL QUERY WHERE Settings['log_comment'] = {tag:String} ASYNC",
                params={"tag": escape_param(tag)},
            )
        except RuntimeError:
            logger.warning("SQL interface: could not cancel a query", exc_info=True)
        finally:
            conn.close()

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
    ) -> Call:
        binds: dict[str, str] = {}
        settings: dict[str, str] = {}
        for name, value in params.items():
            if name.startswith("param_") or name not in RESERVED:
                check_value(value)  # a parameter's or a setting's value
            if name.startswith("param_"):
                binds[name.removeprefix("param_")] = value
            elif name and name not in RESERVED and name not in HTTP_SETTINGS:
                if not SETTING_NAME.fullmatch(name):
                    raise SqlError.of(115, f"Unknown setting '{name}'")
                if not user.readonly:  # (reader_settings allows a reader a few)
                    policy.check_setting(name, self.text_settings)
                settings[name] = value
        if user.readonly:
            settings = reader_settings(settings, self.limits, user.site_scoped)
        fmt_name = params.get("default_format") or request.headers.get("x-clickhouse-format")
        session_id = params.get("session_id")
        compress = params.get("enable_http_compression")
        accept = request.headers.get("accept-encoding", "")
        return Call(
            user=user,
            # As ClickHouse: anything but POST is read-only.
            readonly=user.readonly or request.method != "POST",
            query_id=query_id,
            tag=query_tag(user, query_id),
            query=params.get("query"),
            binds=binds,
            settings=settings,
            database=params.get("database") or request.headers.get("x-clickhouse-database"),
            default_format=self._format(fmt_name or "TabSeparated"),
            session=(user.name, session_id) if session_id else None,
            session_timeout=(parse_session_timeout(params.get("session_timeout"))
                             if session_id else 0),
            session_check=flag(params.get("session_check", "0")),
            close_session=flag(params.get("close_session", "0")),
            encoding=(
                response_encoding(accept)
                if (flag(compress) if compress is not None else self.compress_by_default)
                else None
            ),
        )

    def _format(self, name: str) -> Format:
        fmt = self.formats.get(name.lower())
        if fmt is None:
            raise SqlError.of(73, f"Unknown format {name}")
        return fmt

    def _decoder(self, request: Request) -> Decoder | None:
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return None
        if encoding not in INFLATERS:
            raise SqlError.of(779, f"Unsupported Content-Encoding: {encoding}")
        return Decoder(INFLATERS[encoding])

    @staticmethod
    async def _read_ahead(body: Body, stream: AsyncIterator[bytes]) -> None:
        """Read a query's text (or form) ahead, within ``QUERY_TEXT_SECONDS``: the body
        timeout bounds the pauses only, and a byte every few seconds would hold a
        connection for days."""
        try:
            with anyio.fail_after(QUERY_TEXT_SECONDS):
                await body.prefetch(receiver(stream), MAX_QUERY_BYTES + 1)
        except TimeoutError:
            raise SqlError.of(209, f"The query did not arrive within {QUERY_TEXT_SECONDS} s "
                                   "(a timeout while receiving it)") from None

    @staticmethod
    def _form(request: Request, raw: bytes) -> dict[str, str]:
        """Fields of a multipart/form-data body (clickhouse-connect's long parameters)."""
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            if part.get_filename() is not None:
                raise SqlError.of(48, "External data (files in the form) is not supported")
            name = part.get_param("name", header="content-disposition")
            fields[str(name)] = decode_text(part.get_payload(decode=True) or b"")
        return fields

    # -- execution (worker thread)

    def _execute(self, call: Call, body: Body, read: Callable[[], None]) -> Result:
        try:
            return self._checked(call, body, self._scope(call) if call.user.readonly else None,
                                 read)
        finally:
            if not call.readonly:  # (under readonly = 1 the engine refuses any write)
                self.store.wrote()

    def _checked(
        self, call: Call, body: Body, scope: policy.Scope | None, read: Callable[[], None]
    ) -> Result:
        """Run the engine's canonical form of the statement, once its tree passed the policy."""
        sql, st, data = self._statement(call, body)
        if not st.first:
            raise SqlError.of(62, "Syntax error: Empty query")
        with self._connection(call, st.first) as conn, engine_errors():
            insert_format = st.insert_format or ""
            if data is not None:
                policy.check_input_format(insert_format)
                sql = f"{sql} FORMAT {insert_format}"
            parsed = self._parsed(conn, call, scope, sql)
            if data is not None:
                head = parsed.sql.removesuffix(f"FORMAT {insert_format}").rstrip()
                if call.binds and insert_format.lower() == "values":
                    data = iter((self._bound_values(conn, call, scope, data),))
                if "insert_deduplication_token" not in call.settings:
                    return self._insert(conn, head, insert_format, data, repeat=False)
                if repeatable(conn, self.store.connection(), head, insert_target(parsed.tree)):
                    return self._insert(conn, head, insert_format, data, repeat=True)
                return self._insert_once(conn, head, insert_format, data)
            read()
            st = scan_statement(parsed.sql.encode(), self.formats)
            if call.user.readonly and st.has_result:
                out, result = self._bounded(conn, call, parsed, st)
            else:
                result = conn.query(parsed.sql, call.default_format.name, params=call.binds)
                out = result.get_memview().view()  # chDB's own buffer, not a copy
        fmt = (self._format(st.output_format) if st.output_format else call.default_format)
        summary = query_summary(result, call.user.site_scoped)
        encoding = call.encoding if out else None
        if encoding:
            out, result = DEFLATERS[encoding](out), None  # chDB's buffer is freed here
        return Result(out, summary, fmt if st.has_result else None, encoding, owner=result)

    def _bounded(self, conn: Connection, call: Call, parsed: Parsed, st: Statement
                 ) -> tuple[memoryview, Any]:
        """A read-only user's result, at most max_result_bytes once formatted (results.py),
        and chDB's result (its statistics)."""
        compose = with_outfile(parsed.sql, st)
        check_outfile_only(parsed.tree, parse(conn, compose(PLACEHOLDER), call.binds).tree)
        stream = self.store.stream_statement(conn, compose, call.binds,
                                             call.default_format.name, call.tag)
        try:
            out = read_bounded(stream, self.limits.max_result_bytes)
        finally:
            stream.close()
        return out, stream.result

    def _statement(
        self, call: Call, body: Body
    ) -> tuple[str, Statement, Iterator[bytes] | None]:
        """The statement (a query, or an INSERT's head) and, for an INSERT, its data.

        As ClickHouse: the query is the ``query`` parameter, a line break and the body, or the
        body alone; an INSERT's data follows its FORMAT clause (or a trailing VALUES).
        """
        limit = MAX_QUERY_BYTES
        if call.query is not None:
            head = call.query.encode() + b"\n"
            st = scan_statement(head, self.formats)
            if st.insert_format:
                return self._insert_parts(head, st, body)
            rest = body.read(limit + 1 - len(head))
            text = head + rest if rest else call.query.encode()
            if rest:
                st = scan_statement(text, self.formats)
        else:
            text = body.read(limit + 1)
            if len(text) > limit and first_word(text) != b"insert":  # no need to scan it
                raise SqlError.of(229, f"The query is larger than {limit} bytes")
            st = scan_statement(text, self.formats)
            if st.insert_format:
                return self._insert_parts(text, st, body)
        if len(text) > limit:
            raise SqlError.of(229, f"The query is larger than {limit} bytes")
        return decode_text(text), st, None

    def _scope(self, call: Call) -> policy.Scope:
        """A read-only user's grants against the tables that exist now, and the settings
        that confine it to them (the tables are read on the store's own connection, which
        no user's filters touch)."""
        existing = frozenset((r["database"], r["name"]) for r in self.store.rows(
            "SELECT database, name FROM system.tables"))
        scoped = call.user.site_scoped
        scope = policy.Scope(call.user.granted(), existing, call.database or self.database,
                             explain=not scoped,
                             virtual=self._virtual_columns(existing) if scoped else frozenset())
        hidden = (table for table in existing if not scope.allows(*table))
        filters = table_filters(call.user, scope.granted, hidden)
        call.enforced = enforced_settings(call.settings, self.limits, call.tag, filters)
        return scope

    def _virtual_columns(self, existing: frozenset[tuple[str, str]]) -> frozenset[str]:
        """The virtual columns of the tables that hold every site's rows, as the engine
        lists them (asked once)."""
        if not self._virtual:
            names: set[str] = set()
            for table in SITE_TABLES:
                if tuple(table.split(".", 1)) in existing:
                    names.update(row["name"] for row in self.store.rows(
                        f"DESCRIBE TABLE {table} SETTINGS describe_include_virtual_columns = 1")
                        if row["is_virtual"])
            self._virtual = frozenset(names)
        return self._virtual

    def _bound_values(self, conn: Connection, call: Call, scope: policy.Scope | None,
                      data: Iterator[bytes]) -> bytes:
        """VALUES data with its query parameters' values in (``bound_values``): read whole,
        as a query is, up to MAX_QUERY_BYTES."""
        text = bytearray()
        for chunk in data:
            text += chunk
            if len(text) > MAX_QUERY_BYTES:
                raise SqlError.of(229, f"VALUES data with query parameters is at most "
                                  f"{MAX_QUERY_BYTES} bytes: send more rows in a data format")

        def run(sql: str) -> list[dict[str, Any]]:
            parsed = self._parsed(conn, call, scope, sql)
            answer = conn.query(parsed.sql, "JSONEachRow", params=call.binds).bytes()
            return [orjson.loads(line) for line in answer.splitlines() if line]

        return bound_values.substitute(decode_text(bytes(text)).encode(), run)

    def _parsed(self, conn: Connection, call: Call, scope: policy.Scope | None,
                sql: str) -> Parsed:
        """The engine's parse of ``sql``, once it passed every check."""
        parsed = parse(conn, sql, call.binds)
        policy.check(parsed.tree, parsed.sql, call.readonly, scope, self.text_settings,
                     self.unreviewed)
        strings.check(self.store.connection(), parsed.tree, parsed.sql, call.binds,
                      call.readonly)
        return parsed

    @staticmethod
    def _insert_parts(
        text: bytes, st: Statement, body: Body
    ) -> tuple[str, Statement, Iterator[bytes]]:
        data = itertools.chain((text[st.data_start :],), body.rest())
        return decode_text(text[: st.head_end]), st, data

    @staticmethod
    def _insert(conn: Connection, head: str, fmt: str, data: Iterator[bytes],
                repeat: bool) -> Result:
        """Stream the data into chDB's ``send_insert``, which reports success for an insert
        refused once its rows were parsed (too many partitions, a view's error, a full
        disk). So when the engine counted an error meanwhile (this insert's, or another
        query's, or one its own parsers handled: Parquet's do), the data goes again as a
        statement, which reports its error, if the engine drops the rows already in
        (``repeat``: the client's deduplication token, into a table that deduplicates,
        ``targets.py``), and the data was text of at most ``REPLAY_BYTES`` (a collector's
        flushes, on the server backend, are). Other inserts are answered as chDB answers
        them, and the doubt is logged: failing them would fail good ones, and running them
        again could store their rows twice."""
        kept: bytearray | None = bytearray() if repeat else None
        before = errors_counted(conn)
        with conn.send_insert(head, fmt) as inserter:
            for chunk in data:
                if chunk:
                    inserter.append(chunk)
                    if kept is not None:
                        kept += chunk
                        if len(kept) > REPLAY_BYTES:
                            kept = None
            done = inserter.finish()
        if errors_counted(conn) != before:
            if kept is None or not kept.isascii() and not _utf8(kept):
                logger.warning("an INSERT (%s) ran while the engine counted an error, maybe "
                               "its own: with insert_deduplication_token into a table that "
                               "deduplicates, as text of at most %d bytes, it would have "
                               "been checked", fmt, REPLAY_BYTES)
            else:
                try:
                    insert_statement(conn, head, fmt, bytes(kept))
                except StorageError as exc:
                    raise SqlError.from_engine(exc) from None
        written = (done.rows_written, done.bytes_written)
        return Result(b"", call_summary((0, 0), written, written, done.elapsed), None)

    @classmethod
    def _insert_once(cls, conn: Connection, head: str, fmt: str, data: Iterator[bytes]
                     ) -> Result:
        """A client's insert with a deduplication token into a table that would store it
        again (``targets.py``): as a statement, which reports every error and needs no
        repeat, when it is text of at most ``REPLAY_BYTES``; else streamed as any other."""
        kept, rest = bytearray(), iter(data)
        for chunk in rest:
            kept += chunk
            if len(kept) > REPLAY_BYTES:
                break
        else:
            if kept.isascii() or _utf8(kept):
                try:
                    result = insert_statement(conn, head, fmt, bytes(kept))
                except StorageError as exc:
                    raise SqlError.from_engine(exc) from None
                written = (result.rows_written(), result.bytes_written())
                return Result(b"", call_summary((0, 0), written, written, result.elapsed()),
                              None)
        return cls._insert(conn, head, fmt, itertools.chain((bytes(kept),), rest), repeat=False)

    @contextlib.contextmanager
    def _connection(self, call: Call, first: bytes) -> Iterator[Connection]:
        # A read-only request can keep no state (readonly = 1 allows neither SET nor
        # temporary tables), so its session id needs no connection of its own.
        if call.session is None or call.readonly:
            conn = self.store.new_connection()
            try:
                with engine_errors():
                    apply_call(conn, call)
                yield conn
            finally:
                conn.close()
            return
        with self.sessions.use(
            call.session, call.session_timeout, call.session_check, call.close_session
        ) as session:
            yield from self._in_session(session, call, first)

    def _in_session(self, session: Session, call: Call, first: bytes) -> Iterator[Connection]:
        conn = session.conn
        saved = None
        try:
            with engine_errors():
                if call.settings or call.database:
                    saved = self._save(session, call)
                apply_call(conn, call)
            # Only SET and USE change a session (multi-statements are refused).
            session.changed = session.changed or first in (b"set", b"use")
            yield conn
        finally:
            if saved is not None:
                try:
                    restore(conn, saved)
                except Exception:  # e.g. readonly=1 forbids changing settings back
                    session.reset()

    def _save(self, session: Session, call: Call) -> Saved:
        if session.changed:
            return read_state(session.conn, call)
        # Defaults throughout; a name the engine does not know was refused by SET anyway.
        defaults = {name: None for name in call.settings if name in self.setting_names}
        return Saved(self.database, defaults)

    # -- responses

    def _headers(self, query_id: str) -> dict[str, str]:
        headers = {"X-ClickHouse-Server-Display-Name": self.display_name}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        return headers

    def _response(self, call: Call, result: Result) -> Response:
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
        return HeldResponse(result.body, result.owner, headers=headers)

    def _error(self, exc: SqlError, query_id: str, close: bool = False) -> Response:
        """``close``: the request's body is not read whole. The server would drop the rest
        as it arrives, on a connection that a byte every few seconds keeps open."""
        text = exc.text
        if not VERSION_SUFFIX.search(text):
            text += f" (version {self.version})"
        headers = self._headers(query_id)
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        if close:
            headers["Connection"] = "close"
        return Response(text + "\n", status_code=STATUS.get(exc.code, 500), headers=headers)

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


def _unread(request: Request, body: Body | None) -> bool:
    """Whether the request has a body that was not read whole."""
    length = request.headers.get("content-length")
    sent = "transfer-encoding" in request.headers or bool(length and length != "0")
    return sent and not (body is not None and body.ended)


def _query_id(given: str | None) -> str:
    # It is echoed in a header: no line breaks or other control characters.
    if not given:
        return str(uuid.uuid4())
    if not given.isprintable() or len(given) > 256:
        raise SqlError.of(36, "The query id must be printable text of at most 256 characters")
    return given


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
    scheme, _ = split_authorization(authorization)
    if scheme.lower() != "basic":
        raise SqlError.of(
            516, f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported"
        )
    credentials = basic_credentials(authorization)
    if credentials is None:
        raise SqlError.of(516, "Invalid authentication: malformed Basic credentials")
    user, password = credentials
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
    limits: QueryLimits | None = None,
) -> ASGIApp:
    """ClickHouse's HTTP interface over ``store`` for the users of ``users``.

    ``users`` is the complete user table. With ``loopback_only``, peers outside the loopback
    range are refused even if a proxy or a wider listener lets them in.
    """
    sql = _SqlInterface(store, users, max_data_bytes, limits or QueryLimits())
    app = Starlette(
        routes=[
            Route("/", sql.query, methods=["GET", "POST"]),
            Route("/ping", sql.ping, methods=["GET"]),
            Route("/replicas_status", sql.ping, methods=["GET"]),
        ],
        lifespan=sql.lifespan,
    )
    return LoopbackOnly(app, sql.refuse_peer) if loopback_only else app


def _utf8(data: bytearray) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
