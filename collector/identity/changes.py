"""What changed in the stored rows since the last look, for answers about persons kept in
memory (``cache.py``).

Every row a person's answer depends on arrives through an insert into ``tagwerk.events``
(``person_activity`` and ``identity_links`` are its materialised views) or
``tagwerk.consent_log``. Both keep each row's block number (migrations 0009 and 0018), and
the highest block number of a plain MergeTree's active parts bounds what is committed (see
``collector/api/cursor.py``). So one reader follows both tables, whoever inserted: this
collector's flusher, another collector on the same ClickHouse, a restore. It reports the
keys the new rows name, per site: ``user:<id>``, ``device:<id>``, ``<kind>:<id>`` for each
identifier, ``consent:<id>``.

What it cannot follow row by row it reports as "everything changed": a mutation (an
erasure's DELETE, an ALTER ... UPDATE), a merge or split of persons (their tables change
rarely), a burst of more rows than it reads at once. A table whose block numbers do not
follow commits (replicated, distributed) cannot be followed at all: then ``usable`` is
False and callers keep nothing.

The feed reads only while someone keeps answers (``watch``): an idle collector pays
nothing, an active one one small query every ``interval`` and one per batch of new rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson

from collector.storage import StorageError, Store

log = logging.getLogger("tagwerk.changes")

FOLLOWED = ("events", "consent_log")
# Changed only by identity operations: any new part of theirs means "everything changed".
RARE = ("identity_merges", "identity_overrides")
MOST_ROWS = 50_000  # distinct rows read per look; beyond, everything changed

STATE = """
SELECT table, max(max_block_number) AS top,
       groupArrayIf(name, max_block_number > {since:UInt64}) AS fresh
FROM system.parts
WHERE database = 'tagwerk' AND active AND table IN {tables:Array(String)}
GROUP BY table
"""
# Mutations of any table (erasures delete with them): their set, as one number.
MUTATIONS = """
SELECT count() AS n, sum(cityHash64(table, mutation_id)) AS digest FROM system.mutations
WHERE database = 'tagwerk'
"""
NEW_EVENTS = """
SELECT DISTINCT site_id, user_id, device_id, identifiers FROM tagwerk.events
WHERE _part IN {parts:Array(String)}
  AND _block_number > {since:UInt64} AND _block_number <= {top:UInt64}
LIMIT {most:UInt32}
"""
NEW_DECISIONS = """
SELECT DISTINCT site_id, concat('consent:', consent_id) AS key FROM tagwerk.consent_log
WHERE _part IN {parts:Array(String)}
  AND _block_number > {since:UInt64} AND _block_number <= {top:UInt64} AND consent_id != ''
LIMIT {most:UInt32}
"""

# Called with {site_id: keys}, or None for "everything changed".
Listener = Callable[[dict[str, set[str]] | None], None]


def keys_of_row(user_id: str, device_id: str, identifiers: dict[str, str]) -> set[str]:
    """The keys a stored hit names."""
    keys = {f"{kind}:{ident}" for kind, ident in identifiers.items() if ident}
    if user_id:
        keys.add(f"user:{user_id}")
    if device_id:
        keys.add(f"device:{device_id}")
    return keys


class ChangeFeed:
    def __init__(self, store: Store, interval: float = 0.1) -> None:
        self.store = store
        self.interval = interval
        self.listeners: list[Listener] = []
        self.usable = False
        self._tops: dict[str, int] = {}
        self._mutations: tuple[int, int] | None = None
        self._watching = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one look at a time
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.usable = self._followable()
        except StorageError as exc:
            log.warning("answers about persons are not kept: %s", exc)
            self.usable = False
        if self.usable:
            self._thread = threading.Thread(target=self._run, name="changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def watch(self) -> None:
        """Someone keeps answers: start following (from now) if not already."""
        if self._watching.is_set():
            return
        with self._lock:
            if not self._watching.is_set():
                self._tops, self._mutations = self._state({})[0], self._mutation_state()
                self._watching.set()

    def idle(self) -> None:
        """Nobody keeps answers: stop reading until the next ``watch``."""
        self._watching.clear()

    def inserted(self) -> None:
        """This collector just stored rows: look now, in the caller's thread, so that once
        its flusher says a hit is stored no kept answer misses it."""
        if self._watching.is_set():
            self._look_or_forget()

    def look(self) -> None:
        """One look: tell the listeners what changed since the last one."""
        with self._lock:
            if not self._watching.is_set():
                return
            changed = self._changes()
        if changed is None or changed:
            for listener in self.listeners:
                listener(changed)

    def _look_or_forget(self) -> None:
        try:
            self.look()
        except Exception as exc:  # what changed is unknown: nothing kept can be trusted
            if not isinstance(exc, StorageError):
                log.exception("change feed")
            for listener in self.listeners:
                listener(None)
            self.idle()

    # -- reading ------------------------------------------------------------------------------

    def _run(self) -> None:
        """Rows other processes stored: looked for every ``interval``."""
        while not self._stop.is_set():
            self._watching.wait(1.0)
            if self._stop.wait(self.interval):
                return
            self._look_or_forget()

    def _followable(self) -> bool:
        found = self.store.rows(
            "SELECT name, engine FROM system.tables WHERE database = 'tagwerk' "
            "AND name IN {tables:Array(String)}", {"tables": [*FOLLOWED, *RARE]})
        engines = {row["name"]: row["engine"] for row in found}
        return all(engines.get(t, "").endswith("MergeTree")
                   and not engines.get(t, "").startswith(("Replicated", "Shared"))
                   for t in (*FOLLOWED, *RARE))

    def _state(self, since: dict[str, int]) -> tuple[dict[str, int], dict[str, list[str]]]:
        # Parts newer than the oldest table's position; each table filters its own below.
        rows = self.store.rows(STATE, {"tables": [*FOLLOWED, *RARE],
                                       "since": min(since.values(), default=0)})
        tops = {row["table"]: int(row["top"]) for row in rows}
        fresh = {row["table"]: row["fresh"] for row in rows}
        return tops, fresh

    def _mutation_state(self) -> tuple[int, int]:
        [row] = self.store.rows(MUTATIONS) or [{"n": 0, "digest": 0}]
        return int(row["n"]), int(row["digest"])

    def _changes(self) -> dict[str, set[str]] | None:
        tops, fresh = self._state(self._tops)
        mutations = self._mutation_state()
        before, self._tops = self._tops, tops
        if mutations != self._mutations:
            self._mutations = mutations
            return None
        if any(tops.get(t, 0) != before.get(t, 0) for t in RARE):
            return None
        changed: dict[str, set[str]] = {}
        for table, sql in (("events", NEW_EVENTS), ("consent_log", NEW_DECISIONS)):
            since, top = before.get(table, 0), tops.get(table, 0)
            if top < since:  # the table was dropped and made again
                return None
            if top == since:
                continue
            rows = self.store.rows(sql, {"parts": fresh.get(table, []), "since": since,
                                         "top": top, "most": MOST_ROWS})
            if len(rows) >= MOST_ROWS:
                return None
            for row in rows:
                keys = changed.setdefault(row["site_id"], set())
                if "key" in row:
                    keys.add(row["key"])
                else:
                    keys |= keys_of_row(row["user_id"], row["device_id"],
                                        _as_dict(row["identifiers"]))
        return changed


def _as_dict(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return value
    return orjson.loads(value) if value else {}
