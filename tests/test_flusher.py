"""The flusher: batches into ClickHouse, replay after a crash, repeated event ids."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from collector.enrich.useragent import parse_agent
from collector.ingest.events import Context, normalize
from collector.metrics import Metrics
from collector.spool.disk import Checkpoint, Pos, Spool
from collector.spool.flusher import STRETCH_LIMIT, Flusher
from collector.spool.record import EVENT_COLUMNS, encode_record
from collector.storage import StorageError
from tests.helpers import wait_for
from tests.servers import Server
from tests.test_spool import append_all


def record(site: str, n: int, given: bool = False, pad: int = 0) -> tuple[bytes, list[str]]:
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    lines, ids, chosen = [], [], []
    for _ in range(n):
        raw = {"event": "e", "props": {f"p{i}": "x" * 2000 for i in range(pad)}}
        if given:
            raw["event_id"] = str(uuid.uuid4())
        row, sender = normalize(raw, ctx)
        lines.append(orjson.dumps(list(row.values())))
        ids.append(row["event_id"])
        if sender:
            chosen.append((row["event_id"], row["ts"]))
    return encode_record(lines, site, chosen), ids


def count(store, site: str) -> int:
    return store.rows("SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String}",
                      {"s": site})[0]["n"]


def test_flushes_by_age(backend, store, tmp_path):
    site = "flush-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    flusher = Flusher(spool, backend, Metrics(), interval=0.05)
    flusher.start()
    append_all(spool, [record(site, 5)[0], record(site, 7)[0]])
    wait_for(lambda: count(store, site) == 12)
    flusher.stop()
    spool.close()


def flushed_then_replayed(
    tmp_path, backend, records: list[bytes], segment: int,
    inserted: Callable[[], None] = lambda: None,
    first: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> None:
    """``records`` flushed (within ``first``), then replayed as after a crash before the
    checkpoint said so (``inserted`` checks in between)."""
    spool = Spool(tmp_path, segment, 1 << 30)
    append_all(spool, records)
    end = spool.durable
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))
    with first():
        Flusher(spool, backend, Metrics())._flush(Pos(1, 0), end)  # inserted and released...
    inserted()
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))  # ...but as if we crashed before
    spool.close()
    reopened = Spool(tmp_path, segment, 1 << 30)
    flusher = Flusher(reopened, backend, Metrics(), interval=0.02)
    flusher.start()
    wait_for(lambda: flusher.caught_up)
    flusher.stop()
    reopened.close()


def test_replay_of_a_batch_already_inserted_adds_nothing(backend, store, tmp_path):
    """The crash window: ClickHouse has the batch, the checkpoint does not say so yet."""
    site = "replay-" + uuid.uuid4().hex[:8]
    flushed_then_replayed(tmp_path, backend, [record(site, 10)[0]], 1 << 20)
    assert count(store, site) == 10


def test_a_batch_over_10_mb_sent_again_adds_nothing(backend, store, tmp_path, monkeypatch):
    """A flush sent again (as a statement, when the engine counted an error meanwhile, or
    replayed after a crash) is dropped by its token only if it is cut into the same blocks:
    ClickHouse's parallel parsing cut a batch over 10 MB differently when streamed and when
    inline, and the flood test of the stream saw ~600 of 2,000 rows twice."""
    from collector.storage import embedded

    real = embedded.errors_counted
    calls = iter(range(1 << 30))
    # Another query's error during each insert: the embedded store sends it again inline.
    monkeypatch.setattr(embedded, "errors_counted", lambda conn: real(conn) + next(calls))
    site = "large-" + uuid.uuid4().hex[:8]

    def once() -> None:
        assert count(store, site) == 600

    records = [record(site, 150, pad=10)[0] for _ in range(4)]  # 12 MB
    flushed_then_replayed(tmp_path, backend, records, 64 << 20, once)
    once()


# Each view's target, and a total that a second copy of a batch would change.
VIEW_TOTALS = {
    "product_hourly": "sum(views) + sum(purchases)",
    "session_items": "count()",
    "purchased_items": "count()",
    "page_daily": "sum(views)",
    "session_entries": "count()",
    "person_hits": "count()",
    "identity_links_by_identifier": "count()",
    "identity_links_by_person": "count()",
}


def view_totals(store, site: str) -> dict[str, int]:
    return {table: int(store.rows(f"SELECT {total} AS n FROM tagwerk.{table} "
                                  "WHERE site_id = {s:String}", {"s": site})[0]["n"])
            for table, total in VIEW_TOTALS.items()}


def shopping(site: str, device: str, given: bool = False) -> bytes:
    """A record whose hits feed every view: pages, products, a purchase, a login (``given``:
    each with an id of the sender's)."""
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    consent = ["analytics", "personalization"]
    item = {"product_id": "p1", "price": 10, "quantity": 1}
    raws = [{"event": "page_view", "path": "/", "session_id": "s1"},
            {"event": "view_item", "items": [item], "session_id": "s1"},
            {"event": "purchase", "items": [item], "session_id": "s1"},
            {"event": "login", "type": "identify", "user_id": "c-1"}]
    lines, chosen = [], []
    for raw in raws:
        if given:
            raw["event_id"] = str(uuid.uuid4())
        row, sender = normalize({**raw, "device_id": device, "consent": consent}, ctx)
        lines.append(orjson.dumps(list(row.values())))
        if sender:
            chosen.append((row["event_id"], row["ts"]))
    return encode_record(lines, site, chosen)


def test_a_replay_after_the_events_went_in_but_a_view_did_not_counts_every_hit(
        store, tmp_path):
    """Probe 68: the crash came after the batch's events part was committed, before a
    view's target part was. The replay left out the hits whose sender-given ids were now in
    events (as if they were a sender's retry), the events table dropped the replay by its
    token, the view stored the replay: the hits with ids were never counted there. A hit
    found stored by its own batch (the same request's copy) is not a retry."""
    site = "replay-half-" + uuid.uuid4().hex[:8]

    @contextlib.contextmanager
    def cut() -> Iterator[None]:  # the crash came before product_hourly's part
        store.execute("DETACH TABLE tagwerk.product_hourly_mv")
        try:
            yield
        finally:
            store.execute("ATTACH TABLE tagwerk.product_hourly_mv")

    def inserted() -> None:
        assert count(store, site) == 4 and view_totals(store, site)["product_hourly"] == 0

    flushed_then_replayed(tmp_path, store, [shopping(site, "d1", given=True)], 1 << 20,
                          inserted, cut)
    assert count(store, site) == 4
    assert view_totals(store, site)["product_hourly"] == 2  # the view and the purchase


def test_replay_of_a_batch_already_inserted_adds_nothing_to_the_views(store, tmp_path):
    """The crash window again, with hits for every materialised view: their targets
    deduplicate the replayed insert too (clickhouse/0027), or sums would double."""
    site = "replay-views-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [shopping(site, "d1")])
    end = spool.durable
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))
    Flusher(spool, store, Metrics())._flush(Pos(1, 0), end)
    once = view_totals(store, site)
    assert all(once.values()), once
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))  # as if we crashed
    spool.close()

    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    flusher = Flusher(reopened, store, Metrics(), interval=0.02)
    flusher.start()
    wait_for(lambda: flusher.caught_up)
    assert view_totals(store, site) == once
    # Not over-eager: the same hits of another device, in a new batch, count.
    append_all(reopened, [shopping(site, "d2")])
    wait_for(lambda: view_totals(store, site)["person_hits"] == 2 * once["person_hits"])
    flusher.stop()
    reopened.close()
    assert view_totals(store, site) == {table: 2 * n for table, n in once.items()}


