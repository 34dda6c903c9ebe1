"""Shared fixtures.

chDB hosts one engine per process, bound to one path: every in-process test shares the
session's ``store`` (and isolates itself by site id or database name). Tests that need a
store of their own run ``tagwerk serve`` as a subprocess (see ``tests/servers.py``).
"""

from __future__ import annotations

import os

import pytest

from collector.migrations import migrate
from collector.sqlhttp import SqlUser, build_sql_app
from collector.storage.embedded import EmbeddedStore
from collector.storage.server import ServerStore
from tests import background
from tests.helpers import TEST_PRIVACY_KEY, serve

# The `tagwerk serve` subprocesses of the tests share the session's key (tests/helpers.py).
os.environ["TAGWERK_PRIVACY_KEY"] = TEST_PRIVACY_KEY


def pytest_collection_finish(session: pytest.Session) -> None:
    # (on idle time while the tests run: tests/background.py)
    collected: dict[str, list[str]] = {}
    for item in session.items:
        if isinstance(item, pytest.Function):
            collected.setdefault(item.module.__name__, []).append(item.name)
    background.start_for(collected)


def pytest_sessionfinish(session: pytest.Session) -> None:
    background.stop()


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("chdb"))
    migrate(store)
    yield store
    store.close()


@pytest.fixture(scope="module")
def sites_dropped_after(store):
    """The sites a module makes leave the session's store with it: their rows go from every
    tagwerk table but ``sites``, the parts rewritten (a mutation, not a lightweight delete's
    mask). For modules whose tens of thousands of rows would make every later module's
    scans, mutations and dictionary loads slower (test_copurchase and
    test_security_data_out cost test_privacy a third more)."""
    def sites() -> set[str]:
        return {row["site_id"] for row in store.rows("SELECT site_id FROM tagwerk.sites")}

    before = sites()
    yield
    made = sorted(sites() - before)
    tables = store.rows(
        "SELECT DISTINCT table FROM system.columns WHERE database = 'tagwerk' AND name = "
        "'site_id' AND table IN (SELECT name FROM system.tables WHERE database = 'tagwerk' "
        "AND engine LIKE '%MergeTree' AND NOT startsWith(name, '.')) AND table != 'sites'")
    for row in tables:
        store.execute(f"ALTER TABLE tagwerk.`{row['table']}` DELETE WHERE site_id IN "
                      "{sites:Array(String)} SETTINGS mutations_sync = 2", {"sites": made})


@pytest.fixture(scope="session")
def server_store(store):
    """The server backend (clickhouse-connect over HTTP) on the same engine, through the
    embedded store's ClickHouse HTTP interface."""
    users = {"writer": SqlUser("writer", "pw", readonly=False)}
    with serve(build_sql_app(store, users, loopback_only=True)) as url:
        server = ServerStore(url.replace("http://", "http://writer:pw@") + "/tagwerk")
        yield server
        server.close()


@pytest.fixture(params=["embedded", "server"])
def backend(request, store, server_store):
    """Each storage backend in turn: tests using it run on both."""
    return store if request.param == "embedded" else server_store
