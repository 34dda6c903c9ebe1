"""Every acknowledged hit reaches ClickHouse exactly once, across a kill -9."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid

import httpx
import pytest

from tests.helpers import CHROME, wait_for
from tests.servers import Server


def blast(url: str, acked: list[str], stop: threading.Event) -> None:
    """Send batches of 5 with our own event ids; remember those answered 202."""
    with httpx.Client(timeout=5, headers={"User-Agent": CHROME}) as client:
        while not stop.is_set():
            ids = [str(uuid.uuid4()) for _ in range(5)]
            body = {"site": "demo", "events": [{"event": "durable", "event_id": i} for i in ids]}
            try:
                response = client.post(f"{url}/collect", json=body)
            except httpx.HTTPError:
                return  # the collector is gone
            if response.status_code == 202:
                acked.extend(ids)


def blast_pixels(url: str, acked: list[str], stop: threading.Event) -> None:
    """Pixel hits (the fast path of fasthttp.py); remember those answered 200."""
    with httpx.Client(timeout=5, headers={"User-Agent": CHROME}) as client:
        while not stop.is_set():
            event_id = str(uuid.uuid4())
            try:
                response = client.get(f"{url}/p.gif?site=demo&event=durable&event_id={event_id}")
            except httpx.HTTPError:
                return
            if response.status_code == 200:
                acked.append(event_id)


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "var").start()
    yield server
    server.stop()


# Acknowledged hits per round before the kill: enough that flushes are under way and requests
# in flight, whatever the machine's speed (a fixed sleep gave a slow machine too few).
PER_ROUND = 300


def test_kill_9_under_load_loses_and_duplicates_nothing(server):
    acked: list[str] = []
    for _round in range(2):
        stop = threading.Event()
        threads = [threading.Thread(target=send, args=(server.url, acked, stop))
                   for send in (blast, blast, blast, blast_pixels, blast_pixels)]
        goal = len(acked) + PER_ROUND
        for t in threads:
            t.start()
        try:
            wait_for(lambda goal=goal: len(acked) >= goal, timeout=120, interval=0.01)
        finally:
            server.kill()  # mid-load: requests in flight, a flush probably under way
            stop.set()
            for t in threads:
                t.join()
        server.start()
    assert len(acked) >= 2 * PER_ROUND

    def stored() -> int:
        return int(server.sql("SELECT count() FROM tagwerk.events WHERE event = 'durable'"))

    wait_for(lambda: stored() >= len(acked), timeout=30)
    counts = server.sql(
        "SELECT toString(event_id), count() FROM tagwerk.events WHERE event = 'durable' "
        "GROUP BY event_id FORMAT TSV")
    seen = dict(line.split("\t") for line in counts.splitlines())
    assert set(acked) <= seen.keys()  # nothing acknowledged was lost
    assert {n for n in seen.values()} == {"1"}  # and nothing is there twice


def test_a_store_closed_while_a_query_runs_lets_the_process_exit(tmp_path) -> None:
    """The engine kills the process at exit (SIGSEGV) if a query still runs: a shutdown
    stops every query first (a query left running by a client with no time limit did)."""
    script = textwrap.dedent("""
        import sys, threading
        from collector.storage.embedded import EmbeddedStore
        store = EmbeddedStore(sys.argv[1])
        started = threading.Event()
        def run():
            conn = store.new_connection()
            started.set()
            try:
                conn.query("SELECT sum(cityHash64(number)) FROM numbers(1e12)")
            except Exception:
                pass
        threading.Thread(target=run, daemon=True).start()
        started.wait()
        while not store.rows("SELECT 1 FROM system.processes WHERE query LIKE '%1e12%' "
                             "AND query NOT LIKE '%system.processes%'"):
            pass
        store.close()
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_queries_started_while_the_store_closes_are_stopped_too(tmp_path) -> None:
    """Threads that start queries again and again, on their own connections, while the
    store closes: a query that starts after the first kill is stopped as well, and none
    starts once ``close`` began, so the process exits cleanly."""
    script = textwrap.dedent("""
        import sys, threading, time
        from collector.storage.base import StorageError
        from collector.storage.embedded import EmbeddedStore
        store = EmbeddedStore(sys.argv[1])
        LONG = "SELECT sum(cityHash64(number)) FROM numbers(1e12)"
        ran = []
        def again():
            store.query("SELECT 1")  # this thread's connection, before the close
            while True:
                ran.append(1)
                try:
                    store.query(LONG)
                except StorageError:
                    if store.closed:
                        return
        for _ in range(4):
            threading.Thread(target=again, daemon=True).start()
        while not store.rows("SELECT 1 FROM system.processes WHERE query LIKE '%1e12%' "
                             "AND query NOT LIKE '%system.processes%'"):
            pass
        store.close()
        try:
            store.query("SELECT 1")
        except StorageError as exc:
            assert "closed" in str(exc), exc
        else:
            raise AssertionError("a closed store answered")
        time.sleep(0.5)  # threads that were about to start one
    """)
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")],
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
