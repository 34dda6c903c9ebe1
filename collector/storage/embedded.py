"""The embedded backend: the real ClickHouse engine in-process (chDB), data on local disk.

chDB hosts one engine per process, bound to one path. A connection runs one query at a
time, so each thread gets its own connection to the shared engine.

Streaming (``stream``): chDB's own ``send_query`` formats every chunk as a document of its
own (CSVWithNames repeats its header, Parquet makes a file per chunk), so a result is
streamed through a named pipe instead: the query runs on a connection of its own with
``INTO OUTFILE 'pipe'``, and the engine's output format writes one document into it as the
caller reads. A pipe holds 1 MiB: the engine blocks on a full one, so a slow reader slows
the query down rather than filling memory. Closing the stream removes the pipe's name, then
its read end, then kills the query by its tag (``log_comment``): a writer still to open the
path fails (its directory is gone); one that has it open is not stopped by EPIPE alone (the
engine runs on, measured), hence the KILL.

The SQL interface runs a read-only user's statement the same way (``stream_statement``), on
the connection its settings were applied to: chDB's ``query`` formats a result into a buffer
outside the query's memory limit, where one small block of constants can grow to gigabytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from collector.storage import chdb_import
from collector.storage.base import (
    Params,
    StorageError,
    Store,
    escape_param,
    format_param,
    settings_clause,
)
from collector.storage.engine_config import default_memory_limit, write_engine_config

log = logging.getLogger("tagwerk.storage")


class EmbeddedStore(Store):
    kind = "embedded"
    sole_writer = True  # the engine's path is locked to this process

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
        self._busy = 0  # calls running on the store's connections (``_using``)
        self._conn()  # fail at start, not on the first hit, if the path is unusable
        # Pipes of streams a crash left behind (only this process can have the path open).
        self.pipes = self.path / "streams"
        shutil.rmtree(self.pipes, ignore_errors=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StorageError("store is closed")
            try:
                conn = chdb_import.connect(self.dsn)
            except Exception as exc:  # chDB raises plain RuntimeError for a locked path
                raise StorageError(f"cannot open the embedded store at {self.path}: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _using(self) -> Iterator[Any]:
        """This thread's connection, counted as in use until the block ends: ``close``
        waits for those, and none is handed out once it began."""
        conn = self._conn()
        with self._lock:
            if self._closed:
                raise StorageError("store is closed")
            self._busy += 1
        try:
            yield conn
        finally:
            with self._lock:
                self._busy -= 1

    def connection(self):
        """This thread's own chDB connection (for the SQL interface's sessions)."""
        return self._conn()

    def new_connection(self):
        """A connection owned by the caller, e.g. for a session with its own settings."""
        if self._closed:
            raise StorageError("store is closed")
        return chdb_import.connect(self.dsn)

    def query(self, sql: str, params: Params = None, fmt: str = "JSONEachRow") -> bytes:
        bound = {k: _bind(v) for k, v in params.items()} if params else None
        with self._using() as conn:  # the result read too before a close may free it
            try:
                result = conn.query(sql, fmt, params=bound)
            except Exception as exc:
                raise StorageError(str(exc)) from None
            return result.bytes() if hasattr(result, "bytes") else bytes(result)

    def execute(self, sql: str, params: Params = None) -> None:
        try:
            self.query(sql, params, "TSV")
        finally:
            self.wrote()

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
            with self._using() as conn:
                self._insert(conn, sql, fmt, data, settings)
        finally:
            self.wrote()

    def _insert(self, conn: Any, sql: str, fmt: str, data: bytes,
                settings: Mapping[str, str] | None) -> None:
        if not settings or "insert_deduplication_token" not in settings:
            insert_statement(conn, sql, fmt, data)
            return
        # A flush, with its token: chDB's stream, which costs the engine half the CPU of a
        # statement, but reports success for an insert refused once its rows were parsed
        # (too many partitions, a view's error, a full disk), and the flusher would release
        # hits never stored (re-probe 51). When the engine counted an error meanwhile (this
        # insert's, or another query's), the rows go again as a statement, which reports
        # its error, and which the token makes a no-op if the stream's rows went in.
        before = errors_counted(conn)
        try:
            with conn.send_insert(sql, fmt) as ins:
                ins.append(data)
                ins.finish()
        except Exception as exc:
            raise StorageError(str(exc)) from None
        if errors_counted(conn) != before:
            insert_statement(conn, sql, fmt, data)

    def stream(self, sql: str, params: Params = None, fmt: str = "JSONEachRow",
               settings: Mapping[str, str | int] | None = None) -> Iterator[bytes]:
        if not _FORMAT.fullmatch(fmt):
            raise ValueError(f"not a ClickHouse format name: {fmt!r}")
        bound = {k: _bind(v) for k, v in params.items()} if params else None
        tag = f"{STREAM_TAG}{uuid.uuid4().hex}"
        sql += settings_clause({**(settings or {}), "log_comment": tag})
        return _PipeStream(self, lambda path: f"{sql} INTO OUTFILE {path} TRUNCATE FORMAT {fmt}",
                           bound, fmt, tag)

    def stream_statement(self, conn: Any, compose: Callable[[str], str],
                         params: Mapping[str, str] | None, fmt: str, tag: str) -> _PipeStream:
        """Run a statement on ``conn``, whose settings the caller applied (``log_comment``
        = ``tag``, by which closing the stream early kills it), its result streamed in
        ``fmt`` as ``stream``'s. ``compose(path)``: the statement with ``INTO OUTFILE path
        TRUNCATE`` where its syntax wants it. Its statistics: the stream's ``result``."""
        return _PipeStream(self, compose, params, fmt, tag, conn)

    def close(self) -> None:
        """Stop every running query, then close the connections: the process dies (SIGSEGV)
        when it exits while the engine still runs a query. No call starts once it began;
        one that started meanwhile, or on a connection of a caller's, is killed in turn
        (each kill is repeated until nothing runs, for at most ``CLOSE_SECONDS``)."""
        try:
            killer = self._conn()
        except StorageError:
            killer = None
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + CLOSE_SECONDS
        while killer is not None:
            try:
                killer.query("KILL QUERY WHERE query_id != queryID() ASYNC", "TSV")
                running = int(killer.query("SELECT count() FROM system.processes "
                                           "WHERE query_id != queryID()", "TSV").bytes())
            except Exception:
                break
            with self._lock:
                busy = self._busy
            if not running and not busy:
                break
            if time.monotonic() > deadline:
                log.warning("embedded store: %d queries still run at close", running)
                break
            time.sleep(0.02)
        with self._lock:
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


