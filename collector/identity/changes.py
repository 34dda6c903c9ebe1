"""What changed in the stored rows since the last look, for answers about persons kept in
memory (``cache.py``).

The feed follows the tables those answers read: ``person_hits`` (what a person did),
``identity_links_by_identifier`` (who is whom; ``identity_links_by_person`` is written
with it) and ``consent_log`` (the decisions a profile lists). Each keeps its rows' block
numbers (migrations 0018, 0019, 0028), and the highest block number of a
plain MergeTree's active parts bounds what is committed (``collector/api/cursor.py``). So
one reader sees every new row, whoever inserted it: this collector's flusher, another
collector on the same ClickHouse, a restore. It reports the keys the new rows name, per
site: ``user:<id>``, ``device:<id>``, ``<kind>:<id>`` (hits), ``link:<kind>:<id>`` and
``link:user:<id>`` (links), ``consent:<id>``. It follows those tables, not ``events``: a
materialised view's rows become visible after the events they come from, and an answer
recomputed in between would be kept without them.

What it cannot follow row by row it reports as "everything changed": a mutation or a patch
part (an erasure's DELETE, an ALTER ... UPDATE), a merge or split of persons (their tables
change rarely), a burst of more rows than it reads at once. A table whose block numbers do not
follow commits (replicated, distributed) cannot be followed at all: then ``usable`` is
False and callers keep nothing.

The feed reads only while someone keeps answers (``watch``): an idle collector pays
nothing, an active one a look after each flush of its own and, for what others store, one
every ``interval``. On the embedded engine nobody else can write (the store counts every
write of this process, its SQL interface's included): the background looks only after
such a write has ended, and every ``QUIET_LOOK_SECONDS`` all the same. Rows that land after
their statement ended (a SQL user's ``async_insert`` without waiting for it), or that a
long insert commits while it runs, are found by that look at the latest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from collector.storage import StorageError, Store
from collector.storage.positions import PART_TOP_BLOCK

log = logging.getLogger("tagwerk.changes")

# A new link's keys start with this: a resolution depends on links only, an answer about a
# person on links and hits (``resolutions.py``).
LINK = "link:"
# A consent decision's key: a profile lists the decisions its hits were collected under.
CONSENT = "consent:"
# Each followed table, with its new rows' keys as SQL.
FOLLOWED = {
    "person_hits": "key",
    "identity_links_by_identifier": f"arrayJoin([concat('{LINK}', toString(kind), ':', id), "
                                    f"concat('{LINK}user:', user_id)])",
    "consent_log": f"concat('{CONSENT}', consent_id)",
}
# Changed only by identity operations: any new part of theirs means "everything changed".
RARE = ("identity_merges", "identity_overrides")
MOST_ROWS = 5_000  # distinct keys read per look (a flush's worth); beyond, everything changed
# Where every write passes through this process (``Store.sole_writer``), the background
# looks only once one ended since the last look, and at the latest after this long: a look
# costs ~9 ms of CPU on the 10M bench data: four a second held up about one profile in 13.
QUIET_LOOK_SECONDS = 5.0

# The tables' highest block numbers (of their rows' parts), and per table the highest block
# number of its patch parts ('patch:<table>') and of its mutations ('mutation:<table>'): one
# statement a look, one scan of system.parts (3.3 ms on the 10M bench data). An erasure
# deletes with patch parts, or with a mutation where a table cannot take them
# (privacy/erase.py); either takes a new block number, while a patch part applied by a
# merge, or a finished mutation forgotten, is no news.
STATE = """
SELECT if(startsWith(name, 'patch-'), concat('patch:', table), table) AS of,
       max(max_block_number) AS top
FROM system.parts
WHERE database = 'tagwerk' AND active
  AND (table IN {tables:Array(String)} OR startsWith(name, 'patch-'))
GROUP BY of
UNION ALL
SELECT concat('mutation:', table), max(toUInt64OrZero(extract(mutation_id, '[0-9]+')))
FROM system.mutations WHERE database = 'tagwerk'
GROUP BY table
"""
# The keys of one table's rows stored after a look (older parts are not read: positions.py).
NEW_KEYS = """
SELECT DISTINCT site_id, {key} AS key FROM tagwerk.{table}
WHERE {part_top} > {{since_{n}:UInt64}}
  AND _block_number > {{since_{n}:UInt64}} AND _block_number <= {{top_{n}:UInt64}}
