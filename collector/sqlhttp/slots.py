"""How many queries of read-only users run at once: in all, and per user."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

from collector.sqlhttp.config import MAX_READER_QUERIES, MAX_READER_QUERIES_PER_USER
from collector.sqlhttp.errors import SqlError


class ReaderSlots:
    """Each query may take the per-query memory and threads, so all of them together are
    bounded; and one user (``default``, which needs no password) cannot take every slot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    @contextlib.contextmanager
    def taken(self, user: str) -> Iterator[None]:
        with self._lock:
            if self._running.total() >= MAX_READER_QUERIES:
                raise _busy(f"the maximum is {MAX_READER_QUERIES} for all read-only users")
            if self._running[user] >= MAX_READER_QUERIES_PER_USER:
                raise _busy(f"the maximum is {MAX_READER_QUERIES_PER_USER} for user {user}")
            self._running[user] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[user] -= 1


def _busy(why: str) -> SqlError:
    return SqlError.of(202, f"Too many simultaneous queries: {why}; try again shortly")
