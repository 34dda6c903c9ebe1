"""The storage interface and the parameter formatting both backends share."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import orjson

Params = Mapping[str, Any] | None


class StorageError(Exception):
    """ClickHouse refused a statement (bad SQL, a type error, a constraint)."""


class StorageUnavailable(StorageError):
    """ClickHouse could not be reached; the statement may succeed later."""


class Store(ABC):
    """What the collector needs from ClickHouse. SQL is the same for both backends.

    Values are always bound through ``{name:Type}`` placeholders, never pasted into SQL.
    """

    kind: str
    # Whether every write reaches the engine through this process (the embedded engine: no
    # other process can open its path), so that ``writes`` changes after each of them.
    sole_writer = False
    # Counts the writes through this store or ``wrote`` (under a lock: none is lost).
    writes = 0
    _write_lock = threading.Lock()

    def wrote(self) -> None:
        """A write through this process has ended (stored, failed or cut short)."""
        with self._write_lock:
            self.writes += 1

    @abstractmethod
    def query(self, sql: str, params: Params = None, fmt: str = "JSONEachRow") -> bytes:
        """Run a query and return its whole result in the ClickHouse output format ``fmt``."""

    @abstractmethod
    def execute(self, sql: str, params: Params = None) -> None:
        """Run a statement that returns nothing (DDL, ALTER, INSERT ... SELECT)."""

    @abstractmethod
    def insert(
        self,
        table: str,
        data: bytes,
        fmt: str = "JSONEachRow",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Insert rows already encoded in the ClickHouse input format ``fmt``."""

    @abstractmethod
    def close(self) -> None: ...

    def stream(self, sql: str, params: Params = None, fmt: str = "JSONEachRow",
               settings: Mapping[str, str | int] | None = None) -> Iterator[bytes]:
        """Run a SELECT (without FORMAT or SETTINGS clauses) and yield its result in the
        ClickHouse output format ``fmt`` piece by piece, as one document (one CSV header,
        one Parquet file). The engine produces only as fast as the caller consumes, and
        closing the iterator early stops the query. A failure after the first piece raises
        from the iterator: the caller must not take a partial result for a whole one.

        This default holds the whole result in memory; both backends stream."""
        yield self.query(sql + settings_clause(settings), params, fmt)

    def rows(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        """Run a query and return its rows as dicts."""
        out = self.query(sql, params, "JSONEachRow")
        return [orjson.loads(line) for line in out.splitlines() if line]

    def ping(self) -> bool:
        try:
            return self.query("SELECT 1", fmt="TSV").strip() == b"1"
        except StorageError:
            return False


def time_text(moment: dt.datetime | None = None) -> str:
    """A moment (default: now) as a DateTime64(3, 'UTC') column reads it from text. Never
    epoch-ms in JSON: JSONEachRow reads an integer as seconds (year 9999)."""
    if moment is None:
        moment = dt.datetime.now(dt.UTC)
    elif moment.tzinfo is not dt.UTC:
        moment = moment.astimezone(dt.UTC)
    return moment.isoformat(" ", "milliseconds")[:23]  # without "+00:00"


def settings_clause(settings: Mapping[str, str | int] | None) -> str:
    """`` SETTINGS a = 1, b = 'x'`` from the collector's own values (never a client's text)."""
    if not settings:
        return ""
    return " SETTINGS " + ", ".join(f"{name} = {_literal(value)}"
                                    for name, value in settings.items())


def format_param(value: Any) -> str:
    """A parameter value as text for a ``{name:Type}`` placeholder.

    ClickHouse reads a top-level string in its escaped text form (see ``escape_param``)
    and anything else (arrays, maps, numbers, times) as a literal, as produced here.
    """
    if isinstance(value, str):
        return value
    return _literal(value, top=True)


_MUST_ESCAPE = frozenset("\\'`\t\n")


def escape_param(text: str) -> str:
    """Escape a top-level string parameter as ClickHouse expects (as clickhouse-connect does)."""
    return "".join("\\" + c if c in _MUST_ESCAPE else c for c in text)


def _literal(value: Any, top: bool = False) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        text = value.isoformat(sep=" ", timespec="milliseconds")
        return text if top else _quote(text)
    if isinstance(value, dt.date | uuid.UUID):
        return str(value) if top else _quote(str(value))
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_quote(str(k))}:{_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot bind a {type(value).__name__} as a ClickHouse parameter")


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
