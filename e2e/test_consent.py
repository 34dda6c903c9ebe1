"""Consent in the browser: the banner, what a rejection leaves behind (nothing identifying),
what an acceptance sets, the marketing tag, GPC, and the consent log."""

from __future__ import annotations

import time

from playwright.sync_api import expect

from e2e.shop import consent_log
from tests.helpers import wait_for

ALL = ["analytics", "marketing", "necessary", "personalization"]


def test_reject_leaves_no_identifier_in_the_browser_or_the_rows(shop):
    shop.goto("/demo/")
    expect(shop.dialog).to_be_visible()  # first visit: the banner asks
    expect(shop.dialog).to_contain_text("Your privacy choices")
    shop.reject_all()

    shop.click_link("/demo/category/coffee")
    shop.click_link("/demo/product/casa-espresso")
    shop.add_to_cart(1)
    shop.login("reject@example.com")  # identify without analytics: the id is not kept
    shop.settle()

    # The browser: only the rejection is recorded.
    cookies = shop.cookies()
    assert set(cookies) == {"tw_consent"}, cookies
    decision = shop.consent()
    assert decision["granted"] == ["necessary"] and decision["how"] == "banner"
    storage = shop.storage()
    assert "tw_q" not in storage["local"] and "tw_u" not in storage["session"]
    assert [k for k in (*storage["local"], *storage["session"]) if k.startswith("tw_")] == []

    # The rows: every event arrived, none carries an identifier.
    rows = shop.events()
    kinds = {r["event"] for r in rows}
    assert {"page_view", "view_item_list", "select_item", "view_item", "add_to_cart",
            "identify"} <= kinds, kinds
    assert all(r["device_id"] == r["session_id"] == r["user_id"] == "" for r in rows), rows
    assert all(r["consent"] == ["necessary"] for r in rows)


