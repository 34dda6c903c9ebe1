"""A newcomer's first look: ``tagwerk serve`` on a new data directory, one browser, and the
demo shop's "Recommended for you" and "Customers also viewed" blocks are filled (from the
demo site's sample shoppers: the public lists show nothing one person did alone)."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from e2e.shop import DESKTOP, Shop
from tests.servers import Server


@pytest.fixture(scope="module")
def first_start(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("newcomer") / "var", demo_shoppers=True).start()
    yield server
    server.stop()


def test_one_browser_sees_both_blocks(browser, first_start):
    shop = Shop.open_context(browser, first_start, int(time.time() * 1000), DESKTOP)
    try:
        shop.goto("/demo/")
        shop.accept_all()
        for_you = shop.page.locator("#for-you [data-select]")
        expect(for_you.first).to_be_visible()
        assert for_you.count() == 4
        shop.click_link("/demo/product/hand-grinder")
        also = shop.page.locator("#also-viewed [data-select]")
        expect(also.first).to_be_visible()
        shown = also.evaluate_all("els => els.map(e => e.dataset.select)")
        assert len(shown) == 4 and "RW-203" not in shown
        shop.assert_clean()
    finally:
        shop.close()
