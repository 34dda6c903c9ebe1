"""The demo shop in a browser: SPA page views, GA4 e-commerce through the data layer, one
customer on two devices, offline and back, the strict CSP and the debug overlay."""

from __future__ import annotations

import re
import uuid

import httpx
from playwright.sync_api import expect

from tests.helpers import wait_for

ITEM_COFFEE = ("RW-101", "Yirgacheffe Kochere", "Coffee", "Röstwerk", "250 g, whole bean")
ITEM_GRINDER = ("RW-203", "Hand Burr Grinder", "Brewing", "Röstwerk", "Steel burrs")


def test_spa_navigation_makes_one_page_view_per_route(shop):
    shop.goto("/demo/")
    shop.accept_all()
    route = ["/demo/category/coffee", "/demo/product/casa-espresso", "/demo/cart",
             "/demo/login", "/demo/"]
    for href in route:
        shop.click_link(href)
    # replaceState with the same URL (routers do it to store state) is not a page view.
    shop.page.evaluate("() => history.replaceState({scroll: 1}, '', location.href)")
    shop.page.go_back()  # popstate: back on /demo/login
    expect(shop.page).to_have_url(shop.server.url + "/demo/login")
    shop.settle()

    views = shop.events("event = 'page_view'")
    assert [v["path"] for v in views] == ["/demo/", *route, "/demo/login"]
    titles = {v["path"]: v["title"] for v in views}
    assert titles["/demo/product/casa-espresso"] == "Casa Espresso Blend · Röstwerk"
    assert titles["/demo/category/coffee"] == "Coffee · Röstwerk"
    assert len({v["session_id"] for v in views[1:]}) == 1  # one session across the routes


def test_gtm_style_purchase_lands_with_its_items(shop):
    shop.goto("/demo/")
    shop.accept_all()
    shop.click_link("/demo/category/coffee")
    shop.click_link("/demo/product/yirgacheffe")
    shop.add_to_cart(2)
    shop.click_link("/demo/category/brewing")
    shop.click_link("/demo/product/hand-grinder")
    shop.add_to_cart(1)
    shop.click_link("/demo/cart")
    shop.page.get_by_role("button", name="One more Hand Burr Grinder").click()
    shop.page.get_by_role("button", name="One less Hand Burr Grinder").click()
    shop.click_link("/demo/checkout")
    shop.page.fill("#coupon", "welcome10")
    shop.page.click("#apply-coupon")
    expect(shop.page.locator("#coupon-note")).to_contain_text("10 % off")
    shop.page.click("#place-order")
    order_id = shop.page.text_content("#order-id")
    assert order_id and order_id.startswith("RW-")
    expect(shop.page).to_have_url(shop.server.url + f"/demo/order/{order_id}")
    shop.settle()

    rows = shop.events("event != 'page_view'")
    kinds = [r["event"] for r in rows]
    for kind in ("view_item_list", "select_item", "view_item", "add_to_cart",
                 "remove_from_cart", "begin_checkout", "purchase"):
        assert kind in kinds, kinds
    purchases = [r for r in rows if r["event"] == "purchase"]
    assert len(purchases) == 1
    p = purchases[0]
    # 2 x 12.90 + 89.00 = 114.80, less 10 % = 103.32 (shipping is not revenue)
    assert p["order_id"] == order_id and p["revenue"] == 103.32
    assert p["currency"] == "EUR" and p["coupon"] == "WELCOME10"
    assert p["items"] == [[*ITEM_COFFEE, 12.9, 2], [*ITEM_GRINDER, 89.0, 1]]
    assert p["path"] == f"/demo/order/{order_id}" and p["device_id"]
    adds = [r["items"] for r in rows if r["event"] == "add_to_cart"]
    assert adds == [[[*ITEM_COFFEE, 12.9, 2]], [[*ITEM_GRINDER, 89.0, 1]],
                    [[*ITEM_GRINDER, 89.0, 1]]]
    removed = [r for r in rows if r["event"] == "remove_from_cart"]
    assert [r["items"] for r in removed] == [[[*ITEM_GRINDER, 89.0, 1]]]
    checkout = next(r for r in rows if r["event"] == "begin_checkout")
    assert checkout["revenue"] == 114.8 and len(checkout["items"]) == 2
    # A reload of the confirmation page does not report the purchase again.
    shop.goto(f"/demo/order/{order_id}")
    shop.settle()
    assert len(shop.events("event = 'purchase'")) == 1