def test_accept_sets_the_device_cookie_and_rows_carry_it(shop):
    shop.goto("/demo/")
    with shop.page.expect_response(lambda r: r.url.endswith("/consent")) as logged:
        shop.accept_all()
    assert sorted(shop.consent()["granted"]) == ALL
    # The collector sets the tag's tw_consent again (Safari caps cookies written by script
    # at 7 days): the same value, readable by the tag, for the decision's 12 months.
    renewed = [h["value"] for h in logged.value.headers_array()
               if h["name"].lower() == "set-cookie" and h["value"].startswith("tw_consent=")]
    tw_consent = shop.cookies()["tw_consent"]
    assert renewed and renewed[0].startswith(f"tw_consent={tw_consent['value']}; Path=/;")
    assert not tw_consent["httpOnly"]
    assert tw_consent["expires"] > time.time() + 364 * 86400
    shop.click_link("/demo/category/brewing")
    device = shop.device_id()  # set by the collector's answer to the first hit with analytics
    cookie = shop.cookies()["tw_id"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert "tw_id" not in shop.page.evaluate("document.cookie")  # not readable by scripts
    shop.click_link("/demo/cart")
    shop.settle()

    # The tag's session: a first-party session cookie, <session id>.<minute of last activity>.
    tw_s = shop.cookies()["tw_s"]
    assert tw_s["expires"] == -1 and tw_s["sameSite"] == "Lax" and tw_s["path"] == "/"
    assert not tw_s["httpOnly"]
    session = tw_s["value"].split(".")[0]
    rows = shop.events()
    granted = [r for r in rows if "analytics" in r["consent"]]
    assert len(granted) >= 3  # two route changes and a list view, at least
    assert {r["device_id"] for r in granted} == {device}
    assert {r["session_id"] for r in granted} == {session}
    assert all(r["consent"] == ALL for r in granted)
    # Events made before the decision stay without identifiers.
    assert all(r["device_id"] == "" for r in rows if r not in granted)


def test_marketing_tag_fires_only_after_marketing_consent(shop):
    shop.goto("/demo/")
    expect(shop.dialog).to_be_visible()
    assert not shop.partner_loaded() and shop.partner_requests() == []
    shop.choose(analytics=True, personalization=True)  # everything but marketing
    shop.click_link("/demo/category/cups")
    shop.settle()
    assert not shop.partner_loaded() and shop.partner_requests() == []

    shop.cookie_settings()
    shop.choose(marketing=True)
    wait_for(shop.partner_loaded)  # the tag held on this page is released at once
    shop.wait(lambda: any("partner.gif" in u for u in shop.partner_requests()))
    assert sorted(shop.consent()["granted"]) == ALL


def test_gpc_keeps_marketing_off_unless_chosen_explicitly(devices):
    shop = devices("desktop", gpc=True)
    shop.goto("/demo/")
    expect(shop.dialog).to_contain_text("Global Privacy Control")
    shop.accept_all()  # "accept all" does not switch marketing on under GPC
    decision = shop.consent()
    assert sorted(decision["granted"]) == ["analytics", "necessary", "personalization"]
    assert decision["how"] == "gpc"
    shop.click_link("/demo/category/coffee")
    shop.settle()
    assert not shop.partner_loaded() and shop.partner_requests() == []
    rows = shop.events()
    assert rows and all("marketing" not in r["consent"] for r in rows)

    # An explicit choice in the settings wins over GPC, in the browser and at the collector.
    shop.cookie_settings()
    shop.choose(marketing=True)
    wait_for(shop.partner_loaded)
    shop.wait(lambda: any("partner.gif" in u for u in shop.partner_requests()))
    assert shop.consent()["how"] == "banner" and "marketing" in shop.consent()["granted"]
    shop.click_link("/demo/cart")
    shop.settle()
    last = shop.events("event = 'page_view'")[-1]
    assert last["path"] == "/demo/cart" and "marketing" in last["consent"]

    log = wait_for(lambda: len(rows := consent_log(shop.server, decision["id"])) == 2 and rows)
    assert [r["how"] for r in log] == ["gpc", "banner"]
    assert "marketing" in log[0]["denied"] and "marketing" in log[1]["granted"]


def test_consent_log_has_one_row_per_decision(shop, server):
    shop.goto("/demo/")
    shop.accept_all()
    first = shop.consent()
    shop.click_link("/demo/cart")
    shop.device_id()  # analytics granted: the collector set tw_id
    # A CMP repeating the same state (gtag on every page) is not a new decision.
    shop.page.evaluate("""() => dataLayer.push(['consent', 'update', {analytics_storage:
        'granted', ad_storage: 'granted', ad_user_data: 'granted',
        ad_personalization: 'granted'}])""")
    shop.cookie_settings()
    shop.reject_all()
    second = shop.consent()
    assert second["id"] == first["id"]  # one consent id across decisions
    assert second["granted"] == ["necessary"]

    rows = wait_for(lambda: len(rows := consent_log(server, first["id"])) >= 2 and rows)
    shop.settle()  # give a stray third decision time to arrive
    rows = consent_log(server, first["id"])
    assert len(rows) == 2, rows
    accept, reject = rows
    assert sorted(accept["granted"]) == ALL and accept["denied"] == [] and accept["how"] == "banner"
    assert reject["granted"] == ["necessary"]
    assert sorted(reject["denied"]) == ["analytics", "marketing", "personalization"]
    assert accept["policy"] == reject["policy"] == first["policy"]
    assert accept["url"].endswith("/demo/") and reject["url"].endswith("/demo/cart")
    assert accept["device_class"] == "desktop"
    # Withdrawing analytics clears the device cookie and the tag's storage.
    wait_for(lambda: "tw_id" not in shop.cookies())
    assert "tw_s" not in shop.cookies() and "tw_q" not in shop.cookies()
    assert "tw_u" not in shop.storage()["session"] and "tw_q" not in shop.storage()["local"]
