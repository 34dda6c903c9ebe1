"""Shared fixtures.

chDB hosts one engine per process, bound to one path: every in-process test shares the
session's ``store`` (and isolates itself by site id or database name). Tests that need a
store of their own run ``tagwerk serve`` as a subprocess (see ``tests/servers.py``).
"""

from __future__ import annotations

import pytest

from collector.migrations import migrate
from collector.storage.embedded import EmbeddedStore


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    store = EmbeddedStore(tmp_path_factory.mktemp("chdb"))
    migrate(store)
    yield store
    store.close()
