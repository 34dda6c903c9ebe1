"""Preview links: the draft container on the site itself, for the browser holding the link."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tests.helpers import make_client

ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("preview"))
    with client:
        _, keys = collector.sites.create("preview-test", [ORIGIN])
        collector.sites.create("preview-other", ["https://other.example"])
        yield client, collector, keys


def config(response) -> dict:
    """The compact config inlined in the served tag (collector/tag/serving.py core_config)."""
    text = response.text
    start = text.index('{"s":"')
    return orjson.loads(text[start:text.index("}", start) + 1])


def mint(client, keys, **body):
    return client.post("/api/v1/sites/preview-test/container/preview", content=orjson.dumps(body),
                       headers={"Authorization": f"Bearer {keys['admin']}"})


def test_preview_serves_the_draft_to_the_link_holder_only(env):
    client, collector, keys = env
    collector.containers.publish("preview-test", origins=[ORIGIN])  # live: the default
    draft = collector.containers.draft("preview-test").document
    draft["settings"]["session_timeout_minutes"] = 42
    collector.containers.put_draft("preview-test", draft, [ORIGIN])  # edited, not published

    response = mint(client, keys, url=f"{ORIGIN}/shoes?x=1", minutes=30)
    assert response.status_code == 201, response.text
    link = urlsplit(response.json()["link"])
    params = parse_qs(link.query)
    assert params["to"] == [f"{ORIGIN}/shoes?x=1"]

    client.cookies.clear()
    assert "m" not in config(client.get("/t/preview-test.js"))  # the default, 30 minutes

    opened = client.get(f"{link.path}?{link.query}", follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == f"{ORIGIN}/shoes?x=1&tagwerk_debug=1"
    assert opened.headers["clear-site-data"] == '"cache"'
    cookie = opened.headers["set-cookie"]
    assert "tw_preview=twp_" in cookie and "Path=/t/" in cookie and "HttpOnly" in cookie

    served = client.get("/t/preview-test.js")  # the client now sends the cookie
    assert served.headers["cache-control"] == "private, no-store"
    assert config(served)["m"] == 42
    # The engine, with the draft's tags, is the draft's too, and not cached either.
    engine = client.get("/t/preview-test/tm.js")
    assert engine.headers["cache-control"] == "private, no-store"
    # The token is for one site only.
    other = client.get("/t/preview-other.js")
    assert other.headers["cache-control"].startswith("public")

    ended = client.get("/t/preview?end=1")
    assert "Max-Age=0" in ended.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/t/preview-test.js").headers["cache-control"].startswith("public")


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"url": "https://evil.example/"}, 400, "url"),
    ({"url": "javascript:alert(1)"}, 400, "url"),
    ({"url": 5}, 400, "url"),
    ({"url": f"{ORIGIN}/", "minutes": 0}, 400, "minutes"),
    ({"url": f"{ORIGIN}/", "minutes": 100000}, 400, "minutes"),
    ({"url": f"{ORIGIN}/", "minutes": "60"}, 400, "minutes"),
    ({"url": f"{ORIGIN}/", "extra": 1}, 400, None),
])
def test_minting_refuses_bad_input(env, body, status, field):
    client, _, keys = env
    response = mint(client, keys, **body)
    assert response.status_code == status
    if field:
        assert response.json()["field"] == field


def test_minting_needs_the_admin_key(env):
    """No key: 401; another key: 403, as everywhere under /api/v1/sites/{site}/."""
    client, _, keys = env
    for key, status in ((None, 401), (keys["write"], 403), ("tw_admin_nope", 403)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = client.post("/api/v1/sites/preview-test/container/preview", content=b"{}",
                               headers=headers)
        assert response.status_code == status


@pytest.mark.parametrize("query", [
    "token=twp_unknown&to=https://shop.example/",
    "token=&to=https://shop.example/",
    "to=https://shop.example/",
    "token=" + "x" * 500,
])
def test_bad_or_unknown_tokens(env, query):
    client, _, _ = env
    response = client.get(f"/t/preview?{query}", follow_redirects=False)
    assert response.status_code == 404
    assert "set-cookie" not in response.headers


def test_the_link_does_not_redirect_off_site(env):
    client, _, keys = env
    link = urlsplit(mint(client, keys, url=f"{ORIGIN}/").json()["link"])
    token = parse_qs(link.query)["token"][0]
    for target in ("https://evil.example/", "//evil.example/", "https://user@shop.example/",
                   "javascript:alert(1)"):
        response = client.get("/t/preview", params={"token": token, "to": target},
                              follow_redirects=False)
        assert response.status_code == 400, target
        assert "set-cookie" not in response.headers
    client.cookies.clear()


def test_a_forged_cookie_serves_the_live_container(env):
    client, _, _ = env
    client.cookies.set("tw_preview", "twp_forged", path="/t/")
    assert client.get("/t/preview-test.js").headers["cache-control"].startswith("public")
    client.cookies.clear()
