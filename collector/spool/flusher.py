"""The flusher: moves spooled rows into ClickHouse in batches, exactly once.

A batch is cut ``interval`` after the flusher found hits waiting, or once ``max_bytes`` wait.
Under load the interval stretches (``Flusher.wait``): an insert costs the materialised
views about 0.1 s of engine CPU whatever its size, so fewer, larger inserts leave more of
the core to the requests when it is short.
Before inserting, the flusher records the batch's bounds in the checkpoint; after a crash
the same bounds are replayed with the same ``insert_deduplication_token``, so ClickHouse
drops a block it already has. Event ids chosen by senders are checked against the table
too, which catches a sender's retry of a hit it had no answer for (a copy from another
request; one from the same request is the batch's own, stored before a crash, and stays in
the replay, whose rows the views that missed the batch then count).

Each spool record is one request, in the format of ``record.py``, which names its table.

A batch is a range of the spool, whatever tables its records are for: it is inserted as one
insert per table, ``tagwerk.events`` first, then the others by name, each with its own
``insert_deduplication_token``: ``<spool id>:<range>:<table>``, except for events, whose
token stays ``<spool id>:<range>`` (so that a batch left pending by an older version
replays under the token it was first sent with). A replay reads the same range, so it
makes the same inserts with the same tokens: one ClickHouse already has is dropped, one it
lacks (the crash came between two tables) is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from collector.metrics import Metrics
from collector.spool.disk import Checkpoint, Pos, Spool
from collector.spool.record import EVENT_COLUMNS, EVENTS, INSERTS, NO_META, TABLES, table_of
from collector.spool.refused import refused_rows
from collector.storage import StorageError, StorageUnavailable, Store

log = logging.getLogger("tagwerk.flusher")

MAX_REPLAY = 1 << 40
# The longest the flusher gathers hits because inserts take long (an interval set longer
# still applies): the freshness the aggregates promise is 1 s.
STRETCH_LIMIT = 1.0
SMOOTHING = 0.25  # the weight of the last insert's time in ``insert_seconds``
FORMAT = "JSONCompactEachRow"
# Rows spooled before a column was added end early: defaults fill in.
PARSING = {"input_format_json_compact_allow_variable_number_of_columns": "1"}
# A batch may span any number of months (events are partitioned by month; the batch API
# takes times back to 2000, for a backfill): ClickHouse refuses more than 100 by default.
SPREAD = {"max_partitions_per_insert_block": "0"}
ID_PREFIX = len(b'["')  # rows are JSON arrays with event_id first
INSERT = INSERTS[EVENTS]
ID_LENGTH = 36
SITE_ID, TS, DEVICE_ID, USER_ID = (EVENT_COLUMNS.index(c)
                                   for c in ("site_id", "ts", "device_id", "user_id"))
IDENTIFIERS = EVENT_COLUMNS.index("identifiers")
RECEIVED_AT = EVENT_COLUMNS.index("received_at")
USER_VERIFIED = EVENT_COLUMNS.index("user_verified")
AGENT_COLUMNS = tuple(EVENT_COLUMNS.index(c)
                      for c in ("device_class", "browser", "os", "is_bot"))


class Agent(Protocol):
    device_class: str
    browser: str
    os: str
    is_bot: bool


class Agents(Protocol):
    """The accurate answers for the User-Agents a request only guessed (the records' "g"):
    ``collector.enrich.useragent.Resolver``, set by the service."""

    def start_batch(self) -> None: ...

    def agent(self, key: str) -> Agent | None: ...


class GuessesStay:
    """No accurate answers: every guess stays (until the service sets its resolver)."""

    def start_batch(self) -> None:
        pass

    def agent(self, key: str) -> Agent | None:
        return None


class Flusher:
    def __init__(
        self,
        spool: Spool,
        store: Store,
        metrics: Metrics,
        interval: float = 0.25,
        max_bytes: int = 16 * 1024 * 1024,
        stretch: bool = True,
    ) -> None:
        self.spool, self.store, self.metrics = spool, store, metrics
        self.interval, self.max_bytes, self.stretch = interval, max_bytes, stretch
        # Seconds an insert takes, smoothed (SMOOTHING): one slow insert (a merge beside it)
        # does not hold the next batch back, a run of them does.
        self.insert_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
        self.last_error: str | None = None
        # Erasures learnt while rows were spooled: rows before `recheck_until` were checked
        # at ingestion against fewer tombstones, and are checked again here (`blocked`:
        # site id and the row's identifiers -> whether it names an erased one).
        self.blocked: Callable[[str, dict[str, Any]], bool] | None = None
        self.recheck_until: Pos | None = None
        # Called with the batch's rows of events (b"" for none) once it is stored, before
        # it counts as flushed (answers kept in memory are refreshed by then).
        self.inserted: Callable[[bytes], None] = lambda rows: None
        self._recheck_lock = threading.Lock()
        self.agents: Agents = GuessesStay()

    def start(self) -> None:
        self._thread.start()

    def recheck(self, until: Pos) -> None:
        """Check the rows spooled before ``until`` again, against the tombstones known now
        (called when new ones are learnt)."""
        with self._recheck_lock:
            if self.recheck_until is None or until > self.recheck_until:
                self.recheck_until = until

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is durable (while ClickHouse answers), then stop."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def caught_up(self) -> bool:
        return self.spool.checkpoint.flushed >= self.spool.durable

    def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                self._step()
                backoff = 0.1
                if self._stop.is_set() and self.caught_up:
                    return
            except StorageError as exc:
                self.metrics.flush_failures.inc()
                if self.last_error != str(exc):
                    log.warning("flush failed, will retry: %s", exc)
                self.last_error = str(exc)
                if self._stop.wait(backoff) and self._stop.is_set():
                    return  # shutting down while ClickHouse is away: the spool keeps it
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("flusher error")
                self.metrics.flush_failures.inc()
                time.sleep(1.0)

    def _step(self) -> None:
        checkpoint = self.spool.checkpoint
        if checkpoint.pending and checkpoint.pending > checkpoint.flushed:
            # A batch was being inserted when we stopped: replay it with the same bounds,
            # whatever the size limit is now.
            self._flush(checkpoint.flushed, checkpoint.pending, max_bytes=MAX_REPLAY)
            return
        start = checkpoint.flushed
        durable = self.spool.durable
        if durable <= start:
            self._stop.wait(0.01)
            return
        deadline = time.monotonic() + self.wait()
        while not self._stop.is_set() and time.monotonic() < deadline:
            durable = self.spool.durable
            if durable.segment == start.segment and durable.offset - start.offset < self.max_bytes:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            else:
                break
        self._flush(start, self.spool.durable)

    def wait(self) -> float:
        """How long the flusher gathers hits once it found some: ``interval``, or as long
        as an insert takes (smoothed: one slow insert beside a merge does not count) when
        that is longer, within ``STRETCH_LIMIT``. Inserts longer than the interval mean the
        core is short: inserting then takes at most half of the time, and each insert
        carries more rows, so that the views' fixed cost per insert (about 0.1 s of engine
        CPU whatever its rows) is paid less often. Alternated runs of bench/load.py's loads
        at saturation: the shop mix's CPU per event with the views 76.9 -> 59.2 µs; pixels,
        whose hits feed few views, gained nothing, and their p99 from 2xx to queryable went
        from 1.09 to 1.26 s (``TAGWERK_FLUSH_STRETCH=0`` keeps the interval)."""
        if not self.stretch:
            return self.interval
        return max(self.interval, min(self.insert_seconds, STRETCH_LIMIT))

    def _flush(self, start: Pos, end: Pos, max_bytes: int | None = None) -> None:
        records, stop = self.spool.read(start, end, max_bytes or self.max_bytes)
        if not records:
            self.spool.release(stop)
            return
        began = time.monotonic()
        self.last_error = None
        self.spool.write_checkpoint(Checkpoint(start, pending=stop))
        token = f"{self.spool.id}:{start.segment}:{start.offset}-{stop.segment}:{stop.offset}"
        rows = dropped = 0
        events = b""
        until = self.recheck_until
        recheck = until is not None and start < until
        for table, group in self._by_table(records):
            if table == EVENTS:
                if recheck:
                    group = [self._without_erased(r) for r in group]
                body, n, d = self._rows(group)
                events = body
            else:
                body = b"".join(r[r.index(b"\n") + 1 :] for r in group)
                n, d = body.count(b"\n"), 0
            if body:
                n -= self._insert(table, body, token if table == EVENTS else f"{token}:{table}")
            rows, dropped = rows + n, dropped + d
        self.inserted(events)
        self.spool.release(stop)
        with self._recheck_lock:  # done, unless more tombstones came meanwhile
            if recheck and self.recheck_until is until and until is not None and stop >= until:
                self.recheck_until = None
        took = time.monotonic() - began
        self.insert_seconds += SMOOTHING * (took - self.insert_seconds)
        self.metrics.flush_seconds.observe(took)
        self.metrics.rows_inserted.inc(by=rows)
        self.metrics.duplicates_dropped.inc(by=dropped)

    def _insert(self, table: str, body: bytes, token: str) -> int:
        """Insert a table's rows of the batch; the number of rows ClickHouse refused to
        parse and that were left out (``refused.py``). Raises StorageError otherwise."""
        try:
            self.store.insert(INSERTS[table], body, FORMAT,
                              {"insert_deduplication_token": token, **PARSING, **SPREAD})
            return 0
        except StorageUnavailable:
            raise
        except StorageError as exc:
            lines = body.splitlines(keepends=True)
            left_out = refused_rows(self.store, table, TABLES[table], lines, FORMAT, PARSING)
            if left_out is None:
                raise
            columns = TABLES[table]
            for index in left_out:
                try:  # (its site and its first column, the row's id; not what it says)
                    values = orjson.loads(lines[index])
                    site, row_id = values[columns.index("site_id")], values[0]
                except (orjson.JSONDecodeError, IndexError, TypeError):
                    site, row_id = "?", "?"
                log.error("ClickHouse refuses a row of site %r, left out (%s.%s %s): %s",
                          site, table, columns[0], row_id, str(exc)[:300])
            self.metrics.rows_unstorable.inc(by=len(left_out))
        # Nothing of the batch went in (it was refused while parsing): the rest, under the
        # batch's token, as a replay after a crash would insert it.
        skip = set(left_out)
        kept = b"".join(line for index, line in enumerate(lines) if index not in skip)
        if kept:
            self.store.insert(INSERTS[table], kept, FORMAT,
                              {"insert_deduplication_token": token, **PARSING, **SPREAD})
        return len(left_out)

    @staticmethod
    def _by_table(records: list[bytes]) -> list[tuple[str, list[bytes]]]:
        """The batch's records per target table: events first, then the others by name."""
        groups: dict[str, list[bytes]] = {EVENTS: []}
        for record in records:
            table = table_of(record)
            if table not in TABLES:
                # Written by a newer version: skip rather than wedge every table's rows.
                log.error("spool: a record for unknown table %r skipped", table)
                continue
            groups.setdefault(table, []).append(record)
        return [(EVENTS, groups.pop(EVENTS)), *sorted(groups.items())]

    def _without_erased(self, record: bytes) -> bytes:
        """The record without the rows that name an erased identifier (events only)."""
        if self.blocked is None:
            return record
        meta_end = record.index(b"\n") + 1
        kept = []
        for line in record[meta_end:].splitlines():
            values = orjson.loads(line)
            row = {"ts": values[TS], "user_id": values[USER_ID], "device_id": values[DEVICE_ID],
                   "identifiers": values[IDENTIFIERS] if len(values) > IDENTIFIERS else {},
                   "user_verified": len(values) > USER_VERIFIED and values[USER_VERIFIED]}
            if self.blocked(values[SITE_ID], row):
                self.metrics.erased_dropped.inc()
            else:
                kept.append(line + b"\n")
        # A record whose rows all went keeps its metadata and no rows: nothing is inserted.
        return record[:meta_end] + b"".join(kept)

    def _rows(self, records: list[bytes]) -> tuple[bytes, int, int]:
        """The batch body without repeated sender-given ids; rows and dropped counts."""
        metas = {}
        for index, record in enumerate(records):
            if not record.startswith(NO_META + b"\n"):
                metas[index] = orjson.loads(record[: record.index(b"\n")])
        with_ids = [meta for meta in metas.values() if "ids" in meta]
        # Sender-given ids are unique per site: another site's hit with the same id is its own.
        stored = self._existing(with_ids) if with_ids else {}
        seen: set[tuple[str, str]] = set()
        parts: list[bytes] = []
        rows = dropped = 0
        self.agents.start_batch()
        for index, record in enumerate(records):
            meta_end = record.index(b"\n") + 1
            meta = metas.get(index)
            if meta is None:
                parts.append(record[meta_end:])
                rows += record.count(b"\n", meta_end)
                continue
            guessed = meta.get("g", {})
            lines = record[meta_end:].splitlines()
            # (a record is one request: its rows share the time it was received)
            received = orjson.loads(lines[0])[RECEIVED_AT] if "ids" in meta and lines else ""
            for line in lines:
                event_id = line[ID_PREFIX : ID_PREFIX + ID_LENGTH].decode()
                if "ids" in meta:
                    key = (meta["site"], event_id)
                    # A copy stored from another request is a sender's retry; one from this
                    # request is this batch's own, inserted before a crash: the replay must
                    # hold the same rows, for the views that missed them (probe 68).
                    if stored.get(key, set()) - {received} or key in seen:
                        dropped += 1
                        continue
                    seen.add(key)
                if event_id in guessed:
                    line = self._resolved(line, guessed[event_id], bool(meta.get("db")))
                    if not line:
                        continue
                parts.append(line + b"\n")
                rows += 1
        return b"".join(parts), rows, dropped

    def _resolved(self, line: bytes, key: str, drop_bots: bool) -> bytes:
        """The row with its agent's accurate answer, when known; b"" for a bot of a site
        that drops bots."""
        agent = self.agents.agent(key)
        if agent is None:
            return line  # the guess stays
        if agent.is_bot and drop_bots:
            self.metrics.bots_dropped.inc()
            return b""
        values = orjson.loads(line)
        for column, value in zip(AGENT_COLUMNS, (agent.device_class, agent.browser, agent.os,
                                                 agent.is_bot), strict=True):
            values[column] = value
        return orjson.dumps(values)

    def _existing(self, metas: list[dict]) -> dict[tuple[str, str], set[str]]:
        """The sender-given ids ClickHouse has already, as (site, id), and when the requests
        that brought them were received (as the rows hold it)."""
        ids = [i for meta in metas for i in meta["ids"]]
        found = self.store.rows(
            "SELECT site_id, toString(event_id) AS id, "
            "groupUniqArray(toString(received_at)) AS received FROM tagwerk.events "
            "WHERE site_id IN {sites:Array(String)} "
            "AND ts BETWEEN {lo:DateTime64(3, 'UTC')} - INTERVAL 1 DAY "
            "AND {hi:DateTime64(3, 'UTC')} + INTERVAL 1 DAY "
            "AND event_id IN {ids:Array(UUID)} GROUP BY site_id, id",
            {
                "sites": sorted({meta["site"] for meta in metas}),
                "lo": min(meta["lo"] for meta in metas),
                "hi": max(meta["hi"] for meta in metas),
                "ids": ids,
            },
        )
        return {(row["site_id"], row["id"]): set(row["received"]) for row in found}