def test_sender_ids_already_stored_are_dropped(backend, store, tmp_path):
    site = "dedup-" + uuid.uuid4().hex[:8]
    payload, ids = record(site, 4, given=True)
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    metrics = Metrics()
    flusher = Flusher(spool, backend, metrics, interval=0.02)
    flusher.start()
    append_all(spool, [payload])
    wait_for(lambda: count(store, site) == 4)
    # A retry, twice in one batch: each a request of its own (received later)
    append_all(spool, [with_ids(site, ids), with_ids(site, ids)])
    wait_for(lambda: flusher.caught_up)
    flusher.stop()
    spool.close()
    assert count(store, site) == 4
    assert metrics.duplicates_dropped.values[()] == 8


def with_ids(site: str, ids: list[str]) -> bytes:
    """A record of ``site`` whose hits carry these sender-given ids."""
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    rows = [normalize({"event": "e", "event_id": event_id}, ctx)[0] for event_id in ids]
    return encode_record([orjson.dumps(list(row.values())) for row in rows], site,
                         [(row["event_id"], row["ts"]) for row in rows])


def test_another_sites_hit_with_the_same_id_is_kept(backend, store, tmp_path):
    """A sender-given id is unique per site: another site's hit with the same id, in the same
    batch or after the first site's is stored, is a hit of its own, not a retry (found by an
    attacker's probe: both got a 202, one was dropped)."""
    first, second = ("ids-" + uuid.uuid4().hex[:8] for _ in range(2))
    shared, stored, other = (str(uuid.uuid4()) for _ in range(3))
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    metrics = Metrics()
    flusher = Flusher(spool, backend, metrics, interval=0.05)
    flusher.start()
    append_all(spool, [with_ids(first, [shared]), with_ids(second, [shared])])  # one batch
    wait_for(lambda: count(store, first) == 1 and count(store, second) == 1)
    append_all(spool, [with_ids(first, [stored])])
    wait_for(lambda: count(store, first) == 2)
    # The second site's hit with an id the first site has stored comes in a batch with a
    # hit of the first site's, which makes the flusher look the first site's ids up too.
    append_all(spool, [with_ids(first, [other]), with_ids(second, [stored])])
    wait_for(lambda: count(store, first) == 3 and count(store, second) == 2)
    append_all(spool, [with_ids(second, [stored])])  # the second site's own retry still goes
    wait_for(lambda: flusher.caught_up)
    flusher.stop()
    spool.close()
    assert (count(store, first), count(store, second)) == (3, 2)
    assert metrics.duplicates_dropped.values[()] == 1


