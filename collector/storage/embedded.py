"""The embedded backend: the real ClickHouse engine in-process (chDB), data on local disk.

chDB hosts one engine per process, bound to one path. A connection runs one query at a
time, so each thread gets its own connection to the shared engine.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import chdb.state

from collector.storage.base import Params, StorageError, Store, escape_param, format_param
from collector.storage.engine_config import default_memory_limit, write_engine_config


class EmbeddedStore(Store):
    kind = "embedded"

    def __init__(self, data_dir: str | Path, memory_limit: int | None = None) -> None:
        self.path = Path(data_dir).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.memory_limit = memory_limit or default_memory_limit()
        config = write_engine_config(self.path / "tagwerk-engine", self.memory_limit)
        # Every connection names the same configuration: the first one starts the engine.
        self.dsn = f"file:{self.path}?config-file={config}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list = []
        self._closed = False
        self._conn()  # fail at start, not on the first hit, if the path is unusable

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StorageError("store is closed")
            try:
                conn = chdb.state.connect(self.dsn)
            except Exception as exc:  # chDB raises plain RuntimeError for a locked path
                raise StorageError(f"cannot open the embedded store at {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def connection(self):
        """This thread's own chDB connection (for the SQL interface's sessions)."""
        return self._conn()

    def new_connection(self):
        """A connection owned by the caller, e.g. for a session with its own settings."""
        return chdb.state.connect(self.dsn)

    def query(self, sql: str, params: Params = None, fmt: str = "JSONEachRow") -> bytes:
        bound = {k: _bind(v) for k, v in params.items()} if params else None
        try:
            result = self._conn().query(sql, fmt, params=bound)
        except Exception as exc:
            raise StorageError(str(exc)) from None
        return result.bytes() if hasattr(result, "bytes") else bytes(result)

    def execute(self, sql: str, params: Params = None) -> None:
        self.query(sql, params, "TSV")

    def insert(
        self,
        table: str,
        data: bytes,
        fmt: str = "JSONEachRow",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        sql = f"INSERT INTO {table}"
        if settings:
            # Setting values come from the collector itself, not from hits.
            sql += " SETTINGS " + ", ".join(f"{k} = {_setting(v)}" for k, v in settings.items())
        try:
            with self._conn().send_insert(sql, fmt) as ins:
                ins.append(data)
                ins.finish()
        except Exception as exc:
            raise StorageError(str(exc)) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


def _bind(value: Any) -> str:
    return escape_param(value) if isinstance(value, str) else format_param(value)


def _setting(value: str) -> str:
    if value.isdigit():
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
