"""One request as a call on chDB: its settings, isolation and summary."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from collector.sqlhttp.config import (
    DEFAULT_SESSION_TIMEOUT,
    MAX_SESSION_TIMEOUT,
    Connection,
    QueryLimits,
    SqlUser,
)
from collector.sqlhttp.errors import SqlError
from collector.sqlhttp.statements import Format
from collector.storage.engine_config import site_scope_tag
from collector.web.clientip import parse_address

# Parameters that are not settings (as ClickHouse's HTTPHandler reserves them).
RESERVED = frozenset(
    ("query", "user", "password", "quota_key", "query_id", "database", "default_format",
     "session_id", "session_timeout", "session_check", "close_session", "compress",
     "decompress", "buffer_size", "wait_end_of_query", "stacktrace", "client_protocol_version",
     "role")
)
# Settings a ClickHouse server's HTTP layer consumes; chDB has no HTTP layer to pass them to.
HTTP_SETTINGS = frozenset(
    ("send_progress_in_http_headers", "http_headers_progress_interval_ms",
     "enable_http_compression", "http_zlib_compression_level")
)
SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Call:
    user: SqlUser
    readonly: bool
    query_id: str
    tag: str  # the query's log_comment (query_tag)
    query: str | None
    binds: dict[str, str]
    settings: dict[str, str]
    database: str | None
    default_format: Format
    session: tuple[str, str] | None
    session_timeout: float
    session_check: bool
    close_session: bool
    encoding: str | None  # of the response
    # Settings the user cannot change, applied after the client's (enforced_settings).
    enforced: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    body: bytes | memoryview
    summary: dict[str, int]
    output_format: Format | None  # None: the statement returns no result set
    encoding: str | None = None
    owner: Any = None  # what holds ``body``'s memory (chDB's result), until it is sent


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true")


def parse_session_timeout(value: str | None) -> float:
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


def set_settings(conn: Connection, settings: Mapping[str, str | None]) -> None:
    """One SET for all ``settings``; None restores a setting's default."""
    if settings:
        changes = (f"{k} = {'DEFAULT' if v is None else _quote(v)}" for k, v in settings.items())
        conn.query("SET " + ", ".join(changes))


# VALUES data as literals only: the engine would otherwise interpret what a literal cannot
# be as SQL (file(), subqueries, zones), out of every check's sight (policy.SQL_SETTINGS
# keeps users from turning it back on).
LITERAL_VALUES = {"input_format_values_interpret_expressions": "0",
                  "input_format_values_deduce_templates_of_expressions": "0"}


def apply_call(conn: Connection, call: Call) -> None:
    settings = call.settings
    if call.readonly:  # readonly is ours to set, below
        settings = {k: v for k, v in settings.items() if k != "readonly"}
    # One SET: the enforced settings win over the client's, and a client's readonly = 1 (a
    # writer's session may ask for it) does not stop them.
    set_settings(conn, {**settings, **LITERAL_VALUES,
                        **(call.enforced or {"log_comment": call.tag})})
    if call.database:
        conn.query(f"USE {_identifier(call.database)}")
    if call.readonly:
        conn.query("SET readonly = 1")


@dataclass
class Saved:
    database: str
    settings: dict[str, str | None]


def read_state(conn: Connection, call: Call) -> Saved:
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
    return Saved(row["db"], settings)


def restore(conn: Connection, saved: Saved) -> None:
    set_settings(conn, saved.settings)
    conn.query(f"USE {_identifier(saved.database)}")


