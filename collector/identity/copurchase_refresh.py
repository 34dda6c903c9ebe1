"""Co-purchase pairs recomputed soon after what they are made of changes, not only on the
clock.

``copurchase_pairs_mv`` (clickhouse/0039, 0046) recomputes every pair at each refresh, since a
buyer is a person resolved through the identity graph at each purchase's time and a new
login can change whose earlier purchases were: ~0.2 s on an empty store, 2-5 CPU-seconds at
10 million events. Hence its schedule of 10 minutes, which left "bought together" up to
10 minutes behind the purchases. This thread asks the engine for a refresh when an input
changed since the last look:

- a purchase stored in ``events``, by this collector or any other on the same ClickHouse;
- a row of the identity graph (links, merges, splits), of ``sites`` (a site's limit of
  persons per identifier), or a delete or update anywhere (an erasure);

and when the refresh's cost allows it: ``gap`` seconds at least after the last refresh (the
engine's, whoever asked for it, or this thread's request), and ``cost_share`` times the last
refresh's duration, so that refreshing takes at most 1/``cost_share`` of a core whatever the
data's size and however many collectors share the engine. The duration is the engine's
wall time, which grows when the core is busy: refreshes then space out further. It asks
only while the view is scheduled: not while a refresh runs (the engine would run a second
one right after), after a failed one (the engine retries it on its own, then keeps to the
schedule; a cancelled one is no failure), or while a migration has the view stopped; the
change then waits for the next look.

It looks after this collector stored rows that may pair (the flusher's call: a purchase
or an identity link among them, ``may_pair``), after an admin's merge, split, undo or
erasure through it (``changed``), and every ``poll`` seconds (other collectors' rows and
operations, a site's settings changed by the CLI): an idle collector, or one storing only
views, pays a few small statements every ``poll`` seconds. Where block numbers do not
follow commits (replicated or shared tables), every batch this collector stores that may
pair counts as a change. Not on a cluster: each node
refreshes its own copy on the schedule. On a ClickHouse server the collector's user needs
the ``SYSTEM VIEWS`` grant, as its migrations do; refused (tagwerk's SQL interface refuses
every SYSTEM statement), the thread stops asking, and the ``tagwerk serve`` hosting the
engine refreshes for the rows it finds in its looks.
"""

from __future__ import annotations

import logging
import threading
import time

from collector.identity.changes import followable, tops
from collector.storage import StorageError, StorageUnavailable, Store
from collector.storage.positions import PART_TOP_BLOCK

log = logging.getLogger("tagwerk.copurchase")

VIEW = "tagwerk.copurchase_pairs_mv"
# What the view reads: a new row in any of these may change a pair.
TABLES = ("events", "identity_links_by_identifier", "identity_merges", "identity_overrides",
          "sites")
COST_SHARE = 20  # refreshes take at most 1/20 of a core (of wall time on it)
POLL = 15.0  # seconds between looks when this collector stores nothing
# The values of ``events.event`` and ``events.type`` that may change a pair: a purchase, an
# identity link (clickhouse/0028's view links identify and alias hits only), as orjson
# writes them in the spool's rows (collector/spool/record.py).
PAIRING = (b'"purchase"', b'"identify"', b'"alias"')
# A purchase among the rows of events stored between two looks (only their parts are read).
NEW_PURCHASE = f"""
SELECT 1 FROM tagwerk.events
WHERE {PART_TOP_BLOCK} > {{since:UInt64}}
  AND _block_number > {{since:UInt64}} AND _block_number <= {{top:UInt64}}
  AND event = 'purchase'
LIMIT 1
"""
# The view's state; ``ago``: seconds since its last refresh began or ended, whoever asked.
# A refresh a STOP VIEW cancelled (a migration's) failed as 'cancelled', which the engine
# does not retry: no reason to wait for the schedule.
STATUS = """
SELECT status, exception NOT IN ('', 'cancelled') AS failed,
       ifNull(last_success_duration_ms, 0) / 1000 AS seconds,
       ifNull(dateDiff('second', greatest(last_refresh_time, last_success_time), now()),
              1e9) AS ago
FROM system.view_refreshes WHERE database = 'tagwerk' AND view = 'copurchase_pairs_mv'
"""


