"""One shopper across a phone, a desktop and a store, end to end: the phone's profile shows
the store purchase, the shop's "Recommended for you" on the phone leaves it out, and after
an erasure nothing of them is found anywhere."""

from __future__ import annotations

import json
import uuid

import httpx
from playwright.sync_api import expect

from collector.storage.server import ServerStore
from tests.helpers import found_anywhere, wait_for

GRINDER, YIRGACHEFFE = "RW-203", "RW-101"


def keys(server) -> dict[str, str]:
    return json.loads((server.data_dir / "demo-keys.json").read_text())


def api(server, method: str, path: str, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, f"{server.url}/api/v1/sites/demo{path}", json=body,
                         headers={"Authorization": f"Bearer {key}"}, timeout=30)


def writer(server) -> ServerStore:
    """The collector's own SQL user (every table), as ``tagwerk sql`` finds it."""
    info = json.loads((server.data_dir / "serve.json").read_text())
    return ServerStore(f"http://{info['sql_user']}:{info['sql_password']}@"
                       f"{info['sql_host']}:{info['sql_port']}/tagwerk")


def recommended(shop) -> list[str]:
    """The product ids of the home page's "Recommended for you" block."""
    shop.goto("/demo/")
    block = shop.page.locator("#for-you")
    expect(block).to_be_visible(timeout=10_000)
    return block.locator("[data-select]").evaluate_all("els => els.map(e => e.dataset.select)")


def test_phone_desktop_store_then_erased(devices, server):
    read, admin = keys(server)["read"], keys(server)["admin"]
    email = f"ada-{uuid.uuid4().hex[:8]}@example.com"

    # On the phone in the train: two products, then she signs in to keep her list.
    phone = devices("phone")
    # (Navigation inside the shop: a full page load would let the tag deliver at unload,
    # a request headless Chromium sends with its own user agent, which is a bot's.)
    phone.goto("/demo/")
    phone.accept_all()
    phone.click_link("/demo/product/yirgacheffe")
    phone.click_link("/demo/category/brewing")
    phone.click_link("/demo/product/hand-grinder")
    customer = phone.login(email)
    phone.settle()
    # At lunch on the office desktop: signed in, the grinder into the cart.
    desktop = devices("desktop")
    desktop.goto("/demo/")
    desktop.accept_all()
    assert desktop.login(email) == customer
    desktop.click_link("/demo/category/brewing")
    desktop.click_link("/demo/product/hand-grinder")
    desktop.add_to_cart()
    desktop.settle()
    # In the evening she buys it in the store: the till sends the sale by customer number.
    sale = {"event": "purchase", "channel": "pos", "user_id": customer,
            "consent": ["analytics", "personalization"], "order_id": f"till-{customer}",
            "revenue": 89.0, "currency": "EUR",
            "items": [{"product_id": GRINDER, "price": 89.0, "quantity": 1}]}
    r = httpx.post(f"{server.url}/api/v1/batch", json={"events": [sale]}, timeout=30,
                   headers={"Authorization": f"Bearer {keys(server)['write']}"})
    assert r.status_code == 202, r.text

    phone_id, desktop_id = phone.device_id(), desktop.device_id()

    def profile():
        answer = api(server, "GET", f"/persons/device:{phone_id}/profile", read)
        if answer.status_code == 200 and answer.json()["purchased"]:
            return answer.json()
        return None

    seen = wait_for(profile, timeout=20)
    assert [p["product_id"] for p in seen["purchased"]] == [GRINDER]
    assert {YIRGACHEFFE, GRINDER} <= {p["product_id"] for p in seen["viewed"]}
    assert set(seen["channels"]) == {"web", "pos"}
    person = api(server, "GET", f"/persons/device:{phone_id}", read).json()
    assert {(i["kind"], i["id"]) for i in person["identifiers"]} >= {
        ("user", customer), ("device", phone_id), ("device", desktop_id)}

    # The shop's own blocks on the phone leave out what she bought, in the store too,
    # while anyone else is still shown the grinder.
    public = httpx.get(f"{server.url}/t/demo/recommend/top?metric=views&window=7d&limit=24")
    assert GRINDER in [i["product_id"] for i in public.json()["items"]]
    shown = wait_for(lambda: (ids := recommended(phone)) and GRINDER not in ids and ids,
                     timeout=20)
    assert YIRGACHEFFE in shown

    # Erased: nothing of her anywhere, through any of her identifiers.
    r = api(server, "POST", "/privacy/erase", admin, {"id": f"device:{phone_id}"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["events"] > 5
    for ident in (f"user:{customer}", f"device:{phone_id}", f"device:{desktop_id}"):
        assert api(server, "GET", f"/persons/{ident}", read).status_code == 404
    store = writer(server)
    try:
        assert found_anywhere(store, [customer, phone_id, desktop_id]) == {}
    finally:
        store.close()