# How long ``close`` keeps killing queries that still run (one stuck writing into a stream
# nobody reads, say) before it closes the connections all the same.
CLOSE_SECONDS = 10.0
_FORMAT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
STREAM_TAG = "tagwerk-stream:"
PIPE_BYTES = 1 << 20
READ_BYTES = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _PipeStream:
    """A query's output through a named pipe: iterate for its pieces, ``close`` to stop it.
    ``compose`` places ``INTO OUTFILE <path> TRUNCATE`` (given the quoted path) in the
    statement; ``conn``: run on that connection (the caller's, left open), else on one of
    its own. ``result``: chDB's result (its statistics) once the iteration ended."""

    def __init__(self, store: EmbeddedStore, compose: Callable[[str], str],
                 bound: Mapping[str, str] | None, fmt: str, tag: str, conn: Any = None
                 ) -> None:
        self._store, self._tag = store, tag
        self._folder = store.pipes / uuid.uuid4().hex
        self._folder.mkdir(parents=True, mode=0o700)
        self._pipe = self._folder / "out"
        os.mkfifo(self._pipe, 0o600)
        # Opened before the query starts, so that the engine's open never waits for a reader.
        self._fd = os.open(self._pipe, os.O_RDONLY | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, F_SETPIPE_SZ, PIPE_BYTES)
        path = "'" + str(self._pipe).replace("\\", "\\\\").replace("'", "\\'") + "'"
        self._error: str | None = None
        self._given = conn is not None
        self.result: Any = None
        self._thread = threading.Thread(
            target=self._run, args=(store, compose(path), bound, fmt, conn),
            name="stream-query", daemon=True)
        self._thread.start()

    def _run(self, store: EmbeddedStore, sql: str, bound: Mapping[str, str] | None, fmt: str,
             given: Any) -> None:
        try:
            conn = given if given is not None else store.new_connection()
        except Exception as exc:
            self._error = f"cannot open a connection: {exc}"
            return
        try:
            self.result = conn.query(sql, fmt, params=bound)
        except Exception as exc:
            self._error = str(exc)
        finally:
            if given is None:
                with contextlib.suppress(Exception):
                    conn.close()

    def __iter__(self) -> _PipeStream:
        return self

    def __next__(self) -> bytes:
        while self._fd >= 0:
            # Seen before the read: whatever the query wrote is then in the pipe already.
            done = not self._thread.is_alive()
            try:
                chunk = os.read(self._fd, READ_BYTES)
            except BlockingIOError:  # the engine has the pipe open and is still working
                # (poll, not select: a process with many connections numbers its pipes past
                # select()'s 1,024)
                waiting = select.poll()
                waiting.register(self._fd, select.POLLIN)
                waiting.poll(500)
                continue
            if chunk:
                return chunk
            if not done:  # no writer: not opened yet, or just closed
                self._thread.join(0.005)
                continue
            self.close()
            if self._error is not None:
                raise StorageError(self._error)
        raise StopIteration

    def close(self) -> None:
        if self._fd < 0:
            return
        # The name first, then the read end: see the module's docstring.
        with contextlib.suppress(OSError):
            self._pipe.unlink()
        with contextlib.suppress(OSError):
            self._folder.rmdir()
        fd, self._fd = self._fd, -1
        os.close(fd)
        if not self._thread.is_alive():
            return
        if self._given:  # the caller closes its connection next: not under a running query
            self._kill()
            self._thread.join()
        else:
            threading.Thread(target=self._kill, name="stream-kill", daemon=True).start()

    def _kill(self) -> None:
        with contextlib.suppress(StorageError):
            self._store.execute("KILL QUERY WHERE Settings['log_comment'] = {tag:String} ASYNC",
                                {"tag": self._tag})

    def __del__(self) -> None:
        self.close()


def errors_counted(conn: Any) -> int:
    """Errors the engine counted since it started, every query's (``system.errors``)."""
    try:
        return int(conn.query("SELECT sum(value) FROM system.errors", "TSV").bytes() or 0)
    except Exception as exc:
        raise StorageError(str(exc)) from None


def insert_statement(conn: Any, sql: str, fmt: str, data: bytes) -> Any:
    """Insert the rows inline in the statement (``sql``: the INSERT without its FORMAT
    clause), the way that reports every error, unlike ``send_insert``; chDB's result."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise StorageError(f"{fmt} rows to insert are not UTF-8") from None
    try:
        return conn.query(f"{sql} FORMAT {fmt}\n{text}", "TSV")
    except Exception as exc:
        raise StorageError(str(exc)) from None