class CopurchaseRefresh:
    def __init__(self, store: Store, gap: float, poll: float = POLL,
                 cost_share: float = COST_SHARE, last_look: bool = True) -> None:
        self.store, self.gap, self.poll, self.cost_share = store, gap, poll, cost_share
        # At stop, one more look for the flusher's last batch (not for an embedded engine,
        # which refreshes every view when it starts again).
        self.last_look = last_look
        self.asked = 0  # refreshes asked for (tests, metrics)
        self.last_duration = 0.0  # the last refresh's seconds, as last read (metrics)
        self.last_error: str | None = None
        self.refused = False  # the user may not refresh views: the thread stopped asking
        self._tops: dict[str, int] | None = None  # the inputs as of the last look
        self._follow = True  # block numbers follow commits
        # Where they do not: a batch stored since the last request (what stands for a change).
        self._stored_since = False
        self._asked_at = float("-inf")  # this thread's last request (monotonic)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copurchase", daemon=True)

    def start(self) -> None:
        """Reads the inputs as they are (before the flusher starts: none of its rows is
        taken for old), then looks after each of its batches. Without an answer now, the
        first look refreshes."""
        try:
            self._follow = followable(self.store, TABLES)
            self._tops = tops(self.store, TABLES)
        except StorageError as exc:
            log.warning("co-purchase refresh: %s", exc)
        self._thread.start()

    def stop(self) -> None:
        """Called after the flusher stopped: its last batch gets a look of its own."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is None:  # (a collector stopped before it started)
            return
        self._thread.join(5)
        if self.last_look and not self.refused:
            self._stored_since = True
            self._look_or_log(any_time=True)

    def stored(self, rows: bytes) -> None:
        """This collector stored ``rows`` of events (the flusher, after each batch): look
        soon if they may pair. A look costs three statements: one per batch of pixel hits
        added a sixth to each hit's CPU (alternated runs of a collector with and without)."""
        if may_pair(rows):
            self.changed()

    def changed(self) -> None:
        """What the pairs are made of may have changed: look soon."""
        self._wake.set()

    def due(self, seconds: float, ago: float) -> float:
        """Seconds from now until a refresh may be asked, the last one having taken
        ``seconds`` and begun or ended ``ago`` seconds ago (whoever asked)."""
        since = min(ago, time.monotonic() - self._asked_at)
        return max(self.gap, self.cost_share * seconds) - since

    def _run(self) -> None:
        while not self._stop.is_set() and not self.refused:
            if self._wake.wait(self.poll):
                self._stored_since = True
            self._wake.clear()
            if not self._stop.is_set():
                self._look_or_log()

    def _look_or_log(self, any_time: bool = False) -> None:
        try:
            self._look(any_time)
            self.last_error = None
        except StorageError as exc:
            if self.last_error != str(exc):  # once, not at every look
                log.warning("co-purchase refresh failed, will retry: %s", exc)
            self.last_error = str(exc)
        except Exception:
            log.exception("co-purchase refresh")

    def _look(self, any_time: bool) -> None:
        """Waits until a refresh may be asked, then asks if an input changed. A change
        that cannot be asked for now stays for the next look."""
        while not any_time:
            [view] = self.store.rows(STATUS) or [None]
            if view is None:
                return  # no such view (a server this version did not migrate)
            self.last_duration = float(view["seconds"])
            if view["status"] != "Scheduled" or view["failed"]:
                return
            wait = self.due(self.last_duration, float(view["ago"]))
            if wait <= 0:
                break
            if self._stop.wait(wait):
                return
        now = tops(self.store, TABLES)
        if self._tops is None or self._changed(self._tops, now):
            self._asked_at = time.monotonic()
            try:
                self.store.execute(f"SYSTEM REFRESH VIEW {VIEW}")
            except StorageUnavailable:
                raise
            except StorageError as exc:
                self.refused = True
                log.info("co-purchase pairs refresh on the view's schedule only: %s", exc)
                return
            self.asked += 1
            self._stored_since = False
        # Read before the refresh began: what comes in while it runs is the next look's.
        self._tops = now

    def _changed(self, before: dict[str, int], now: dict[str, int]) -> bool:
        if not self._follow:
            return self._stored_since
        if any(top > before.get(of, 0) for of, top in now.items() if of != "events"):
            return True
        if any(now.get(table, 0) < before.get(table, 0) for table in TABLES):
            return True  # a table made again: everything may have changed
        return self.purchased(before.get("events", 0), now.get("events", 0))

    def purchased(self, since: int, top: int) -> bool:
        """Whether events stored a purchase in blocks ``since`` (excluded) to ``top``."""
        if top <= since:
            return False
        return bool(self.store.rows(NEW_PURCHASE, {"since": since, "top": top}))


def may_pair(rows: bytes) -> bool:
    """Whether rows of events (JSON arrays, as the spool holds them) may hold a purchase or
    an identity link. A word found elsewhere (in a URL) costs one look, as every batch did
    before; a purchase or a link is never missed: its value is written exactly so."""
    return any(word in rows for word in PAIRING)
