"""The element_visible trigger on a single-page shop: elements that an SPA route or a late
script adds after the engine loaded fire too, when they come into view, once each.

The container with those triggers is the demo site's draft, shown to this test's browser
only through a preview link (DESIGN.md section 1): the live container, which the other
tests see, does not change. The draft is put back at the end.
"""

from __future__ import annotations

import copy
import json

import httpx
from playwright.sync_api import expect

PIXEL = "/demo/static/partner.gif?seen="
# A promotion a script adds 0.3 s later, below the fold: a section with a tall spacer and
# the promotion (a matching descendant of the added subtree).
LATE_PROMO = """() => setTimeout(() => {
  const s = document.createElement('section'), gap = document.createElement('div'),
    promo = document.createElement('div');
  gap.style.height = '2400px';
  promo.className = 'e2e-promo';
  promo.style.height = '200px';
  promo.textContent = 'Late promotion';
  s.append(gap, promo);
  document.getElementById('main').append(s);
}, 300)"""


def draft_with_visibility_triggers(draft: dict) -> dict:
    doc = copy.deepcopy(draft)
    doc["variables"].append({"id": "sku", "type": "element_attribute",
                             "selector": "[data-sku]", "attribute": "data-sku"})
    doc["triggers"] += [
        {"id": "product_seen", "type": "element_visible", "selector": "article.product",
         "ratio": 0.5},
        {"id": "promo_seen", "type": "element_visible", "selector": ".e2e-promo", "ratio": 0.5},
    ]
    doc["tags"] += [
        {"id": "product_px", "name": "Product seen", "type": "pixel", "purpose": "marketing",
         "url": PIXEL + "product&sku={{sku}}", "triggers": ["product_seen"]},
        {"id": "promo_px", "name": "Promotion seen", "type": "pixel", "purpose": "marketing",
         "url": PIXEL + "promo", "triggers": ["promo_seen"]},
    ]
    return doc


def test_element_visible_fires_for_elements_added_later(shop, server):
    admin = json.loads((server.data_dir / "demo-keys.json").read_text())["admin"]
    api = f"{server.url}/api/v1/sites/demo/container"
    auth = {"Authorization": f"Bearer {admin}"}
    draft = httpx.get(api, headers=auth).raise_for_status().json()
    httpx.put(api, headers=auth,
              json=draft_with_visibility_triggers(draft)).raise_for_status()
    try:
        link = httpx.post(api + "/preview", headers=auth,
                          json={"url": f"{server.url}/demo/"}).raise_for_status().json()["link"]
        shop.goto(link)  # sets the preview cookie, then /demo/?tagwerk_debug=1
        shop.accept_all()
        shop.minimise_debug()

        def seen(what: str) -> list[str]:
            return [u for u in shop.requests if PIXEL + what in u]

        def fired(tag: str) -> int:
            return shop.page.evaluate("""(tag) => window.__tagwerk_debug.filter((r) =>
                r.kind == 'tag' && r.tag == tag && r.fired).length""", tag)

        # SPA routes: each product page renders a new article.product after the engine loaded.
        shop.click_link("/demo/category/coffee")
        assert seen("product") == []
        shop.click_link("/demo/product/yirgacheffe")
        shop.wait(lambda: seen("product"))
        assert seen("product")[0].endswith("product&sku=RW-101")
        shop.click_link("/demo/category/brewing")
        shop.click_link("/demo/product/hand-grinder")
        shop.wait(lambda: len(seen("product")) == 2)
        assert seen("product")[1].endswith("product&sku=RW-203")

        # Added late, below the fold: nothing until it is scrolled into view, then once.
        shop.page.evaluate(LATE_PROMO)
        promo = shop.page.locator(".e2e-promo")
        expect(promo).to_have_count(1)
        shop.page.wait_for_timeout(300)
        assert seen("promo") == [] and fired("promo_px") == 0
        promo.scroll_into_view_if_needed()
        shop.wait(lambda: seen("promo"))
        shop.page.evaluate("() => scrollTo(0, 0)")
        shop.page.wait_for_timeout(200)
        promo.scroll_into_view_if_needed()
        shop.page.wait_for_timeout(300)
        assert len(seen("promo")) == 1 and fired("promo_px") == 1
        assert fired("product_px") == 2
    finally:
        httpx.put(api, headers=auth, json=draft).raise_for_status()