"""

def followable(store: Store, tables: tuple[str, ...]) -> bool:
    """Whether the block numbers of ``tables`` follow commits: plain MergeTree tables (not
    replicated or shared ones, whose numbers are taken per partition before the commit)."""
    found = store.rows(
        "SELECT name, engine FROM system.tables WHERE database = 'tagwerk' "
        "AND name IN {tables:Array(String)}", {"tables": list(tables)})
    engines = {row["name"]: row["engine"] for row in found}
    return all(engines.get(t, "").endswith("MergeTree")
               and not engines.get(t, "").startswith(("Replicated", "Shared"))
               for t in tables)


def tops(store: Store, tables: tuple[str, ...]) -> dict[str, int]:
    """``STATE`` of ``tables``: their highest block numbers, 'patch:<table>' and
    'mutation:<table>' of any table."""
    return {row["of"]: int(row["top"]) for row in store.rows(STATE, {"tables": list(tables)})}


# Called with {site_id: keys}, or None for "everything changed".
Listener = Callable[[dict[str, set[str]] | None], None]


class ChangeFeed:
    def __init__(self, store: Store, interval: float = 0.25) -> None:
        self.store = store
        self.interval = interval
        self.listeners: list[Listener] = []
        self.usable = False
        self._tops: dict[str, int] = {}
        self._watching = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one look at a time
        self._seen_writes = -1  # ``store.writes`` as the last look began
        self._looked = 0.0  # when (monotonic)
        self._thread: threading.Thread | None = None
        # Counts each start and end of watching: whoever holds a copy made while watching
        # (link_index.py) knows from it whether changes may have gone unseen since.
        self.epoch = 0
        # Who needs the feed watching even when no answer is kept (link_index.py): while
        # one of these says so, ``idle`` does not stop it.
        self.needed: list[Callable[[], bool]] = []

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
                self._seen()
                self._tops = self._state()
                self.epoch += 1
                self._watching.set()

    def idle(self) -> None:
        """Nobody keeps answers: stop reading until the next ``watch`` (unless someone
        still needs it)."""
        if any(needed() for needed in self.needed):
            return
        if self._watching.is_set():
            self.epoch += 1
        self._watching.clear()

    @property
    def watching(self) -> bool:
        return self._watching.is_set()

    def inserted(self) -> None:
        """This collector just stored rows: look now, in the caller's thread, so that once
        its flusher says a hit is stored no kept answer misses it."""
        if self._watching.is_set():
            self._look_or_forget()

    def look(self) -> None:
        """One look: tell the listeners what changed since the last one. Told before the
        lock is let go: a look that finds nothing new (the flusher's, after the background
        one took its rows) returns only once those rows were told."""
        with self._lock:
            if not self._watching.is_set():
                return
            self._seen()
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

    def _seen(self) -> None:
        """Before reading the state: a write that ends after this makes the next look due."""
        self._seen_writes, self._looked = self.store.writes, time.monotonic()

    def _due(self) -> bool:
        """Whether the background should look: always where other processes may write;
        where all writes pass through here, once one ended since the last look (the
        flusher's own look follows its insert) and every ``QUIET_LOOK_SECONDS``."""
        return (not self.store.sole_writer or self.store.writes != self._seen_writes
                or time.monotonic() - self._looked >= QUIET_LOOK_SECONDS)

    def _run(self) -> None:
        """Rows stored without a look after them (other processes, the SQL interface, an
        admin's operation): looked for every ``interval`` when due (``_due``)."""
        while not self._stop.is_set():
            self._watching.wait(1.0)
            if self._stop.wait(self.interval):
                return
            if self._due():
                self._look_or_forget()

    def _followable(self) -> bool:
        return followable(self.store, (*FOLLOWED, *RARE))

    def _state(self) -> dict[str, int]:
        return tops(self.store, (*FOLLOWED, *RARE))

    def _changes(self) -> dict[str, set[str]] | None:
        tops = self._state()
        before, self._tops = self._tops, tops
        if any(tops.get(t, 0) != before.get(t, 0) for t in RARE):
            return None
        if any(top > before.get(t, 0) for t, top in tops.items()
               if t.startswith(("patch:", "mutation:"))):
            return None  # a delete or an update, by this collector or another
        branches, params = [], {"most": MOST_ROWS}
        for n, (table, key) in enumerate(FOLLOWED.items()):
            since, top = before.get(table, 0), tops.get(table, 0)
            if top < since:  # the table was dropped and made again
                return None
            if top > since:
                branches.append(NEW_KEYS.format(key=key, table=table, n=n,
                                                part_top=PART_TOP_BLOCK))
                params.update({f"since_{n}": since, f"top_{n}": top})
        if not branches:
            return {}
        rows = self.store.rows(
            f"SELECT site_id, key FROM ({' UNION ALL '.join(branches)}) "
            "WHERE key != '' LIMIT {most:UInt32}", params)
        if len(rows) >= MOST_ROWS:
            return None
        changed: dict[str, set[str]] = {}
        for row in rows:
            changed.setdefault(row["site_id"], set()).add(row["key"])
        return changed
