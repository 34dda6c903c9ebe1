"""Preview links: the draft container on the site itself, for the browser holding the link."""

from __future__ import annotations

import asyncio
import secrets
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import brotli
import orjson
import pytest

from collector.containers import Previews
from collector.tag import serving
from tests.helpers import TEST_PRIVACY_KEY, make_client, served

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


# -- attacks: forged tokens, the cost of a preview, ending a preview -----------------------------


class CountingStore:
    """The real store, counting the queries made through it (no mock: every call runs)."""

    def __init__(self, store) -> None:
        self.store, self.queries = store, 0

    def rows(self, *args, **kwargs):
        self.queries += 1
        return self.store.rows(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture(scope="module")
def real(store, tmp_path_factory):
    """Real HTTP: a collector behind uvicorn, the site published; (client, collector, keys)."""
    with served(store, tmp_path_factory.mktemp("preview-real")) as (client, collector):
        _, keys = collector.sites.create("preview-real", [ORIGIN])
        collector.containers.publish("preview-real", origins=[ORIGIN])
        yield client, collector, keys


def mint_token(client, keys, site="preview-real") -> str:
    response = client.post(f"/api/v1/sites/{site}/container/preview",
                           content=orjson.dumps({"url": f"{ORIGIN}/"}),
                           headers={"Authorization": f"Bearer {keys['admin']}"})
    assert response.status_code == 201, response.text
    return parse_qs(urlsplit(response.json()["link"]).query)["token"][0]


@contextmanager
def counted(collector):
    counting = CountingStore(collector.previews.store)
    collector.previews.store = counting
    try:
        yield counting
    finally:
        collector.previews.store = counting.store


def altered(token: str, at: int) -> str:
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]


def test_forged_tokens_cost_no_query(real):
    client, collector, keys = real
    token = mint_token(client, keys)
    forged = ["twp_" + secrets.token_urlsafe(24) for _ in range(20)]
    forged += ["twp_" + secrets.token_urlsafe(36)[:len(token) - 4] for _ in range(20)]
    forged += [altered(token, at) for at in range(4, len(token), 3)]
    forged += [token + "x", token[:-1], "twp_", "twp_" + "A" * 200]
    with counted(collector) as store:
        for cookie in forged:
            client.cookies.set("tw_preview", cookie, path="/t/")
            served_tag = client.get("/t/preview-real.js")
            assert served_tag.headers["cache-control"].startswith("public")
            assert client.get("/t/preview", params={"token": cookie, "to": f"{ORIGIN}/"},
                              follow_redirects=False).status_code == 404
            client.cookies.clear()
        assert store.queries == 0
        # The real token still works, end to end, with one lookup for many requests.
        opened = client.get("/t/preview", params={"token": token, "to": f"{ORIGIN}/"},
                            follow_redirects=False)
        assert opened.status_code == 303
        client.cookies.set("tw_preview", token, path="/t/")
        for _ in range(5):
            assert client.get("/t/preview-real.js").headers["cache-control"] == \
                "private, no-store"
        assert 1 <= store.queries <= 2
    client.cookies.clear()


def test_a_preview_is_built_off_the_loop_and_once(real, monkeypatch):
    client, collector, keys = real
    draft = collector.containers.draft("preview-real").document
    draft["settings"]["session_timeout_minutes"] = 17
    collector.containers.put_draft("preview-real", draft, [ORIGIN])
    token = mint_token(client, keys)
    on_loop: list[bool] = []
    qualities: list[int] = []
    compress = brotli.compress

    def spy(data, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        qualities.append(kwargs.get("quality", 11))
        return compress(data, *args, **kwargs)

    monkeypatch.setattr(serving.brotli, "compress", spy)
    client.cookies.set("tw_preview", token, path="/t/")
    for _ in range(6):
        served_tag = client.get("/t/preview-real.js", headers={"Accept-Encoding": "br"})
        assert served_tag.headers["cache-control"] == "private, no-store"
        assert config(served_tag)["m"] == 17
    client.cookies.clear()
    assert on_loop == [False]  # built once, in a worker thread
    assert qualities[0] < 11  # one browser sees it: not compressed as hard as the live tag


def test_ending_a_preview_ends_the_token(real):
    client, collector, keys = real
    token = mint_token(client, keys)
    other = mint_token(client, keys)
    client.cookies.set("tw_preview", token, path="/t/")
    assert client.get("/t/preview-real.js").headers["cache-control"] == "private, no-store"
    ended = client.get("/t/preview", params={"end": "1"})
    assert ended.status_code == 200 and "Max-Age=0" in ended.headers["set-cookie"]
    # The same token, sent again as a cookie or in a link: the live tag, a 404.
    client.cookies.set("tw_preview", token, path="/t/")
    assert client.get("/t/preview-real.js").headers["cache-control"].startswith("public")
    client.cookies.clear()
    assert client.get("/t/preview", params={"token": token, "to": f"{ORIGIN}/"},
                      follow_redirects=False).status_code == 404
    # Every collector on the store refuses it (one that never saw it cached).
    elsewhere = Previews(collector.store, TEST_PRIVACY_KEY.encode())
    assert elsewhere.site_of(token) is None
    assert elsewhere.site_of(other) == "preview-real"  # only that token ended
    # Ending without a cookie, or with a forged one, is harmless.
    assert client.get("/t/preview", params={"end": "1"}).status_code == 200
    client.cookies.set("tw_preview", "twp_forged", path="/t/")
    assert client.get("/t/preview", params={"end": "1"}).status_code == 200
    client.cookies.clear()
