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
- What a statement may do is decided on ClickHouse's own parse of it (``syntax.py``:
  ``formatQuery`` of the client's text bound as a parameter, then ``EXPLAIN AST`` of that
  canonical text) by ``policy.py``, and the canonical text is what runs: no ``INTO
  OUTFILE``, ``FROM INFILE`` or route to the host's files, programs or network for anyone;
  read-only users get reading statements and their granted tables only. SECURITY.md.
- Read-only requests (read-only users, and every method but POST) are stateless. They get
  ``readonly = 1``, set last, so that the query can neither write nor change a setting. Not
  ``readonly = 2`` (what a ClickHouse server sets for GET): chDB then still runs table
  functions that reach files and the network. A read-only user's URL settings are limited
  to output settings, and its limits (memory, time, result size, threads), its tables'
  filters (sites, system.processes) and its query's tag are set after them (``calls.py``).
- Results are buffered, not streamed: chDB's ``send_query`` streams nothing but SELECTs,
  formats each chunk as a document of its own (JSON, CSVWithNames, Parquet and Arrow repeat
  their header) and yields nothing for an empty result, so a stream would not be what
  ClickHouse sends; buffering also gives every error its proper status. Insert data is
  streamed into ``send_insert`` as it arrives.
"""

from __future__ import annotations

from collector.sqlhttp.config import (
    DEFAULT_SESSION_TIMEOUT,
    MAX_DATA_BYTES,
    MAX_QUERY_BYTES,
    MAX_SESSION_TIMEOUT,
    MAX_SESSIONS,
    QueryLimits,
    SqlUser,
    load_users,
)
from collector.sqlhttp.errors import SqlError
from collector.sqlhttp.interface import build_sql_app

__all__ = [
    "DEFAULT_SESSION_TIMEOUT",
    "MAX_DATA_BYTES",
    "MAX_QUERY_BYTES",
    "MAX_SESSION_TIMEOUT",
    "MAX_SESSIONS",
    "QueryLimits",
    "SqlError",
    "SqlUser",
    "build_sql_app",
    "load_users",
]