def test_one_customer_on_a_phone_and_a_desktop(devices):
    phone, desktop = devices("phone"), devices("desktop")
    customer_ids = []
    for shop in (phone, desktop):
        shop.goto("/demo/")
        shop.accept_all()
        shop.click_link("/demo/category/cups")
        customer_ids.append(shop.login("Ada.Lovelace@example.com"))
        shop.click_link("/demo/")  # a page view after signing in
        shop.settle()
    assert customer_ids[0] == customer_ids[1] and re.fullmatch(r"C-[0-9A-F]{12}", customer_ids[0])
    customer = customer_ids[0]
    devs = {"phone": phone.device_id(), "desktop": desktop.device_id()}
    assert devs["phone"] != devs["desktop"]

    rows = phone.events("device_id IN ({a:String}, {b:String})", a=devs["phone"],
                        b=devs["desktop"])
    users = {kind: {r["user_id"] for r in rows if r["device_id"] == dev and r["user_id"]}
             for kind, dev in devs.items()}
    assert users == {"phone": {customer}, "desktop": {customer}}
    for kind, dev in devs.items():
        mine = [r for r in rows if r["device_id"] == dev]
        identify = [r for r in mine if r["event"] == "identify"]
        assert len(identify) == 1 and identify[0]["type"] == "identify"
        # Later events carry the user id (the form's own submit event, made just before the
        # identify call in the same millisecond, does not).
        after = [r for r in mine if r["ms"] > identify[0]["ms"]]
        assert [r["path"] for r in after if r["event"] == "page_view"][-1] == "/demo/"
        assert all(r["user_id"] == customer for r in after), after
        assert {r["device_class"] for r in mine} == {"mobile" if kind == "phone" else "desktop"}


def test_offline_events_arrive_exactly_once(shop):
    shop.goto("/demo/?tagwerk_debug=1")  # the debug records list every event queued
    shop.accept_all()
    shop.minimise_debug()
    shop.settle()

    shop.context.set_offline(True)
    shop.click_link("/demo/category/brewing")
    shop.click_link("/demo/product/gooseneck-kettle")
    shop.add_to_cart(1)
    shop.click_link("/demo/cart")
    shop.wait(lambda: any("/collect" in u for u in shop.failed))  # a send failed...
    queued = shop.page.evaluate("() => JSON.parse(localStorage.tw_q || '[]').length")
    assert queued >= 5  # ...and the events wait in localStorage (analytics is granted)
    assert shop.cookies()["tw_q"]["value"] == "1"  # the flag that makes a page read it
    shop.click_link("/demo/")
    shop.context.set_offline(False)
    shop.settle()

    made = shop.page.evaluate("""() => window.__tagwerk_debug
        .filter((r) => r.kind == 'event' && r.payload.event != 'e2e_sentinel')
        .map((r) => r.payload.event_id)""")
    made = [str(uuid.UUID(i)) for i in made]  # 32 hex digits, stored as a UUID
    counts = {r["event_id"]: 0 for r in shop.events()}
    for r in shop.events():
        counts[r["event_id"]] += 1
    assert set(counts) == set(made)  # every event arrived...
    assert set(counts.values()) == {1}  # ...once
    assert len(made) >= 9
    assert shop.page.evaluate("() => JSON.parse(localStorage.tw_q || '[]').length") == 0
    assert "tw_q" not in shop.cookies()  # all sent: the stored queue and its flag are gone