def test_row_keys_are_the_insert_columns():
    ctx = Context("s", dt.datetime.now(dt.UTC), "web", parse_agent("x"))
    row, _ = normalize({"event": "e"}, ctx)
    assert tuple(row) == EVENT_COLUMNS


def test_batches_of_two_spools_are_both_kept(store, tmp_path):
    """Two collectors' first batches sit at the same positions of their own spools."""
    site = "twospools-" + uuid.uuid4().hex[:8]
    payload, _ = record(site, 3)
    for name in ("a", "b"):
        spool = Spool(tmp_path / name, 1 << 20, 1 << 30)
        append_all(spool, [payload.replace(b'"e"', b'"' + name.encode() + b'"')])
        Flusher(spool, store, Metrics())._flush(Pos(1, 0), spool.durable)
        spool.close()
    assert count(store, site) == 6




def refused_row(site: str, marker: str) -> bytes:
    """A record whose one row ClickHouse cannot parse: a revenue past Decimal(18, 4) (what
    ingestion let through before 49deb39: it held every hit behind it in the spool)."""
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    row, _ = normalize({"event": "purchase", "props": {"m": marker}}, ctx)
    row["revenue"] = "100000000000000.0000"
    return encode_record([orjson.dumps(list(row.values()))], site, [])


def test_a_row_clickhouse_refuses_is_set_aside_not_retried_forever(backend, store, tmp_path):
    site = "refused-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    metrics = Metrics()
    flusher = Flusher(spool, backend, metrics, interval=0.05)
    flusher.start()
    try:
        # In one batch with good rows (before and after it), then alone.
        append_all(spool, [record(site, 3)[0], refused_row(site, "a"), record(site, 4)[0]])
        wait_for(lambda: count(store, site) == 7)
        append_all(spool, [refused_row(site, "b")])
        append_all(spool, [record(site, 2)[0]])
        wait_for(lambda: count(store, site) == 9 and flusher.caught_up)
    finally:
        flusher.stop()
        spool.close()
    assert metrics.rows_unstorable.values[()] == 2
    assert store.rows("SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} "
                      "AND event = 'purchase'", {"s": site})[0]["n"] == 0


