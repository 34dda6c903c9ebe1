"""Limits, and the users of the interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
