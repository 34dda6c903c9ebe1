"""collector.sites.Sites: finding a site, and reloading for one not known yet."""

from __future__ import annotations

import asyncio
import time

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