def call_summary(
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


def query_summary(result: Any, site_scoped: bool = False) -> dict[str, int]:
    """A query's summary; for a site-scoped user, what was read is given as the result (the
    engine's count holds other sites' rows of the parts it read)."""
    def stat(name: str) -> int:
        return int(getattr(result, name, lambda: 0)())

    read = ("rows_read", "bytes_read") if site_scoped else ("storage_rows_read",
                                                           "storage_bytes_read")
    return call_summary(
        (stat(read[0]), stat(read[1])),
        (stat("rows_written"), stat("bytes_written")),
        (stat("rows_read"), stat("bytes_read")),
        float(getattr(result, "elapsed", lambda: 0.0)()),
    )


def _is_loopback(client: tuple[str, int] | None) -> bool:
    if client is None:  # a Unix socket: not from the network
        return True
    address = parse_address(client[0])  # ::ffff:127.0.0.1 is loopback too
    return address is not None and address.is_loopback


class LoopbackOnly:
    """Refuses peers outside the loopback range, whatever listens in front of the app."""

    def __init__(self, app: ASGIApp, refuse: Callable[[], Response]) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_loopback(scope.get("client")):
            await self.refuse()(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- what a read-only user may set, and what it gets -------------------------------------------

# Settings a read-only user may send (as ClickHouse's readonly = 1 forbids any, but clients
# need their output settings): how a result looks, and limits it may only lower. Named one
# by one: some output_format_* settings write files (output_format_schema) or let a small
# block format into hundreds of megabytes outside the engine's memory cap (pretty padding).
_READER_SETTINGS = frozenset((
    "date_time_output_format", "session_timezone", "format_csv_delimiter",
    "format_csv_null_representation", "format_tsv_null_representation", "join_use_nulls",
    "extremes", "max_result_rows", "result_overflow_mode", "max_rows_to_read",
    "max_bytes_to_read", "read_overflow_mode", "limit", "offset", "wait_end_of_query",
    "cast_keep_nullable", "date_time_input_format", "output_format_json_quote_64bit_integers",
    "output_format_json_quote_64bit_floats", "output_format_json_quote_denormals",
    "output_format_json_quote_decimals", "output_format_decimal_trailing_zeros",
    "output_format_json_named_tuples_as_objects", "output_format_json_array_of_rows",
    "output_format_json_validate_utf8", "output_format_write_statistics",
    "output_format_arrow_string_as_string", "output_format_parquet_string_as_string",
    "output_format_csv_crlf_end_of_line", "output_format_tsv_crlf_end_of_line",
    "output_format_native_encode_types_in_binary_format",
    "output_format_json_escape_forward_slashes",
    "output_format_arrow_low_cardinality_as_dictionary",
    "output_format_parquet_compression_method",
))
_TAG_PREFIX = "tagwerk-sql"


def query_tag(user: SqlUser, query_id: str) -> str:
    """The ``log_comment`` a request's query carries: whose it is (for system.processes and
    KILL) and which request (to cancel it when its client goes away)."""
    return f"{_user_tag(user)}{query_id}"


def _user_tag(user: SqlUser) -> str:
    # Hex, so that no user name is a prefix of another's tag. A site-scoped user's tag
    # starts with its sites: the engine's row policies read them (engine_config.py).
    scope = site_scope_tag(user.sites) if user.sites is not None else f"{_TAG_PREFIX}:"
    return f"{scope}{user.name.encode().hex()}:"


# Limits on what a query reads: the engine counts every site's rows of the parts it reads
# (a row policy filters after reading), and its error names the count (a fourteenth probe).
_READ_LIMITS = frozenset(("max_rows_to_read", "max_bytes_to_read", "read_overflow_mode"))


def reader_settings(settings: Mapping[str, str], limits: QueryLimits,
                    site_scoped: bool = False) -> dict[str, str]:
    """The client's settings a read-only user may apply; anything else is refused, as a
    ClickHouse server refuses setting changes under readonly = 1. A site-scoped user sets
    no limit on what is read."""
    allowed: dict[str, str] = {}
    caps = vars(limits)
    for name, value in settings.items():
        if name == "readonly":
            continue  # ours to set
        if site_scoped and name in _READ_LIMITS:
            raise SqlError.of(164, f"Cannot modify '{name}' setting for a site-scoped user: "
                              "what the engine reads counts other sites' rows")
        if name in caps:
            if not value.isdigit() or not 0 < int(value) <= caps[name]:
                raise SqlError.of(
                    164, f"Cannot modify '{name}' setting in readonly mode: it may only be "
                    f"lowered, to at most {caps[name]}"
                )
        elif name not in _READER_SETTINGS:
            raise SqlError.of(164, f"Cannot modify '{name}' setting in readonly mode")
        allowed[name] = value
    return allowed


def enforced_settings(
    client: Mapping[str, str], limits: QueryLimits, tag: str, filters: Mapping[str, str]
) -> dict[str, str]:
    """What a read-only user's query runs under, set after the client's settings (so these
    win) and before ``readonly = 1`` (so nothing can change them afterwards)."""
    enforced = {
        name: str(min(cap, int(client.get(name, cap)))) for name, cap in vars(limits).items()
    }
    enforced["timeout_overflow_mode"] = "throw"
    enforced["log_comment"] = tag
    enforced["additional_table_filters"] = (
        "{" + ", ".join(f"{_quote(table)}: {_quote(cond)}" for table, cond in filters.items())
        + "}"
    )
    return enforced


def table_filters(
    user: SqlUser, granted: frozenset[tuple[str, str]], hidden: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """``additional_table_filters`` for a read-only user: system.processes (and so KILL
    QUERY) shows only its own queries, system.tables and system.columns only its tables, and
    every table it may not read (``hidden``) reads as empty even where the engine reads it
    for a statement of its own (SHOW DICTIONARIES reads system.dictionaries, KILL MUTATION
    system.mutations)."""
    whole = sorted(db for db, table in granted if table == "*")
    pairs = sorted(pair for pair in granted if pair[1] != "*")

    def listed(db: str, table: str) -> str:
        conds = [f"{db} IN ({', '.join(map(_quote, whole))})"] if whole else []
        if pairs:
            rows = ", ".join(f"({_quote(d)}, {_quote(t)})" for d, t in pairs)
            conds.append(f"({db}, {table}) IN ({rows})")
        return " OR ".join(conds) or "0"

    filters = {f"{db}.{table}": "0" for db, table in sorted(hidden)}
    filters["system.tables"] = listed("database", "name")
    filters["system.columns"] = listed("database", "table")
    filters["system.processes"] = f"startsWith(Settings['log_comment'], {_quote(_user_tag(user))})"
    return filters
