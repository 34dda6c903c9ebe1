"""State files are replaced whole and readable by their owner only."""

from __future__ import annotations

import stat

from collector.files import write_atomic
from collector.sites import Sites


def test_write_atomic_replaces_whole_and_private(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    path.chmod(0o644)
    for durable in (False, True):
        write_atomic(path, b"new", durable=durable)
        assert path.read_bytes() == b"new"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_sites_snapshot_is_private(store, tmp_path):
    snapshot = tmp_path / "sites.json"
    Sites(store, snapshot).load()
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
