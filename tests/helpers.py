"""Test helpers: an in-process collector on the shared store, and waiting for rows."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from collector.app import create_app, protocol_for
from collector.config import Settings
from collector.ingest.adapters import BATCH_MAX_EVENTS
from collector.service import Collector
from collector.spool.disk import Spool
from collector.spool.flusher import Flusher
from collector.storage import Store

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1")


@contextlib.contextmanager
def serve(app: ASGIApp, **options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in a thread; yield its base URL.
    ``options`` go to ``uvicorn.Config`` (e.g. ``http=`` for the collector's protocol)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# Every collector of a test session writes to the session's store, so they share the
# privacy key (collector/privacy/key.py), as collectors sharing a ClickHouse must;
# tests/conftest.py gives it to the `tagwerk serve` subprocesses too.
TEST_PRIVACY_KEY = "tagwerk-tests-privacy-key-0123456789abcdef"


def collector_settings(data_dir: Path, **settings: Any) -> Settings:
    """Settings of an in-process collector of the tests: fast flushes, the shared key; the
    co-purchase pairs refreshed only when a test asks (test_copurchase_refresh.py turns the
    refresh on purchases on: a refresh of the session's store, with every module's rows,
    takes a core for seconds)."""
    return Settings(**{"data_dir": data_dir, "flush_interval_ms": 20, "flush_stretch": False,
                       "demo_shoppers": False,
                       "privacy_key": TEST_PRIVACY_KEY, "copurchase_refresh_seconds": 0,
                       **settings})


@contextlib.contextmanager
def served(
    store: Store, data_dir: Path, **settings: Any
) -> Iterator[tuple[httpx.Client, Collector]]:
    """A collector on the session's store behind real uvicorn, with the protocol ``tagwerk
    serve`` uses (its pixel fast path included); an httpx client on it."""
    with served_app(store, data_dir, **settings) as (_, client, collector):
        yield client, collector


@contextlib.contextmanager
def served_app(
    store: Store, data_dir: Path, **settings: Any
) -> Iterator[tuple[Any, httpx.Client, Collector]]:
    """As ``served``, with the app first (its state: the slots and streams it holds)."""
    collector = Collector(collector_settings(data_dir, **settings), store=store)
    app = create_app(collector)
    with serve(app, http=protocol_for(collector)) as base, \
            httpx.Client(base_url=base, headers={"User-Agent": CHROME}) as client:
        yield app, client, collector


@contextlib.contextmanager
def on_path(
    path: str, store: Store, data_dir: Path, **settings: Any
) -> Iterator[tuple[Any, Collector]]:
    """A started collector and a client: ``"asgi"``, Starlette's test client on the ASGI app;
    ``"fast"``, httpx on real uvicorn, where the hot paths skip the ASGI layer
    (``collector/ingest/fasthttp.py``). Tests of those paths run on both."""
    if path == "fast":
        with served(store, data_dir, **settings) as pair:
            yield pair
        return
    client, collector = make_client(store, data_dir, **settings)
    with client:
        yield client, collector


def make_client(store: Store, data_dir: Path, **settings: Any) -> tuple[TestClient, Collector]:
    """A collector on the session's store, with its own spool; use as a context manager."""
    collector = Collector(collector_settings(data_dir, **settings), store=store)
    client = TestClient(create_app(collector), headers={"User-Agent": CHROME})
    return client, collector


def client_with_site(store: Store, data_dir: Path, site_id: str
                     ) -> Iterator[tuple[TestClient, Collector, dict[str, str]]]:
    """A collector without the demo site, running, with one site made: (client, collector,
    the site's keys). For a module-scoped fixture: ``yield from client_with_site(...)``."""
    client, collector = make_client(store, data_dir, demo_site=False)
    with client:
        _, keys = collector.sites.create(site_id)
        yield client, collector, keys


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


def loaded(collector: Collector) -> int:
    """The identity links' copy in memory (link_index.py) loaded and usable, the feed
    watching, and the hits' copy brought up to date: its token. Asked for first, as a
    resolution asks (a copy nobody asked for is one the loading thread drops); loaded again
    when an earlier test's erasure finishes its mutation meanwhile, which the feed reports
    as everything changed, rightly making the new copy stale at once."""
    collector.person_answers.begin()
    index = collector.link_index
    index.begin()
    deadline = time.monotonic() + 60
    while True:
        index.reload_now()
        index.refresh_hits()  # the hits' copy, where it is kept
        token = index.begin()
        if token is not None:
            return token
        assert time.monotonic() < deadline, "no usable copy within 60 s"


def drained(collector: Collector) -> bool:
    """Everything the collector acknowledged is in ClickHouse."""
    return collector.flusher.caught_up


def rows(store: Store, site: str, where: str = "1", **params: Any) -> list[dict[str, Any]]:
    return store.rows(
        f"SELECT * FROM tagwerk.events WHERE site_id = {{site:String}} AND ({where}) "
        "ORDER BY ts, event_id",
        {"site": site, **params},
    )


def send_batch(client: Any, collector: Collector, write_key: str, events: list[dict]) -> int:
    """Events through the batch API with the site's write key (as many requests as its
    limit per request needs), stored; how many it took."""
    accepted = 0
    for first in range(0, max(len(events), 1), BATCH_MAX_EVENTS):
        response = client.post(
            "/api/v1/batch",
            content=orjson.dumps({"events": events[first:first + BATCH_MAX_EVENTS]}),
            headers={"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"})
        assert response.status_code == 202, response.text
        accepted += response.json()["accepted"]
    # A flush waits behind the engine's refreshes and merges on a busy 2-core machine: a
    # module's first batch took over 10 s once, beside another suite.
    wait_for(lambda: drained(collector), timeout=30)
    return accepted


def flush_all(flusher: Flusher, spool: Spool) -> None:
    """Run the flusher until what the spool holds is in ClickHouse, then stop both."""
    flusher.start()
    try:
        wait_for(lambda: flusher.caught_up)
    finally:
        flusher.stop()
        spool.close()


def found_anywhere(store: Store, values: list[str]) -> dict[str, int]:
    """Per tagwerk table (the hits' copy too) and dictionary, the rows that hold one of
    ``values`` in any column (MATERIALIZED ones too, which ``*`` leaves out): what an
    erasure must leave at zero. A
    refreshable view's scratch table (``.tmp.inner...``, gone when the refresh ends) is not
    a place of its own: its rows become the view's target, which is searched. (Reading a
    dictionary that is not in memory loads it: what it would hold.)"""
    columns = store.rows("SELECT table, name FROM system.columns WHERE database = 'tagwerk' "
                         "AND table IN (SELECT name FROM system.tables WHERE database = "
                         "'tagwerk' AND (engine LIKE '%MergeTree' OR engine IN ('Dictionary', "
                         "'EmbeddedRocksDB')) "
                         "AND NOT startsWith(name, '.')) ORDER BY table, position")
    by_table: dict[str, list[str]] = {}
    for column in columns:
        by_table.setdefault(column["table"], []).append(f"`{column['name']}`")
    found = {}
    for table, names in by_table.items():
        [row] = store.rows(f"SELECT count() AS n FROM tagwerk.`{table}` WHERE "
                           f"multiSearchAny(formatRow('TSV', {', '.join(names)}), "
                           "{v:Array(String)})", {"v": values})
        if int(row["n"]):
            found[table] = int(row["n"])
    return found
