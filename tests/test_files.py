"""State files are replaced whole and readable by their owner only."""

from __future__ import annotations

import stat
import threading

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


def test_write_atomic_from_threads_at_once(tmp_path):
    """Writers of one file at the same time (the sites' periodic reload and an admin's
    create both write the snapshot): each replaces it whole, none fails for want of a
    temporary file another one moved, and none is left behind."""
    path = tmp_path / "state.json"
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(50):
                write_atomic(path, f"{n}:{i}".encode() * 100)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    text = path.read_text()
    one = text[: len(text) // 100]
    assert text == one * 100  # one writer's whole content
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
