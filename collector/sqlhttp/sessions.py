"""Sessions: one chDB connection per (user, session id), expiring when idle."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from collector.sqlhttp.config import MAX_SESSIONS, Connection
from collector.sqlhttp.errors import SqlError


@dataclass(eq=False)
class Session:
    conn: Connection | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    expires: float = 0.0
    # Whether a SET or USE statement ran: until then the connection holds the engine's
    # defaults, and a request's URL settings can be undone without reading them first.
    changed: bool = False

    def reset(self) -> None:
        """Drop the connection: its state could not be restored, the next request starts anew."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        self.changed = False


class Sessions:
    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._items: dict[tuple[str, str], Session] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(
        self, key: tuple[str, str], timeout: float, check: bool, close: bool
    ) -> Iterator[Session]:
        """The session ``key`` (made if new), locked to this request; ``close`` ends it after."""
        session = self._acquire(key, check)
        try:
            if session.conn is None:
                session.conn = self._connect()
            yield session
        finally:
            session.expires = time.monotonic() + timeout
            if close:
                with self._lock:
                    self._items.pop(key, None)
                session.reset()
            session.lock.release()

    def _acquire(self, key: tuple[str, str], check: bool) -> Session:
        with self._lock:
            self._expire()
            session = self._items.get(key)
            if session is None:
                if check:
                    raise SqlError.of(372, f"Session {key[1]} not found")
                if len(self._items) >= MAX_SESSIONS:
                    raise SqlError.of(700, f"Too many sessions: {MAX_SESSIONS} are open")
                session = self._items[key] = Session()
            if not session.lock.acquire(blocking=False):
                raise SqlError.of(373, f"Session {key[1]} is locked by a concurrent client")
            return session

    def _expire(self) -> None:
        now = time.monotonic()
        for key, session in list(self._items.items()):
            if session.expires and session.expires < now and session.lock.acquire(blocking=False):
                del self._items[key]
                session.reset()
                session.lock.release()

    def close_all(self) -> None:
        with self._lock:
            sessions, self._items = list(self._items.values()), {}
        for session in sessions:
            session.reset()
