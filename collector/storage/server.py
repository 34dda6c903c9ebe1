"""The server backend: a ClickHouse server or cluster over HTTP(S) with clickhouse-connect.

URL: ``http(s)://user:password@host:port/database``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from collector.storage.base import Params, StorageError, StorageUnavailable, Store, format_param

READ_BYTES = 1024 * 1024

_OWN_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.I)


class ServerStore(Store):
    kind = "server"

    def __init__(self, url: str, connect_timeout: float = 3.0, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("ClickHouse URL must look like http(s)://user:password@host:port/db")
        self.url = url
        self._kwargs = dict(
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            database=parts.path.strip("/") or "default",
            secure=parts.scheme == "https",
            connect_timeout=connect_timeout,
            send_receive_timeout=timeout,
            # Sessions would serialise all threads on one server-side session.
            autogenerate_session_id=False,
            compress=False,
        )
        self._client = None

    @property
    def client(self):
        # Connect lazily: the collector must start (and spool) while ClickHouse is down.
        if self._client is None:
            with _translated():
                self._client = clickhouse_connect.get_client(**self._kwargs)
        return self._client

    def query(self, sql: str, params: Params = None, fmt: str = "JSONEachRow") -> bytes:
        bound = {k: _bind(v) for k, v in params.items()} if params else None
        if _OWN_FORMAT.search(sql):
            fmt = None  # the query names its format; clickhouse-connect would add a second
        with _translated():
            return self.client.raw_query(sql, parameters=bound, fmt=fmt)

    def stream(self, sql: str, params: Params = None, fmt: str = "JSONEachRow",
               settings: Mapping[str, str | int] | None = None) -> Iterator[bytes]:
        """The server's HTTP answer read as the caller consumes it: TCP's flow control slows
        the server down for a slow reader; closing the answer cancels the query."""
        bound = {k: _bind(v) for k, v in params.items()} if params else None
        with _translated():
            answer = self.client.raw_stream(sql, parameters=bound, settings=dict(settings or {}),
                                            fmt=fmt)
        return _pieces(answer)

    def execute(self, sql: str, params: Params = None) -> None:
        # Not raw_query: it appends "FORMAT", which ClickHouse reads as data after VALUES.
        bound = {k: _bind(v) for k, v in params.items()} if params else None
        with _translated():
            self.client.command(sql, parameters=bound)

    def insert(
        self,
        table: str,
        data: bytes,
        fmt: str = "JSONEachRow",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        with _translated():
            self.client.raw_insert(table, insert_block=data, settings=dict(settings or {}), fmt=fmt)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """clickhouse-connect's errors as ours: unreachable (retry later) or refused."""
    try:
        yield
    except OperationalError as exc:
        raise StorageUnavailable(str(exc)) from None
    except DatabaseError as exc:
        raise StorageError(str(exc)) from None


def _pieces(answer: Any) -> Iterator[bytes]:
    try:
        while True:
            try:
                chunk = answer.read(READ_BYTES)
            except Exception as exc:  # urllib3's protocol errors: the answer broke off
                raise StorageUnavailable(f"the result broke off: {exc}") from None
            if not chunk:
                return
            yield chunk
    finally:
        answer.close()


class _Literal:
    """Text that clickhouse-connect passes through unchanged (it falls back to ``str()``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _bind(value: Any) -> Any:
    # clickhouse-connect escapes strings itself; other values go as our own literals so
    # both backends bind the same text (it would drop the milliseconds of a datetime).
    return value if isinstance(value, str) else _Literal(format_param(value))
