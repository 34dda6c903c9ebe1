"""collector.sites.Sites: finding a site, and reloading for one not known yet."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from collector.sites import Sites


def test_a_flood_of_unknown_site_ids_shares_reloads_instead_of_a_thread_each(store, tmp_path):
    """Site ids are public, and an unknown one makes the registry reload (it may have been
    created a moment ago by another process). A flood of made-up ids from anyone must not
    hold a worker thread per request (the pool the keyed API's reads need too): the
    requests meanwhile wait for one shared reload."""
    sites = Sites(store, tmp_path / "sites.json")
    sites.load()
    refreshes = []
    refresh = sites.refresh

    def counted() -> None:
        refreshes.append(1)
        time.sleep(0.05)  # a reload takes a while: the other asks arrive meanwhile
        refresh()

    sites.refresh = counted  # type: ignore[method-assign]

    async def main() -> list:
        return await asyncio.gather(*(sites.find(f"nosuch{i}") for i in range(100)))

    assert asyncio.run(main()) == [None] * 100
    assert len(refreshes) <= 2, len(refreshes)


def test_a_site_created_by_another_process_is_found_at_its_first_request(store, tmp_path):
    sites = Sites(store, tmp_path / "sites.json")
    sites.load()
    Sites(store).create("made-elsewhere")

    async def main():
        return await asyncio.gather(sites.find("made-elsewhere"), sites.find("made-elsewhere"))

    assert [s.site_id for s in asyncio.run(main())] == ["made-elsewhere"] * 2


def test_sites_created_while_the_registry_reloads_are_all_known(store, tmp_path):
    """An admin's create loads the sites and writes the snapshot as the periodic reload
    does: at the same time, neither fails (one temporary snapshot file each), and the
    newest read is the one kept (one load at a time), in memory and in the snapshot."""
    sites = Sites(store, tmp_path / "sites.json")
    sites.load()
    stop = threading.Event()
    errors: list[BaseException] = []

    def reload_often() -> None:
        while not stop.is_set():
            try:
                sites.reload()
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

    reloaders = [threading.Thread(target=reload_often) for _ in range(2)]
    for thread in reloaders:
        thread.start()
    try:
        created = [sites.create(f"while-reloading-{n}")[0].site_id for n in range(8)]
    finally:
        stop.set()
        for thread in reloaders:
            thread.join()
    assert errors == []
    assert all(sites.get(site_id) is not None for site_id in created)
    fresh = Sites(store, tmp_path / "sites.json")
    assert fresh.load_snapshot()
    assert all(fresh.get(site_id) is not None for site_id in created)
    assert [p.name for p in tmp_path.iterdir()] == ["sites.json"]


def test_a_site_id_with_a_final_newline_is_refused_and_never_found(store):
    """"^...$" with match lets a final newline through: a site "shop\\n" could be created
    (a name no URL can carry), and "demo\\n" was looked up as an id."""
    sites = Sites(store)
    with pytest.raises(ValueError, match="site id"):
        sites.create("nl-shop\n")
    sites.create("nl-shop")
    assert asyncio.run(sites.find("nl-shop\n")) is None
    assert asyncio.run(sites.find("nl-shop")) is not None


def test_the_refreshing_thread_outlives_an_unexpected_error(store, tmp_path, monkeypatch):
    """The thread that picks up other processes' sites, containers and erasures caught only
    storage errors: anything else (a KeyError in a tombstone row under memory pressure,
    probe 64) ended it for good, and erasures made through other collectors no longer
    dropped their persons' hits here."""
    from collector import service
    from tests.helpers import make_client, wait_for

    monkeypatch.setattr(service, "CONTAINER_REFRESH_SECONDS", 0.02)
    client, collector = make_client(store, tmp_path, demo_site=False)
    calls: list[int] = []

    def load() -> bool:
        calls.append(1)
        if len(calls) == 2:  # the first is the start's, the second the thread's
            raise KeyError("spans")
        return False

    monkeypatch.setattr(collector.tombstones, "load", load)
    with client:
        wait_for(lambda: len(calls) >= 4)