def test_strict_csp_with_nonce_and_no_violations(shop, server):
    answer = httpx.get(f"{server.url}/demo/product/yirgacheffe")
    csp = answer.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([A-Za-z0-9+/=_-]+)'", csp).group(1)
    assert "script-src 'nonce-" in csp and "'strict-dynamic'" in csp
    assert "style-src 'self' 'nonce-" in csp and "connect-src 'self'" in csp
    assert answer.text.count(f'nonce="{nonce}"') == 4  # stub, tag, shop script, stylesheet
    assert " style=" not in answer.text and " onclick=" not in answer.text
    again = httpx.get(f"{server.url}/demo/product/yirgacheffe").headers["content-security-policy"]
    assert again != csp  # a fresh nonce per answer

    # Every part under that CSP: the tag, banner, marketing tag, debug overlay, the shop.
    shop.goto("/demo/?tagwerk_debug=1")
    shop.accept_all()
    wait_for(shop.partner_loaded)
    expect(shop.page.locator("section[aria-label='tagwerk debug']")).to_be_visible()
    shop.minimise_debug()
    shop.click_link("/demo/category/cups")
    shop.click_link("/demo/product/stoneware-mug")
    shop.add_to_cart(1)
    shop.click_link("/demo/cart")
    shop.click_link("/demo/checkout")
    shop.page.click("#place-order")
    expect(shop.page.locator("#order-id")).to_be_visible()
    shop.cookie_settings()
    shop.choose(personalization=False)
    shop.settle()
    shop.assert_clean()  # and again by the fixture, after the test


def test_debug_overlay_shows_events_and_tags_and_follows_spa(shop):
    shop.goto("/demo/?tagwerk_debug=1")
    panel = shop.page.locator("section[aria-label='tagwerk debug']")
    expect(panel).to_be_visible()
    rows = panel.locator("li")
    expect(rows.filter(has_text="event page_view")).to_have_count(1)
    expect(rows.filter(has_text="tag partner held back")).to_have_count(1)
    expect(panel).to_contain_text("no consent")
    shop.accept_all()
    expect(rows.filter(has_text="tag partner fired")).to_have_count(1)
    expect(rows.filter(has_text="consent (banner)")).to_have_count(1)
    shop.click_link("/demo/category/coffee")
    views = rows.filter(has_text="event page_view")
    expect(views).to_have_count(2)
    expect(views.nth(1)).to_contain_text("/demo/category/coffee")
    expect(rows.filter(has_text="event view_item_list")).to_have_count(2)
    # Minimise and expand: the heading is a disclosure button.
    toggle = panel.get_by_role("button", name=re.compile(r"tagwerk debug \(\d+\)"))
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")


def test_every_demo_path_answers_the_shell(server):
    for path in ("/demo/", "/demo/cart", "/demo/product/nope", "/demo/a/b/c?x=1"):
        answer = httpx.get(server.url + path)
        assert answer.status_code == 200 and '<script async src="/t/demo.js"' in answer.text
        assert answer.headers["cache-control"] == "no-store"
    assert httpx.get(server.url + "/demo?tagwerk_debug=1").headers["location"] == \
        "/demo/?tagwerk_debug=1"
    static = httpx.get(server.url + "/demo/static/partner.js")
    assert static.status_code == 200 and "javascript" in static.headers["content-type"]
    assert httpx.get(server.url + "/demo/static/partner.gif").content.startswith(b"GIF89a")
    for bad in ("/demo/static/nope.js", "/demo/static/app.py", "/demo/static/.app.js"):
        assert httpx.get(server.url + bad).status_code == 404
    # No way out of the directory: an encoded slash makes it a route of the shop.
    sneaky = httpx.get(server.url + "/demo/static/..%2F..%2Fdemo.py")
    assert "text/html" in sneaky.headers["content-type"] and "import" not in sneaky.text
