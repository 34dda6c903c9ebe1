"""Answers about persons kept in memory until a row they depend on changes.

A profile costs several reads of the identity and activity tables; a recommendation engine
asks for the same visitors' profiles again and again while they browse. An answer is kept
with the keys it was computed from (the identifier asked for, the person's user ids and
identifiers, the consent decisions it lists) and dropped as soon as the change feed
(``changes.py``) reports a new row naming one of them: a hit, a login, a decision, from
this collector or another. What the feed cannot follow row by row (an erasure, a merge)
drops everything.

An answer computed while the feed moved is kept only if none of the changes reported
meanwhile touched it: the rows it read may predate them (``begin`` / ``put``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from collector.identity.changes import ChangeFeed
from collector.identity.graph import Decisions, load_decisions
from collector.storage import Store

MAX_ENTRIES = 20_000
MAX_AGE = 60.0  # seconds: bounds what the feed does not see (rows expiring by TTL)
RECENT = 256  # changes remembered for answers computed meanwhile
DECISIONS = ("decisions",)  # the name the site's merges and splits are kept under


@dataclass
class _Entry:
    answer: object
    keys: frozenset[str]
    stored: float


class PersonAnswers:
    def __init__(self, feed: ChangeFeed, max_entries: int = MAX_ENTRIES,
                 max_age: float = MAX_AGE) -> None:
        self.feed = feed
        self.max_entries, self.max_age = max_entries, max_age
        self._entries: OrderedDict[tuple[str, Hashable], _Entry] = OrderedDict()
        self._by_key: dict[tuple[str, str], set[tuple[str, Hashable]]] = {}
        # Each change as (epoch, site or None for all, keys): for answers computed meanwhile.
        self._recent: deque[tuple[int, str | None, frozenset[str]]] = deque(maxlen=RECENT)
        self._epoch = 0
        self._began = 0.0  # when an answer was last begun
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        feed.listeners.append(self.changed)

    @property
    def enabled(self) -> bool:
        return self.feed.usable

    def get(self, site_id: str, name: Hashable, counted: bool = True) -> tuple[bool, object]:
        """(found, answer). ``counted``: in the hits and misses (answers to requests)."""
        with self._lock:
            entry = self._entries.get((site_id, name))
            if entry is None or time.monotonic() - entry.stored > self.max_age:
                self.misses += counted
                return False, None
            self._entries.move_to_end((site_id, name))
            self.hits += counted
            return True, entry.answer

    def decisions(self, store: Store, site_id: str) -> Decisions | None:
        """The site's merges and splits (``graph.Decisions``), kept like an answer that
        names no key: only what the feed cannot follow row by row (every merge, split, undo
        and erasure is), ``max_age`` or the bound on kept answers drops them. None while
        nothing can be kept: the graph then reads them at each resolution. Blocking."""
        if not self.enabled:
            return None
        found, decisions = self.get(site_id, DECISIONS, counted=False)
        if not found:
            decisions = self.compute(site_id, DECISIONS,
                                     lambda: (load_decisions(store, site_id), ()))
        return decisions  # type: ignore[return-value]

    def compute(self, site_id: str, name: Hashable,
                work: Callable[[], tuple[object, Iterable[str]]]) -> object:
        """``work()``'s answer, kept with the keys it names (blocking: call it in a thread
        after a ``get`` that missed)."""
        since = self.begin()
        answer, keys = work()
        self.put(site_id, name, answer, keys, since)
        return answer

    def begin(self) -> int:
        """Before computing an answer: the moment to pass to ``put``."""
        if not self.enabled:
            return -1
        self.feed.watch()
        with self._lock:
            self._began = time.monotonic()
            return self._epoch

    def put(self, site_id: str, name: Hashable, answer: object, keys: Iterable[str],
            since: int) -> None:
        if since < 0:
            return
        keys = frozenset(keys)
        with self._lock:
            if since != self._epoch and not self._untouched(site_id, keys, since):
                return
            self._drop((site_id, name))
            self._entries[(site_id, name)] = _Entry(answer, keys, time.monotonic())
            for key in keys:
                self._by_key.setdefault((site_id, key), set()).add((site_id, name))
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def changed(self, changes: dict[str, set[str]] | None) -> None:
        """From the feed: these keys of these sites changed (None: anything did)."""
        with self._lock:
            self._epoch += 1
            if changes is None:
                self._recent.append((self._epoch, None, frozenset()))
                self._entries.clear()
                self._by_key.clear()
            else:
                for site_id, keys in changes.items():
                    self._recent.append((self._epoch, site_id, frozenset(keys)))
                    for key in keys:
                        for name in self._by_key.pop((site_id, key), ()):
                            self._drop(name)
            # Nothing kept, and no answer begun lately (one computed now must still hear of
            # the changes it may have missed): the feed can rest.
            if not self._entries and time.monotonic() - self._began > self.max_age:
                self.feed.idle()

    def clear(self) -> None:
        """After an operation of this collector's (merge, split, undo, erasure): at once,
        not at the feed's next look."""
        self.changed(None)

    def _untouched(self, site_id: str, keys: frozenset[str], since: int) -> bool:
        """Whether no change after ``since`` touched these keys (lock held)."""
        if not self._recent or self._recent[0][0] > since + 1:
            return False  # the changes since then are no longer all remembered
        for epoch, site, changed in self._recent:
            if epoch > since and (site is None or (site == site_id and keys & changed)):
                return False
        return True

    def _drop(self, name: tuple[str, Hashable]) -> None:
        entry = self._entries.pop(name, None)
        if entry is None:
            return
        site_id = name[0]
        for key in entry.keys:
            names = self._by_key.get((site_id, key))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_key[(site_id, key)]