class FailsOnce:
    """The real store, but its first insert into ``tagwerk.events`` fails as a view's error
    or a memory limit would: after the rows were parsed."""

    def __init__(self, store) -> None:
        self.store, self.failed = store, False

    def insert(self, table: str, *args, **kwargs) -> None:
        if table.startswith("tagwerk.events ") and not self.failed:
            self.failed = True
            raise StorageError("Code: 241. DB::Exception: Memory limit exceeded")
        self.store.insert(table, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def test_a_failure_that_is_no_rows_is_retried_whole(store, tmp_path):
    site = "retried-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    metrics = Metrics()
    wrapped = FailsOnce(store)
    flusher = Flusher(spool, wrapped, metrics, interval=0.05)
    flusher.start()
    try:
        append_all(spool, [record(site, 5)[0]])
        wait_for(lambda: count(store, site) == 5 and flusher.caught_up)
    finally:
        flusher.stop()
        spool.close()
    assert wrapped.failed and metrics.rows_unstorable.values.get((), 0) == 0
    assert metrics.flush_failures.values[()] == 1


def test_an_insert_the_engine_refuses_after_parsing_is_an_error(backend, store):
    """chDB's streaming insert reported success for an insert its table or a view refused
    once the rows were parsed (too many partitions, a view's error): the flusher released
    the spool, and the hits were gone (re-probe 51). Every backend raises for an insert with
    a deduplication token (a flush's), the embedded one for any insert."""
    store.execute("CREATE DATABASE IF NOT EXISTS scratch")
    store.execute("CREATE TABLE IF NOT EXISTS scratch.refusing (x UInt8) ENGINE = MergeTree "
                  "ORDER BY x")
    store.execute("CREATE TABLE IF NOT EXISTS scratch.refused (x UInt8) ENGINE = MergeTree "
                  "ORDER BY x")
    store.execute("CREATE MATERIALIZED VIEW IF NOT EXISTS scratch.refusing_mv "
                  "TO scratch.refused AS SELECT throwIf(x = 7, 'the view refuses') AS x "
                  "FROM scratch.refusing")
    backend.insert("scratch.refusing (x)", b"[1]\n", "JSONCompactEachRow")
    tokens = [{"insert_deduplication_token": uuid.uuid4().hex}]  # a flush's
    if backend is store:
        tokens.append({})
    for token in tokens:
        with pytest.raises(StorageError, match="the view refuses"):
            backend.insert("scratch.refusing (x)", b"[7]\n", "JSONCompactEachRow", token)
    months = b"".join(b'["%d-%02d-15 00:00:00"]\n' % (2001 + i // 12, i % 12 + 1)
                      for i in range(101))
    store.execute("CREATE TABLE IF NOT EXISTS scratch.monthly (ts DateTime) "
                  "ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY ts")
    for token in tokens:
        with pytest.raises(StorageError, match="partitions"):
            backend.insert("scratch.monthly (ts)", months, "JSONCompactEachRow", token)


def test_a_batch_over_more_than_100_months_is_stored(tmp_path):
    """A backfill through the batch API may span years; the events table is partitioned by
    month, and ClickHouse refuses more than 100 partitions in one insert by default. (In a
    collector of its own: 130 months of parts in the session's store made every later
    mutation of events, erasures and retention, several times slower.)"""
    data = tmp_path / "var"
    made = subprocess.run([sys.executable, "-m", "collector", "site", "create", "months",
                           "--data-dir", str(data)], capture_output=True, text=True, check=True)
    write = re.search(r"^write key:\s+(\S+)$", made.stdout, re.M).group(1)
    events = [{"event": "old", "ts": f"{2001 + i // 12}-{i % 12 + 1:02d}-15T12:00:00Z"}
              for i in range(130)]
    server = Server(data, "--no-demo").start()
    try:
        r = httpx.post(f"{server.url}/api/v1/batch", json={"events": events},
                       headers={"Authorization": f"Bearer {write}"}, timeout=30)
        assert r.status_code == 202, r.text
        wait_for(lambda: server.sql("SELECT count() FROM tagwerk.events "
                                    "WHERE site_id = 'months'").strip() == "130", timeout=30)
    finally:
        server.stop()


class SlowInserts:
    """The real store, each insert into ``tagwerk.events`` ``delay`` seconds long (as under
    load), its start times recorded: a batch's cut, to within the batch's reading."""

    def __init__(self, store, delay: float) -> None:
        self.store, self.delay, self.started = store, delay, []

    def insert(self, table: str, *args, **kwargs) -> None:
        if table.startswith("tagwerk.events "):
            self.started.append(time.monotonic())
            time.sleep(self.delay)
        self.store.insert(table, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def cut_gaps(store, tmp_path, interval: float, delay: float, stretch: bool) -> list[float]:
    """The seconds between batches' inserts while hits come every 10 ms for 2.5 s."""
    site = "stretch-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    slow = SlowInserts(store, delay)
    flusher = Flusher(spool, slow, Metrics(), interval=interval, stretch=stretch)
    flusher.start()
    sent = 0
    try:
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            append_all(spool, [record(site, 1)[0]])
            sent += 1
            time.sleep(0.01)
        wait_for(lambda: count(store, site) == sent and flusher.caught_up)
    finally:
        flusher.stop()
        spool.close()
    return [b - a for a, b in itertools.pairwise(slow.started)]


def test_under_slow_inserts_batches_gather_as_long_as_an_insert_takes(store, tmp_path):
    """Inserts of 0.2 s, four times the interval: the flusher gathers hits for the
    smoothed insert time after an insert (from the fourth batch on, 0.2 x (1 - 0.75^4) =
    0.137 s at least), not for the interval."""
    gaps = cut_gaps(store, tmp_path, interval=0.05, delay=0.2, stretch=True)
    assert len(gaps) >= 5 and min(gaps[3:]) >= 0.31, gaps
    # Without the stretch: the interval after each insert (and the insert's own work,
    # in both cases alike).
    unstretched = cut_gaps(store, tmp_path / "off", interval=0.05, delay=0.2, stretch=False)
    assert min(unstretched) >= 0.24, unstretched
    assert statistics.median(gaps[3:]) >= statistics.median(unstretched) + 0.08, (
        gaps, unstretched)



def test_the_stretch_is_the_insert_time_past_the_interval_and_is_bounded(tmp_path):
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    try:
        flusher = Flusher(spool, None, Metrics(), interval=0.25)
        assert flusher.wait() == 0.25  # idle: no insert yet
        flusher.insert_seconds = 0.2
        assert flusher.wait() == 0.25  # inserts quicker than the interval: the interval
        flusher.insert_seconds = 0.6
        assert flusher.wait() == pytest.approx(0.6)  # inserting half of the time
        flusher.insert_seconds = 5.0
        assert flusher.wait() == STRETCH_LIMIT == 1.0  # gathering at most 1 s
        longer = Flusher(spool, None, Metrics(), interval=2.0)
        longer.insert_seconds = 5.0
        assert longer.wait() == 2.0  # an interval set longer still applies
        off = Flusher(spool, None, Metrics(), interval=0.25, stretch=False)
        off.insert_seconds = 5.0
        assert off.wait() == 0.25
    finally:
        spool.close()
