"""Limits, and the users of the interface."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from collector.sites import SITE_ID
from collector.storage.engine_config import (
    AGGREGATE_TABLES,
    AGGREGATE_VIEWS,
    ENGINE_SHARE,
    SITE_TABLES,
)

MAX_QUERY_BYTES = 1 << 20  # a query without data (ClickHouse's max_query_size is 256 KiB)
MAX_DATA_BYTES = 1 << 30  # a whole request body, after decompression
QUERY_TEXT_SECONDS = 30  # for a reader's query text (or a form) to arrive whole
# A client gone before its query started: the cancel is tried again this often until the
# execution ends (interface.py).
CANCEL_AGAIN_SECONDS = 0.2
# An INSERT's data kept, to run again as a statement if the engine may have refused it
# unsaid (``interface.py``): a collector's flush on the server backend is at most 16 MB.
REPLAY_BYTES = 64 << 20
DEFAULT_SESSION_TIMEOUT = 60  # seconds, ClickHouse's default_session_timeout
MAX_SESSION_TIMEOUT = 3600
MAX_SESSIONS = 1000  # each holds a chDB connection
MAX_READER_QUERIES = 4  # read-only users' queries running at once, all users together
MAX_READER_QUERIES_PER_USER = 2
STEP = 1 << 20  # decompress at most this much at once, so that a bomb is stopped early

Connection = Any  # chdb.state.Connection, which has no type hints


# What a read-only user reads when its entry names no tables: the data, not the service's
# own tables (sites and their key hashes, containers, previews, migrations).
DATA_TABLES = ("tagwerk.events", "tagwerk.consent_log", *AGGREGATE_TABLES, *AGGREGATE_VIEWS)
# What a site-scoped user may read: tables the row policies filter, and views over them.
SITE_READABLE = (*SITE_TABLES, *AGGREGATE_VIEWS)
# System tables that describe the engine, never other users' data.
SYSTEM_TABLES = tuple(
    f"system.{name}" for name in (
        "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "settings", "functions",
        "table_functions", "formats", "data_type_families", "time_zones", "collations",
        "databases", "table_engines", "build_options",
        "aggregate_function_combinators", "keywords", "contributors", "licenses",
    )
)
# What counts every site's rows, so not for a site-scoped user: the schema (filtered to the
# granted tables, calls.py, but with their row and byte counts) and the user's own running
# queries (filtered to them, calls.py, but with what they read before the row policy
# filtered it). KILL QUERY reads the process list inside the engine, so it works without.
COUNTING_TABLES = ("system.tables", "system.columns", "information_schema.*",
                   "INFORMATION_SCHEMA.*", "system.processes")


@dataclass(frozen=True)
class QueryLimits:
    """What one query of a read-only user may take; the user can lower, never raise them."""

    max_memory_usage: int = 1 << 30
    max_execution_time: int = 60
    max_result_bytes: int = 256 << 20  # a result is buffered whole before it is sent
    max_threads: int = 2

    @classmethod
    def within(cls, memory_limit: int, query_memory: int, seconds: int) -> QueryLimits:
        """Limits that fit a collector with ``memory_limit``: a query takes at most a
        quarter of it in the engine; the results of MAX_READER_QUERIES queries, each with a
        compressed copy, fit in the part the engine leaves to Python (ENGINE_SHARE)."""
        python_share = int(memory_limit * (1 - ENGINE_SHARE))
        return cls(
            max_memory_usage=min(query_memory, memory_limit // 4),
            max_execution_time=seconds,
            max_result_bytes=min(cls.max_result_bytes, python_share // (2 * MAX_READER_QUERIES)),
            max_threads=max(1, min(os.cpu_count() or 1, cls.max_threads)),
        )


@dataclass(frozen=True)
class SqlUser:
    name: str
    password: str
    readonly: bool
    # A read-only user's grants: "table" (in tagwerk), "db.table" or "db.*"; None: DATA_TABLES.
    tables: tuple[str, ...] | None = None
    # A read-only user's sites: only their rows of its tables (SITE_TABLES); None: all.
    sites: tuple[str, ...] | None = None

    @property
    def site_scoped(self) -> bool:
        """Whether the user reads only some sites' rows (what the engine reads counts
        every site's: no EXPLAIN, no read counts, no virtual columns)."""
        return self.sites is not None

    def granted(self) -> frozenset[tuple[str, str]]:
        names = (*(DATA_TABLES if self.tables is None else self.tables), *SYSTEM_TABLES,
                 *(COUNTING_TABLES if self.sites is None else ()))
        return frozenset(
            tuple(name.split(".", 1)) if "." in name else ("tagwerk", name)  # type: ignore[misc]
            for name in names
        )


def load_users(text: str) -> dict[str, SqlUser]:
    """The users of ``--sql-users-file``: ``{"name": {"password": "...", "readonly": true,
    "tables": ["events", "db.table", "db.*"], "sites": ["shop-a"]}}``; tables and sites
    apply to read-only users."""
    users: dict[str, SqlUser] = {}
    for name, spec in json.loads(text).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("password"), str):
            raise ValueError(f"SQL user {name!r}: needs a password (a string)")
        readonly = spec.get("readonly", True)
        tables, sites = spec.get("tables"), spec.get("sites")
        for key, value in (("tables", tables), ("sites", sites)):
            if value is not None and not (
                isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
            ):
                raise ValueError(f"SQL user {name!r}: {key} must be a list of names")
            if value is not None and not readonly:
                raise ValueError(f"SQL user {name!r}: {key} apply to read-only users only")
        if sites is not None:
            # The engine's row policies filter these tables only (engine_config.py).
            bad = [s for s in sites if not SITE_ID.fullmatch(s)]
            if bad:
                raise ValueError(f"SQL user {name!r}: {bad[0]!r} is not a site id")
            outside = [t for t in tables or DATA_TABLES
                       if (t if "." in t else f"tagwerk.{t}") not in SITE_READABLE]
            if outside:
                raise ValueError(f"SQL user {name!r}: with sites, tables must be among "
                                 f"{', '.join(SITE_READABLE)}, not {outside[0]!r}")
        users[name] = SqlUser(
            name, spec["password"], bool(readonly),
            tuple(tables) if tables is not None else None,
            tuple(sites) if sites is not None else None,
        )
    return users
