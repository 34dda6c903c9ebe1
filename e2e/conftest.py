"""Browser tests of the demo shop (``/demo/``): one ``tagwerk serve`` subprocess and one
headless Chromium per session, a new browser context (a new device: its own cookies and
storage) per test.

Assertions are on rows in ClickHouse, read through the server's HTTP SQL port, as
``tests/test_durability.py`` does. Tests share the ``demo`` site, and run one after another:
each reads only the events its own pages made, by their browser-side time (``ts`` is set
when the tag creates an event, so late deliveries of an earlier test's events never fall
into a later test's window), and by device id where one test drives two devices.

Chromium is Debian's (``apt-get install -y chromium``), started by Playwright through
``executable_path``; ``TAGWERK_CHROMIUM`` names another binary. Without it the tests fail:
they are part of the suite, not optional.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from e2e.shop import DESKTOP, PHONE, Shop
from tests.servers import Server

CHROMIUM = os.environ.get("TAGWERK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-gpu", "--disable-quic"]


def launch(playwright) -> Browser:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing ({CHROMIUM}): the browser tests need it. Install it "
                    "with `apt-get install -y chromium` (or set TAGWERK_CHROMIUM to a "
                    "Chromium binary).", pytrace=False)
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    # Hits become queryable sooner than with the default 250 ms and its stretch under load;
    # nothing else changes.
    mp = pytest.MonkeyPatch()
    mp.setenv("TAGWERK_FLUSH_INTERVAL_MS", "50")
    mp.setenv("TAGWERK_FLUSH_STRETCH", "0")
    try:
        server = Server(tmp_path_factory.mktemp("e2e") / "var").start()
    finally:
        mp.undo()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    # Per module, not per session: Playwright's sync API runs an event loop on the main
    # thread until it stops, and every later test's asyncio.run() failed under it (the
    # suite with its modules in reverse order: 20 failures).
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def since() -> int:
    """Epoch milliseconds at the start of the test: its events have ``ts`` after this."""
    return int(time.time() * 1000) - 5


@pytest.fixture
def devices(browser, server, since):
    """Opens shops: ``devices("desktop")``, ``devices("phone", gpc=True)``... each a new
    browser context. At the end: no page errors and no CSP violations on any of them."""
    opened: list[Shop] = []

    def open_device(kind: str = "desktop", **options) -> Shop:
        profile = {"desktop": DESKTOP, "phone": PHONE}[kind]
        shop = Shop.open_context(browser, server, since, profile, **options)
        opened.append(shop)
        return shop

    yield open_device
    try:
        for shop in opened:
            shop.assert_clean()
    finally:
        for shop in opened:
            shop.close()


@pytest.fixture
def shop(devices) -> Shop:
    """A desktop browser on a first visit (no cookies, no storage)."""
    return devices("desktop")
