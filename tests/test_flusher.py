"""The flusher: batches into ClickHouse, replay after a crash, repeated event ids."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import orjson
import pytest

from collector.ingest.events import COLUMNS, Context, normalize
from collector.ingest.useragent import parse_agent
from collector.metrics import Metrics
from collector.spool.disk import Checkpoint, Pos, Spool
from collector.spool.flusher import FRESH_BUDGET, Flusher, next_wait
from collector.spool.record import encode_record
from tests.helpers import wait_for
from tests.test_spool import append_all


def record(site: str, n: int, given: bool = False) -> tuple[bytes, list[str]]:
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"))
    lines, ids, chosen = [], [], []
    for _ in range(n):
        raw = {"event": "e"}
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


def test_replay_of_a_batch_already_inserted_adds_nothing(backend, store, tmp_path):
    """The crash window: ClickHouse has the batch, the checkpoint does not say so yet."""
    site = "replay-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [record(site, 10)[0]])
    end = spool.durable
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))
    first = Flusher(spool, backend, Metrics())
    first._flush(Pos(1, 0), end)  # inserted and released...
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))  # ...but as if we crashed before
    spool.close()

    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    flusher = Flusher(reopened, backend, Metrics(), interval=0.02)
    flusher.start()
    wait_for(lambda: flusher.caught_up)
    flusher.stop()
    reopened.close()
    assert count(store, site) == 10


def test_sender_ids_already_stored_are_dropped(backend, store, tmp_path):
    site = "dedup-" + uuid.uuid4().hex[:8]
    payload, ids = record(site, 4, given=True)
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    metrics = Metrics()
    flusher = Flusher(spool, backend, metrics, interval=0.02)
    flusher.start()
    append_all(spool, [payload])
    wait_for(lambda: count(store, site) == 4)
    append_all(spool, [payload, payload])  # a retry, twice in one batch
    wait_for(lambda: flusher.caught_up)
    flusher.stop()
    spool.close()
    assert count(store, site) == 4
    assert metrics.duplicates_dropped.values[()] == 8


def test_row_keys_are_the_insert_columns():
    ctx = Context("s", dt.datetime.now(dt.UTC), "web", parse_agent("x"))
    row, _ = normalize({"event": "e"}, ctx)
    assert tuple(row) == COLUMNS


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



def test_the_wait_grows_with_the_last_flush_within_the_freshness_budget():
    assert next_wait(0.25, 0.01) == 0.25
    assert next_wait(0.25, 0.2) == pytest.approx(0.4)
    assert next_wait(0.25, 0.3) == pytest.approx(FRESH_BUDGET - 0.3)  # wait + insert
    assert next_wait(0.25, 5.0) == 0.25  # inserts too slow to wait longer: the interval
    assert next_wait(2.0, 5.0) == 2.0  # a configured interval above the budget stands


class SlowStore:
    """A store whose inserts take at least ``delay`` (a loaded engine)."""

    def __init__(self, store, delay: float) -> None:
        self.store, self.delay = store, delay

    def insert(self, *args, **kwargs) -> None:
        time.sleep(self.delay)
        self.store.insert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_slow_flushes_make_bigger_batches(backend, store, tmp_path):
    """An insert's cost is mostly fixed: when flushes are slow (load), batches grow instead
    of the flusher spending the core on inserts, within the freshness budget."""
    site = "slow-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    flusher = Flusher(spool, SlowStore(backend, 0.2), Metrics(), interval=0.05)
    assert flusher.wait == 0.05
    append_all(spool, [record(site, 3)[0]])
    flusher._flush(spool.checkpoint.flushed, spool.durable)
    assert count(store, site) == 3
    assert 0.1 < flusher.wait <= FRESH_BUDGET  # grew from 0.05 (2x the ~0.2 s insert)
    spool.close()
