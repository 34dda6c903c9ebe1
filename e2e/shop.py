"""Driving the demo shop in a browser, and reading what it stored.

``Shop`` is one device: a Playwright browser context (its own cookies and storage) with one
page on the demo shop. It records page errors, console errors and CSP violations (from
``securitypolicyviolation`` events on every document the context opens) for
``assert_clean``. ``events``/``consent_log`` read rows through the server's ClickHouse HTTP
port; ``Shop.settle`` waits until everything the page queued before it is stored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from tests.helpers import CHROME, wait_for
from tests.servers import Server

ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Mobile Safari/537.36")
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}, "user_agent": CHROME}
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "user_agent": ANDROID,
                         "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
SENTINEL = "e2e_sentinel"
GPC_SCRIPT = "Object.defineProperty(navigator, 'globalPrivacyControl', {value: true})"
CSP_SCRIPT = """
document.addEventListener('securitypolicyviolation', (e) => window.__twCsp({
  directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample,
  source: e.sourceFile, line: e.lineNumber, page: location.href}), true);
"""
PARTNER = "/demo/static/partner."
# The purposes' names in the banner (the default container's English texts).
NAMES = {"analytics": "Analytics", "personalization": "Personalisation", "marketing": "Marketing"}


# -- reading ClickHouse -----------------------------------------------------------------------


def query(server: Server, sql: str, **params: Any) -> list[dict[str, Any]]:
    text = server.sql(sql + " FORMAT JSONEachRow", **{k: str(v) for k, v in params.items()})
    return [json.loads(line) for line in text.splitlines() if line]


EVENT_COLUMNS = (
    "toString(event_id) AS event_id, event, type, path, url, title, device_id, session_id, "
    "user_id, consent, order_id, toFloat64(revenue) AS revenue, currency, coupon, "
    "arrayMap(i -> (i.product_id, i.name, i.category, i.brand, i.variant, "
    "toFloat64(i.price), i.quantity), items) AS items, props, device_class, "
    "toUnixTimestamp64Milli(ts) AS ms"
)


def events(server: Server, since: int, where: str = "1", **params: Any) -> list[dict[str, Any]]:
    """The demo site's events made since ``since`` (epoch ms, browser time), sentinels left
    out, in the order they happened."""
    return query(
        server,
        f"SELECT {EVENT_COLUMNS} FROM tagwerk.events WHERE site_id = 'demo' "
        "AND ts >= fromUnixTimestamp64Milli({since:Int64}) "
        f"AND event != '{SENTINEL}' AND ({where}) ORDER BY ts, event_id",
        since=since, **params)


def consent_log(server: Server, consent_id: str) -> list[dict[str, Any]]:
    return query(
        server,
        "SELECT consent_id, granted, denied, policy, how, url, device_class "
        "FROM tagwerk.consent_log WHERE site_id = 'demo' AND consent_id = {cid:String} "
        "ORDER BY ts", cid=consent_id)


def parse_consent(value: str) -> dict[str, Any]:
    """A ``tw_consent`` value (DESIGN.md section 3)."""
    version, cid, policy, granted, at, how = value.split(".")
    return {"version": version, "id": cid, "policy": policy,
            "granted": granted.split(",") if granted else [], "at": int(at), "how": how}


# -- one device -------------------------------------------------------------------------------


class Shop:
    def __init__(self, server: Server, since: int, context: BrowserContext) -> None:
        self.server, self.since, self.context = server, since, context
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.violations: list[dict] = []
        self.requests: list[str] = []
        self.failed: list[str] = []
        context.expose_function("__twCsp", lambda v: self.violations.append(v))
        context.add_init_script(CSP_SCRIPT)
        self.page: Page = context.new_page()
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("console", self._console)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))

    @classmethod
    def open_context(cls, browser: Browser, server: Server, since: int,
                     profile: dict[str, Any], gpc: bool = False, **options: Any) -> Shop:
        options = {**profile, **options}
        if gpc:
            options["extra_http_headers"] = {"Sec-GPC": "1"}
        context = browser.new_context(base_url=server.url, locale="en-US", **options)
        context.set_default_timeout(10_000)
        if gpc:
            context.add_init_script(GPC_SCRIPT)
        return cls(server, since, context)

    def _console(self, message) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def close(self) -> None:
        self.context.close()

    def assert_clean(self) -> None:
        """No page errors, no CSP violations, no console errors (but failed requests while
        the test had the browser offline)."""
        self.page.evaluate("0")  # a round trip: events the browser sent before are delivered
        assert self.page_errors == [], self.page_errors
        assert self.violations == [], self.violations
        errors = [m for m in self.console_errors if "ERR_INTERNET_DISCONNECTED" not in m]
        assert errors == [], errors

    # -- navigation

    def goto(self, path: str = "/demo/") -> None:
        """A full page load."""
        self.page.goto(path)
        expect(self.page.locator("main h1")).to_be_visible()

    def click_link(self, href: str) -> None:
        """Click a link of the shop to ``href`` (an SPA route change)."""
        self.page.locator(f'a[data-nav][href="{href}"]').first.click()
        expect(self.page).to_have_url(self.server.url + href)
        expect(self.page.locator("main h1")).to_be_visible()

    def add_to_cart(self, quantity: int = 1) -> None:
        """On a product page."""
        self.page.fill("#qty", str(quantity))
        self.page.click("#add-to-cart")
        expect(self.page.locator("#toast")).to_contain_text(f"{quantity} ×")

    def login(self, email: str) -> str:
        """Sign in (from any page); returns the customer id the shop shows."""
        self.click_link("/demo/login")
        self.page.fill("#login-email", email)
        self.page.fill("#login-password", "secret")
        self.page.click("#login-submit")
        expect(self.page).to_have_url(self.server.url + "/demo/account")
        return self.page.text_content("#customer-id") or ""

    def minimise_debug(self) -> None:
        """Fold the debug overlay to its heading (it covers the bottom right corner)."""
        toggle = self.page.locator("section[aria-label='tagwerk debug'] h2 button")
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "false")

    # -- the banner

    @property
    def dialog(self) -> Locator:
        return self.page.get_by_role("dialog")

    def _decide(self, button: str) -> None:
        self.dialog.get_by_role("button", name=button, exact=True).click()
        expect(self.dialog).to_be_hidden()

    def accept_all(self) -> None:
        self._decide("Accept all")

    def reject_all(self) -> None:
        self._decide("Reject all")

    def choose(self, **purposes: bool) -> None:
        """Settings: set each purpose's box (by its name), then "Save choices"."""
        save = self.dialog.get_by_role("button", name="Save choices")
        if not save.is_visible():
            self.dialog.get_by_role("button", name="Settings").click()
        for purpose, on in purposes.items():
            self.dialog.get_by_role("checkbox", name=NAMES[purpose], exact=True).set_checked(on)
        save.click()
        expect(self.dialog).to_be_hidden()

    def cookie_settings(self) -> None:
        """The footer's "Cookie settings" link: reopens the banner."""
        self.page.click("#cookie-settings")
        expect(self.dialog).to_be_visible()

    # -- state

    def cookies(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c for c in self.context.cookies()}

    def consent(self) -> dict[str, Any]:
        return parse_consent(self.cookies()["tw_consent"]["value"])

    def device_id(self) -> str:
        """The collector's device cookie (HttpOnly: from the context, not the page)."""
        value = wait_for(lambda: self.cookies().get("tw_id", {}).get("value"), timeout=10)
        return value.split(".")[0]

    def storage(self) -> dict[str, dict[str, str]]:
        return self.page.evaluate(
            "() => ({local: {...localStorage}, session: {...sessionStorage}})")

    def partner_loaded(self) -> bool:
        return self.page.evaluate("() => window.__partner_loaded === true")

    def partner_requests(self) -> list[str]:
        return [u for u in self.requests if PARTNER in u]

    def wait(self, check, timeout: float = 10) -> Any:
        """Poll ``check`` while letting Playwright deliver the page's events (request lists
        are filled by event handlers, which the sync API runs only inside its own calls)."""
        deadline = time.monotonic() + timeout
        while not (result := check()):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            self.page.wait_for_timeout(25)
        return result

    def settle(self, timeout: float = 20) -> None:
        """Wait until every event the page queued so far is stored: send a sentinel event
        and wait for its row (the tag sends in order, one request at a time)."""
        marker = uuid.uuid4().hex
        self.page.evaluate("(n) => tagwerk('track', 'e2e_sentinel', {n})", marker)

        def stored() -> bool:
            return bool(query(self.server,
                              "SELECT 1 FROM tagwerk.events WHERE site_id = 'demo' AND "
                              "event = 'e2e_sentinel' AND props['n'] = {n:String}", n=marker))

        wait_for(stored, timeout=timeout, interval=0.05)

    def events(self, where: str = "1", **params: Any) -> list[dict[str, Any]]:
        return events(self.server, self.since, where, **params)
