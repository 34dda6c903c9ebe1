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
    background.start_for({item.module.__name__ for item in session.items
                          if isinstance(item, pytest.Function)})


def pytest_sessionfinish(session: pytest.Session) -> None:
    background.stop()


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("chdb"))
    migrate(store)
    yield store
    store.close()


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
