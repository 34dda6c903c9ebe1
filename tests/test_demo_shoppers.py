"""The demo site's sample shoppers (``collector/tag/demo_shoppers.py``): a new demo site
shows its recommendation blocks to a newcomer browsing alone."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx

from collector.cli import _settings, build_parser
from collector.tag.demo_shoppers import CATALOGUE, SHOPPERS, history
from tests.servers import Server

APP_JS = Path(__file__).resolve().parent.parent / "collector" / "demo_site" / "app.js"
# A product of app.js's catalogue: its id, category and price in cents.
PRODUCT = re.compile(r'\{ id: "([^"]+)",.*?category: "([^"]+)",.*?cents: (\d+),', re.S)


def test_catalogue_is_the_shops():
    shop = {pid: (category, int(cents)) for pid, category, cents in PRODUCT.findall(
        APP_JS.read_text())}
    assert len(shop) == 8
    assert {pid: (category, round(price * 100)) for pid, (category, price)
            in CATALOGUE.items()} == shop


def test_history_is_recent_consented_and_pairs_every_product():
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    events = history(now)
    assert {e["device_id"] for e in events} == {f"sample-{n}" for n in range(1, SHOPPERS + 1)}
    for e in events:
        ts = dt.datetime.fromisoformat(e["ts"])
        assert now - dt.timedelta(days=2) < ts < now
        assert e["consent"] == ["analytics", "personalization"]
    sessions: dict[str, set[str]] = {}
    for e in events:
        if e["event"] == "view_item":
            sessions.setdefault(e["session_id"], set()).add(e["items"][0]["product_id"])
    for product in CATALOGUE:  # two sessions behind a pair: the public lists' minimum
        partners = [other for other in CATALOGUE if other != product and sum(
            {product, other} <= viewed for viewed in sessions.values()) >= 2]
        assert len(partners) >= 4, product
    assert history(now) == events  # the same shoppers whenever a demo site is made


def test_flag_and_environment_leave_them_out(monkeypatch):
    assert _settings(build_parser().parse_args(["serve"])).demo_shoppers is True
    args = build_parser().parse_args(["serve", "--no-demo-shoppers"])
    assert _settings(args).demo_shoppers is False
    monkeypatch.setenv("TAGWERK_DEMO_SHOPPERS", "0")
    assert _settings(build_parser().parse_args(["serve"])).demo_shoppers is False


def test_new_demo_site_shows_its_lists_to_a_newcomer_once(tmp_path):
    server = Server(tmp_path / "var", demo_shoppers=True).start()
    stored = ("SELECT count() FROM tagwerk.events "
              "WHERE site_id = 'demo' AND props['sample'] = 'true'")
    try:
        count = len(history(dt.datetime.now(dt.UTC)))
        # Ready means stored: the lifespan waits for the flush (and the co-view refresh).
        assert int(server.sql(stored)) == count
        top = httpx.get(f"{server.url}/t/demo/recommend/top?metric=views&window=7d&limit=12")
        assert top.status_code == 200 and len(top.json()["items"]) == len(CATALOGUE)
        for product in CATALOGUE:
            related = httpx.get(f"{server.url}/t/demo/recommend/related/{product}"
                                "?kind=co_view&limit=12").json()["items"]
            shown = [item["product_id"] for item in related]
            assert len(shown) >= 4 and product not in shown, (product, shown)
    finally:
        server.stop()
    again = Server(tmp_path / "var", demo_shoppers=True).start()  # the site exists: no more
    try:
        assert int(again.sql(stored)) == count
    finally:
        again.stop()
