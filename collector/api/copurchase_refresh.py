"""Co-purchase pairs recomputed soon after what they are made of changes, not only on the
clock.

``copurchase_pairs_mv`` (clickhouse/0039, 0046) recomputes every pair at each refresh, since a
buyer is a person resolved through the identity graph at each purchase's time and a new
login can change whose earlier purchases were: ~0.2 s on an empty store, 2-5 CPU-seconds at
10 million events. Hence its schedule of 10 minutes, which left "bought together" up to
10 minutes behind the purchases. This thread asks the engine for a refresh when an input
changed since the last one it asked for:

- a purchase stored in ``events``, by this collector or any other on the same ClickHouse;
- a row of the identity graph (links, merges, splits), of ``sites`` (a site's limit of
  persons per identifier), or a delete or update anywhere (an erasure);

and when the refresh's own cost allows it: at least ``gap`` seconds after the last one it
asked for, and at least ``COST_SHARE`` times the last refresh's duration, so that
refreshing takes at most 1/``COST_SHARE`` of a core whatever the data's size. The duration
is the engine's wall time, which grows when the core is busy: refreshes then space out
further (bench/recommend.py at 10 million events, under 5,000 events/s on the same core:
a new pair listed 10-190 s after its purchases). The view's own schedule stays, for what
this cannot see. A stopped view (a migration running, here or in another process) is not
refreshed: the engine ignores the request then.

It looks only after this collector stored rows (the flusher's call) or ``POLL`` seconds
passed (other collectors' rows, admins' operations): an idle collector pays one small
statement every ``POLL`` seconds. Not on a cluster: each node refreshes its own copy of the
view by its schedule. On a ClickHouse server, the collector's user needs the ``SYSTEM
VIEWS`` grant, as its migrations do; tagwerk's SQL interface refuses every SYSTEM statement,
so a collector writing through it leaves the refresh to the ``tagwerk serve`` hosting the
engine, which sees the rows in its looks.
"""

from __future__ import annotations

import logging
import threading
import time

from collector.identity.changes import STATE
from collector.storage import StorageError, Store
from collector.storage.positions import PART_TOP_BLOCK

log = logging.getLogger("tagwerk.copurchase")

VIEW = "tagwerk.copurchase_pairs_mv"
# What the view reads besides events: any new part of theirs may change a pair.
INPUTS = ("identity_links_by_identifier", "identity_merges", "identity_overrides", "sites")
COST_SHARE = 20  # refreshes take at most 1/20 of a core
POLL = 15.0  # seconds between looks when this collector stores nothing
# A purchase among the rows of events stored between two looks (only their parts are read).
NEW_PURCHASE = f"""
SELECT 1 FROM tagwerk.events
WHERE {PART_TOP_BLOCK} > {{since:UInt64}}
  AND _block_number > {{since:UInt64}} AND _block_number <= {{top:UInt64}}
  AND event = 'purchase'
LIMIT 1
"""
STATUS = ("SELECT last_success_duration_ms AS ms FROM system.view_refreshes "
          "WHERE database = 'tagwerk' AND view = 'copurchase_pairs_mv'")


class CopurchaseRefresh:
    def __init__(self, store: Store, gap: float, poll: float = POLL) -> None:
        self.store, self.gap, self.poll = store, gap, poll
        self.asked = 0  # refreshes asked for (tests, metrics)
        self.last_duration = 0.0  # the last refresh's seconds, as last read (metrics)
        self.last_error: str | None = None
        self._tops: dict[str, int] | None = None  # the inputs as of the last look
        self._last = float("-inf")  # when it was asked (monotonic)
        self._stored = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copurchase", daemon=True)

    def start(self) -> None:
        """Reads the inputs as they are (before the flusher starts: none of its rows is
        taken for old), then looks after each of its batches. Without an answer now, the
        first look refreshes."""
        try:
            self._tops = self._state()
        except StorageError as exc:
            log.warning("co-purchase refresh: %s", exc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._stored.set()
        if self._thread.ident is not None:  # (a collector stopped before it started)
            self._thread.join(5)

    def stored(self) -> None:
        """This collector stored rows (the flusher, after each batch): look soon."""
        self._stored.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stored.wait(self.poll)
            self._stored.clear()
            try:
                # (rows stored while waiting are seen by the look after the wait)
                if self._stop.wait(max(0.0, self.due(self._duration()) - time.monotonic())):
                    return
                self._look()
                self.last_error = None
            except StorageError as exc:
                if self.last_error != str(exc):  # once, not at every look
                    log.warning("co-purchase refresh failed, will retry: %s", exc)
                self.last_error = str(exc)
            except Exception:
                log.exception("co-purchase refresh")

    def due(self, duration: float) -> float:
        """When (monotonic) the next refresh may be asked, the last one having taken
        ``duration`` seconds."""
        return self._last + max(self.gap, COST_SHARE * duration)

    def _duration(self) -> float:
        """The last refresh's seconds (0 before the first)."""
        rows = self.store.rows(STATUS)
        self.last_duration = (rows[0]["ms"] or 0) / 1000 if rows else 0.0
        return self.last_duration

    def _state(self) -> dict[str, int]:
        """The inputs' highest block numbers, and of patch parts and mutations."""
        return {row["of"]: int(row["top"])
                for row in self.store.rows(STATE, {"tables": ["events", *INPUTS]})}

    def _look(self) -> None:
        tops = self._state()
        before = self._tops
        if before is None or (
                any(top != before.get(of, 0) for of, top in tops.items() if of != "events")
                or self.purchased(before.get("events", 0), tops.get("events", 0))):
            self._last = time.monotonic()
            self.store.execute(f"SYSTEM REFRESH VIEW {VIEW}")
            self.asked += 1
        # Read before the refresh began: what comes in while it runs is the next look's.
        self._tops = tops

    def purchased(self, since: int, top: int) -> bool:
        """Whether events stored a purchase in blocks ``since`` (excluded) to ``top``."""
        if top <= since:
            return top < since  # events made again: everything may have changed
        return bool(self.store.rows(NEW_PURCHASE, {"since": since, "top": top}))
