"""Consent enforced on the ingestion path: the tw_consent cookie, Sec-GPC, click ids, the
tw_id device cookie and the site's drop_without_consent setting."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from starlette.testclient import TestClient

from collector.ingest import webconsent
from collector.web.http import Hit
from tests.helpers import CHROME, drained, on_path, rows, wait_for

ORIGIN = "https://shop.example"
SITE = "consent-test"
DROP = "consent-drop"
POLICY = ""  # the site's live policy hash, set by the env fixture
AD_URL = "https://shop.example/shoes?utm_source=ads&gclid=Cj0abc&x=1#top"
AD_REFERRER = "https://shop.example/landing?fbclid=IwAR1"


@pytest.fixture(scope="module", params=["asgi", "fast"])
def env(request, store, tmp_path_factory):
    global POLICY
    data_dir = tmp_path_factory.mktemp(f"consent-{request.param}")
    with on_path(request.param, store, data_dir, trusted_proxies="10.0.0.0/8") as (
        client, collector
    ):
        for site, drop in ((SITE, False), (DROP, True)):
            if collector.sites.get(site) is None:
                collector.sites.create(site, [ORIGIN], drop_without_consent=drop)
        # Cookies must carry the live policy: the collector refuses them for another one.
        POLICY = collector.containers.live(SITE).policy
        collector.containers.live(DROP)
        yield client, collector


def consent_cookie(granted: str, how: str = "banner", age: int = 60) -> str:
    return f"v1.{uuid.uuid4().hex}.{POLICY}.{granted}.{int(time.time()) - age}.{how}"


def send(client, consent, *, site=SITE, cookie=None, gpc=False, device=None, url=AD_URL,
         events=None, path="/collect", **extra):
    """Post one page view (or ``events``); returns (response, marker)."""
    marker = uuid.uuid4().hex
    event = {"event": "page_view", "consent": consent, "url": url, "referrer": AD_REFERRER,
             "props": {"marker": marker, "gclid": "Cj0abc", "plan": "gold"}}
    if device is not None:
        event["device_id"] = device
    body = {"site": site, "events": events or [event]}
    headers = {"Content-Type": "text/plain", "Origin": ORIGIN}
    if cookie:
        headers["Cookie"] = cookie
    if gpc:
        headers["Sec-GPC"] = "1"
    client.cookies.clear()  # only what a test sends itself
    response = client.post(path, content=orjson.dumps(body), headers={**headers, **extra})
    return response, marker


def stored(env, marker, site=SITE):
    _, collector = env
    wait_for(lambda: drained(collector))
    return rows(collector.store, site, "props['marker'] = {m:String}", m=marker)


def one(env, marker, site=SITE):
    return wait_for(lambda: stored(env, marker, site))[0]


# -- the consent cookie and GPC ---------------------------------------------------------------


def test_without_our_cookie_the_hits_list_stands(env):
    client, _ = env
    response, marker = send(client, ["analytics", "marketing"])
    assert response.status_code == 202
    row = one(env, marker)
    assert row["consent"] == ["analytics", "marketing"]
    assert row["url"] == AD_URL and row["referrer"] == AD_REFERRER
    assert row["props"]["gclid"] == "Cj0abc"


def test_the_cookie_caps_the_hit(env):
    client, _ = env
    cookie = f"tw_consent={consent_cookie('necessary,analytics')}"
    response, marker = send(client, ["analytics", "marketing"], cookie=cookie)
    assert response.status_code == 202
    row = one(env, marker)
    assert row["consent"] == ["analytics"]
    # Without marketing: no click ids, the rest of the URL as it was.
    assert row["url"] == "https://shop.example/shoes?utm_source=ads&x=1#top"
    assert row["referrer"] == "https://shop.example/landing"
    assert "gclid" not in row["props"] and row["props"]["plan"] == "gold"
    assert row["utm_source"] == "ads" and row["path"] == "/shoes"


def test_a_rejection_in_the_cookie_empties_identifiers(env):
    client, _ = env
    cookie = f"tw_consent={consent_cookie('necessary', how='banner')}"
    response, marker = send(client, ["analytics", "marketing"], cookie=cookie, device="d-1")
    assert response.status_code == 202
    row = one(env, marker)
    assert row["consent"] == [] and row["device_id"] == ""


@pytest.mark.parametrize("bad", [
    "v1.nothex.3c1d0e7a9b2f4c11.necessary.1795350383.banner",
    # (named: a value of the clock's would make each xdist worker collect another test)
    pytest.param(f"v1.{'a' * 32}.{POLICY}.necessary.{int(time.time())}.popup",
                 id="unknown-how"),
    pytest.param(f"v1.{'a' * 32}.{POLICY}.necessary.{int(time.time()) - 3651 * 86400}.banner",
                 id="ten-years-old"),
    "%FF%FE", "\u00e9t\u00e9\xff".encode(), "",
])
def test_a_malformed_cookie_is_no_decision(env, bad):
    client, _ = env
    header = b"tw_consent=" + bad if isinstance(bad, bytes) else f"tw_consent={bad}"
    response, marker = send(client, ["analytics", "marketing"], cookie=header)
    assert response.status_code == 202
    assert one(env, marker)["consent"] == ["analytics", "marketing"]


def test_gpc_removes_marketing(env):
    client, _ = env
    response, marker = send(client, ["analytics", "marketing"], gpc=True)
    assert response.status_code == 202
    row = one(env, marker)
    assert row["consent"] == ["analytics"]
    assert "gclid" not in row["url"] and "gclid" not in row["props"]


@pytest.mark.parametrize(("how", "kept"), [("banner", True), ("api", True), ("gcm", False),
                                           ("gpc", False)])
def test_an_explicit_choice_beats_gpc(env, how, kept):
    client, _ = env
    cookie = f"tw_consent={consent_cookie('necessary,analytics,marketing', how)}"
    response, marker = send(client, ["analytics", "marketing"], cookie=cookie, gpc=True)
    assert response.status_code == 202
    row = one(env, marker)
    assert ("marketing" in row["consent"]) is kept
    assert ("gclid" in row["url"]) is kept


def test_the_newest_of_two_cookies_counts(env):
    client, _ = env
    old = consent_cookie("necessary", age=500)
    new = consent_cookie("necessary,analytics,marketing", age=5)
    response, marker = send(client, ["analytics", "marketing"],
                            cookie=f"tw_consent={old}; other=1; tw_consent={new}")
    assert response.status_code == 202
    assert one(env, marker)["consent"] == ["analytics", "marketing"]


def test_pixel_is_enforced_too(env):
    client, _ = env
    marker = uuid.uuid4().hex
    client.cookies.clear()
    response = client.get(
        f"/p.gif?site={SITE}&event=noscript&consent=analytics,marketing&props.marker={marker}"
        "&url=https%3A%2F%2Fshop.example%2F%3Fgclid%3D1", headers={"Sec-GPC": "1"})
    assert response.status_code == 200 and "set-cookie" not in response.headers
    row = one(env, marker)
    assert row["consent"] == ["analytics"] and row["url"] == "https://shop.example/"


def test_the_server_batch_api_states_its_own_consent(env):
    client, collector = env
    site, keys = collector.sites.create("consent-batch-" + uuid.uuid4().hex[:6])
    marker = uuid.uuid4().hex
    client.cookies.clear()
    response = client.post("/api/v1/batch", json={"events": [
        {"event": "purchase", "consent": ["analytics", "marketing"], "user_id": "c-1",
         "url": AD_URL, "props": {"marker": marker}},
        {"event": "refund", "user_id": "c-1", "url": AD_URL, "props": {"marker": marker}},
    ]}, headers={"Authorization": f"Bearer {keys['write']}", "Sec-GPC": "1",
                 "Cookie": f"tw_consent={consent_cookie('necessary')}"})
    assert response.status_code == 202
    kept, refund = sorted(wait_for(lambda: len(stored(env, marker, site.site_id)) == 2
                                   and stored(env, marker, site.site_id)),
                          key=lambda r: r["event"])
    assert kept["consent"] == ["analytics", "marketing"] and kept["url"] == AD_URL
    # The consent column means the same everywhere: no marketing, no click id.
    assert refund["consent"] == [] and "gclid" not in refund["url"]


# -- the tw_id device cookie ------------------------------------------------------------------


def set_cookie(response) -> str | None:
    values = response.headers.get_list("set-cookie")
    assert len(values) <= 1
    return values[0] if values else None


def device_of(header: str) -> tuple[str, int]:
    value = header.split(";", 1)[0].split("=", 1)[1]
    device_id, _, day = value.partition(".")
    return device_id, int(day)


def test_tw_id_is_minted_with_analytics_and_read_on_the_next_hit(env):
    client, _ = env
    first, marker = send(client, ["analytics"])
    header = set_cookie(first)
    assert header is not None
    assert header.startswith("tw_id=")
    attributes = header.split("; ")[1:]
    assert attributes == ["Path=/", "Max-Age=34128000", "HttpOnly", "SameSite=Lax"]  # http
    device_id, day = device_of(header)
    assert len(device_id) == 22 and day == int(time.time() // 86400)
    assert one(env, marker)["device_id"] == device_id  # the first hit has it too

    # The next hit: the cookie's id is the device id, whatever the page says.
    second, marker = send(client, ["analytics"], cookie=f"tw_id={device_id}.{day}",
                          device="from-the-page")
    assert second.status_code == 202
    assert set_cookie(second) is None  # set today already: nothing to refresh
    assert one(env, marker)["device_id"] == device_id


def test_a_page_device_id_is_kept_on_a_first_hit(env):
    client, _ = env
    response, marker = send(client, ["analytics"], device="app-device-7")
    assert set_cookie(response) is not None
    assert one(env, marker)["device_id"] == "app-device-7"


def test_tw_id_is_refreshed_once_a_day(env):
    client, _ = env
    device_id = "AbCdEfGhIjKlMnOpQrSt-_"
    response, marker = send(client, ["analytics"], cookie=f"tw_id={device_id}.20000")
    header = set_cookie(response)
    assert device_of(header) == (device_id, int(time.time() // 86400))
    assert "Max-Age=34128000" in header
    assert one(env, marker)["device_id"] == device_id


def test_no_tw_id_without_analytics(env):
    client, _ = env
    response, marker = send(client, ["necessary", "marketing"])
    assert response.status_code == 202 and set_cookie(response) is None
    assert one(env, marker)["device_id"] == ""
    # Granted in the hit, refused by the cookie: no cookie either.
    cookie = f"tw_consent={consent_cookie('necessary')}"
    response, _ = send(client, ["analytics"], cookie=cookie)
    assert set_cookie(response) is None


def test_tw_id_is_cleared_without_analytics(env):
    client, _ = env
    device_id = "AbCdEfGhIjKlMnOpQrSt-_"
    response, marker = send(client, [], cookie=f"tw_id={device_id}.20000")
    header = set_cookie(response)
    assert header.startswith("tw_id=; Path=/; Max-Age=0;")
    row = one(env, marker)
    assert row["device_id"] == "" and device_id not in orjson.dumps(row).decode()
    # The person withdrew analytics: the cookie says so, whatever the hit claims.
    cookie = f"tw_id={device_id}.20000; tw_consent={consent_cookie('necessary')}"
    response, _ = send(client, ["analytics"], cookie=cookie)
    assert set_cookie(response).startswith("tw_id=; ")
    # An invalid tw_id is cleared as well.
    response, _ = send(client, [], cookie="tw_id=<garbage>")
    assert set_cookie(response).startswith("tw_id=; ")


def test_the_last_event_of_a_batch_decides_the_cookie(env):
    client, _ = env
    device_id = "AbCdEfGhIjKlMnOpQrSt-_"
    marker = uuid.uuid4().hex
    events = [{"event": "a", "consent": ["analytics"], "props": {"marker": marker}},
              {"event": "b", "consent": [], "props": {"marker": marker}}]
    response, _ = send(client, None, cookie=f"tw_id={device_id}.1", events=events)
    assert set_cookie(response).startswith("tw_id=; ")
    got = {r["event"]: r["device_id"]
           for r in wait_for(lambda: len(stored(env, marker)) == 2 and stored(env, marker))}
    assert got == {"a": device_id, "b": ""}


def test_secure_over_https_and_behind_a_trusted_proxy(env):
    client, _ = env
    if not isinstance(client, TestClient):
        pytest.skip("needs the test client's made-up peers; test_fasthttp.py covers uvicorn")
    client.cookies.clear()
    body = orjson.dumps({"site": SITE, "event": "e", "consent": ["analytics"]})
    https = client.post("https://testserver/collect", content=body,
                        headers={"Content-Type": "text/plain"})
    assert "; Secure" in set_cookie(https)
    # A browser's agent: the test client's own ("testclient") is a program once the
    # flusher has classified it (a bot gets no cookie), which it may do between requests.
    proxied = TestClient(client.app, client=("10.1.2.3", 5000), headers={"User-Agent": CHROME})
    behind = proxied.post("/collect", content=body, headers={
        "Content-Type": "text/plain", "X-Forwarded-Proto": "https"})
    assert "; Secure" in set_cookie(behind)
    stranger = TestClient(client.app, client=("192.0.2.1", 5000), headers={"User-Agent": CHROME})
    forged = stranger.post("/collect", content=body, headers={
        "Content-Type": "text/plain", "X-Forwarded-Proto": "https"})
    assert "Secure" not in set_cookie(forged)


def test_bots_get_no_cookie(env):
    client, _ = env
    response, _ = send(client, ["analytics"], **{
        "User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"})
    assert response.status_code == 202 and set_cookie(response) is None


def test_a_cookie_for_another_policy_is_no_decision(env):
    """The site changed its purposes or tags since: the banner asks again, and until then
    the old cookie does not cap (or widen) anything."""
    client, _ = env
    stale = consent_cookie("necessary").replace(f".{POLICY}.", ".0000000000000000.")
    response, marker = send(client, ["analytics", "marketing"], cookie=f"tw_consent={stale}")
    assert response.status_code == 202
    assert one(env, marker)["consent"] == ["analytics", "marketing"]


def test_tw_id_takes_the_containers_cookie_domain(env, store):
    client, collector = env
    site = f"consent-domain-{uuid.uuid4().hex[:6]}"
    collector.sites.create(site, [ORIGIN])
    document = collector.containers.draft(site).document
    document["settings"]["cookie_domain"] = ".shop.example"
    collector.containers.put_draft(site, document, [ORIGIN])
    collector.containers.publish(site, origins=[ORIGIN])
    collector.containers.live(site)  # what the background refresh does every 2 s
    response, _ = send(client, ["analytics"], site=site)
    assert "; Domain=.shop.example" in set_cookie(response)
    assert webconsent.site_web(collector.containers, site).cookie_domain == ".shop.example"


def test_failed_requests_set_no_cookie(env):
    client, _ = env
    response, _ = send(client, ["analytics"], events=[{"event": 5}],
                       cookie="tw_id=AbCdEfGhIjKlMnOpQrSt-_.1")
    assert response.status_code == 400 and set_cookie(response) is None


# -- drop_without_consent ---------------------------------------------------------------------


def test_drop_without_consent(env):
    client, collector = env
    assert collector.sites.get(DROP).drop_without_consent is True
    before = collector.metrics.consent_dropped.values.get((), 0)
    response, marker = send(client, ["necessary"], site=DROP)
    assert response.status_code == 202 and response.json() == {"accepted": 0}
    # The cookie's refusal counts as a refusal.
    cookie = f"tw_consent={consent_cookie('necessary')}"
    response, marker2 = send(client, ["analytics"], site=DROP, cookie=cookie)
    assert response.json() == {"accepted": 0}
    response, marker3 = send(client, ["analytics"], site=DROP)
    assert response.json() == {"accepted": 1}
    assert one(env, marker3, DROP)["consent"] == ["analytics"]
    assert stored(env, marker, DROP) == [] and stored(env, marker2, DROP) == []
    assert collector.metrics.consent_dropped.values[()] == before + 2
    # The other site keeps its hits without identifiers.
    assert collector.sites.get(SITE).drop_without_consent is False


def test_long_and_split_cookie_headers(env):
    client, _ = env
    # A Cookie header longer than the parse cache takes, with ours at its end.
    big = "; ".join(f"c{i}={'x' * 90}" for i in range(60))
    cookie = f"{big}; tw_consent={consent_cookie('necessary,analytics')}"
    response, marker = send(client, ["analytics", "marketing"], cookie=cookie)
    assert response.status_code == 202
    assert one(env, marker)["consent"] == ["analytics"]
    # HTTP/2 sends each cookie on a line of its own: they are one header.
    marker = uuid.uuid4().hex
    body = orjson.dumps({"site": SITE, "event": "e", "consent": ["analytics", "marketing"],
                         "props": {"marker": marker}})
    client.cookies.clear()
    response = client.post("/collect", content=body, headers=[
        ("Content-Type", "text/plain"), ("Cookie", "a=1"),
        ("Cookie", f"tw_consent={consent_cookie('necessary,analytics')}"),
        ("Cookie", "tw_id=AbCdEfGhIjKlMnOpQrSt-_.1")])
    assert response.status_code == 202
    row = one(env, marker)
    assert row["consent"] == ["analytics"] and row["device_id"] == "AbCdEfGhIjKlMnOpQrSt-_"


@pytest.mark.parametrize(("scheme", "peer", "proto", "secure"), [
    ("https", "192.0.2.1", None, True),
    ("http", "192.0.2.1", None, False),
    ("http", "10.1.2.3", "https", True),
    ("http", "::ffff:10.1.2.3", "https", True),
    ("http", "10.1.2.3", "https, http", True),  # the proxy facing the browser comes first
    ("http", "10.1.2.3", "http", False),
    ("http", "192.0.2.1", "https", False),  # anybody can send the header
    ("http", "not-an-ip", "https", False),
])
def test_is_https(env, scheme, peer, proto, secure):
    _, collector = env
    headers = [(b"x-forwarded-proto", proto.encode())] if proto else []
    hit = Hit({"type": "http", "method": "POST", "scheme": scheme, "headers": headers,
               "client": (peer, 1)}, None)
    assert webconsent.is_https(hit, collector.settings.networks) is secure
