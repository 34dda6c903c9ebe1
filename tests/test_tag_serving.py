"""Serving the tag: /t/{site}.js with the live container inlined, the static files beside it."""

from __future__ import annotations

import gzip
import uuid

import brotli
import orjson
import pytest
from starlette.testclient import TestClient

from collector.clientip import parse_networks
from collector.tagjs import js_json
from tests.helpers import make_client
from tests.test_containers import ORIGINS, full

HEAD, TAIL = b"/*tw*/(function(){var config = ", b";window.__tw = config;})();\n"
BUNDLE = HEAD + b'"__TAGWERK_CONFIG__"' + TAIL


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    (dist / "tag.js").write_bytes(BUNDLE)
    (dist / "banner.js").write_text("/* banner */")
    (dist / "debug.js").write_text("/* debug */")
    client, collector = make_client(store, tmp_path_factory.mktemp("tag-serving"),
                                    tag_dir=dist)
    with client:
        yield client, collector, dist


@pytest.fixture
def site(env):
    _, collector, _ = env
    site_id = "tag-" + uuid.uuid4().hex[:10]
    collector.sites.create(site_id, list(ORIGINS))
    return site_id


def config_of(response) -> dict:
    assert response.status_code == 200, response.text
    body = response.content
    assert body.startswith(HEAD) and body.endswith(TAIL)
    return orjson.loads(body[len(HEAD):-len(TAIL)])


def test_config_is_inlined(env, site):
    client, collector, _ = env
    r = client.get(f"/t/{site}.js")
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=300, stale-while-revalidate=86400"
    assert r.headers["vary"] == "Accept-Encoding"
    config = config_of(r)
    assert config["site"] == site
    assert config["endpoint"] == "http://testserver/collect"
    assert config["version"] == 0  # nothing published: the default container
    assert config["policy"] == collector.containers.draft(site).policy
    assert config["settings"]["tag_path"] == f"/t/{site}.js"
    assert config["settings"]["auto"]["page_views"] is True
    assert set(config["consent"]) == {"purposes", "lifetime_days", "rejection_lifetime_days"}
    assert [p["id"] for p in config["consent"]["purposes"]][0] == "necessary"
    assert config["tags"] == [] and config["triggers"][0]["id"] == "all_pages"
    assets = config["assets"]
    assert assets["banner"].startswith("http://testserver/t/banner.js?v=")
    assert assets["debug"].startswith("http://testserver/t/debug.js?v=")
    assert assets["banner_css"] is None
    assert assets["texts"].startswith(f"http://testserver/t/{site}/consent.json?v=")
    assert b"__TAGWERK_CONFIG__" not in r.content
    assert b"Reject all" not in r.content  # texts are fetched by the banner


def test_live_version_not_draft_is_served(env, site):
    client, collector, _ = env
    c = collector.containers
    doc = full()
    c.put_draft(site, doc, ORIGINS)
    config = config_of(client.get(f"/t/{site}.js"))
    assert (config["version"], len(config["tags"])) == (0, len(doc["tags"]))  # the draft
    c.publish(site, origins=ORIGINS)
    c.put_draft(site, {**doc, "tags": []}, ORIGINS)
    config = config_of(client.get(f"/t/{site}.js"))
    assert config["version"] == 1 and len(config["tags"]) == len(doc["tags"])
    ads = config["tags"][0]
    assert ads["url"] == "https://ads.example/p?o={{order_id}}&c={{campaign}}"
    assert ads["blocking_triggers"] == [] and config["tags"][1]["blocking_triggers"] == []
    c.publish(site)
    assert config_of(client.get(f"/t/{site}.js"))["tags"] == []
    c.rollback(site, 1)
    config = config_of(client.get(f"/t/{site}.js"))
    assert config["version"] == 1 and len(config["tags"]) == len(doc["tags"])


def test_escaping(env, site):
    client, collector, _ = env
    nasty = "</script><script>alert(1)</script><!-- \u2028\u2029 \"' \\"
    doc = full()
    doc["variables"][6]["value"] = nasty
    doc["tags"][2]["html"] = "<div>" + nasty + "</div>"
    collector.containers.put_draft(site, doc, ORIGINS)
    r = client.get(f"/t/{site}.js")
    assert b"</script" not in r.content.lower() and b"<!--" not in r.content
    assert "\u2028".encode() not in r.content and "\u2029".encode() not in r.content
    config = config_of(r)
    assert config["variables"][6]["value"] == nasty
    assert config["tags"][2]["html"] == "<div>" + nasty + "</div>"
    assert orjson.loads(js_json({"a": nasty})) == {"a": nasty}


def test_etag_and_304(env, site):
    client, _, _ = env
    r = client.get(f"/t/{site}.js", headers={"Accept-Encoding": "identity"})
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    again = client.get(f"/t/{site}.js", headers={"Accept-Encoding": "identity"})
    assert again.headers["etag"] == etag and again.content == r.content
    for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = client.get(f"/t/{site}.js", headers={"If-None-Match": sent})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["cache-control"].startswith("public")
        assert cached.headers["vary"] == "Accept-Encoding"
    assert client.get(f"/t/{site}.js", headers={"If-None-Match": '"nope"'}).status_code == 200
    # A gzip answer is another representation: another strong ETag, and it validates too.
    zipped = client.get(f"/t/{site}.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["etag"] != etag
    assert client.get(f"/t/{site}.js", headers={
        "Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]}).status_code == 304
    # A changed container is a new body with a new ETag.
    _, collector, _ = env
    collector.containers.publish(site)
    changed = client.get(f"/t/{site}.js", headers={"If-None-Match": etag,
                                                   "Accept-Encoding": "identity"})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


@pytest.mark.parametrize(("accept", "coding"), [
    ("gzip, deflate, br, zstd", "br"),
    ("gzip", "gzip"),
    ("br;q=0, gzip;q=0.5", "gzip"),
    ("identity", None),
    ("", None),
    ("*", "br"),
    ("*, br;q=0", "gzip"),
    ("gzip;q=0", None),
])
def test_compression(env, site, accept, coding):
    client, _, _ = env
    plain = client.get(f"/t/{site}.js", headers={"Accept-Encoding": "identity"}).content
    with client.stream("GET", f"/t/{site}.js", headers={"Accept-Encoding": accept}) as r:
        raw = b"".join(r.iter_raw())
    assert r.headers.get("content-encoding") == coding
    assert int(r.headers["content-length"]) == len(raw)
    if coding == "br":
        assert brotli.decompress(raw) == plain and len(raw) < len(plain)
    elif coding == "gzip":
        assert gzip.decompress(raw) == plain
    else:
        assert raw == plain


def test_head(env, site):
    client, _, _ = env
    r = client.head(f"/t/{site}.js")
    assert r.status_code == 200 and r.content == b"" and r.headers["etag"]


def test_custom_tag_path(env, site):
    client, collector, _ = env
    doc = full()
    doc["settings"]["tag_path"] = "/assets/{site}/app.js"
    collector.containers.put_draft(site, doc, ORIGINS)
    collector.containers.publish(site, origins=ORIGINS)
    custom = client.get(f"/assets/{site}/app.js")
    config = config_of(custom)
    assert config["settings"]["tag_path"] == f"/assets/{site}/app.js"
    assert config_of(client.get(f"/t/{site}.js")) == config  # the default path stays
    assert client.head(f"/assets/{site}/app.js").status_code == 200
    assert client.get(f"/assets/{site}/other.js").status_code == 404
    assert client.post(f"/assets/{site}/app.js").status_code == 404
    # Moved back to the default: the custom path is gone at once in this process.
    collector.containers.put_draft(site, full(), ORIGINS)
    collector.containers.publish(site, origins=ORIGINS)
    assert client.get(f"/assets/{site}/app.js").status_code == 404


def test_unknown_sites(env):
    client, _, _ = env
    for path in ("/t/no-such-site.js", "/t/Bad%20Site.js", "/t/a.b.js"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["cache-control"] == "no-store"


def test_static_files(env):
    client, _, dist = env
    r = client.get("/t/banner.js")
    assert r.status_code == 200 and r.text == "/* banner */"
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/t/banner.js", headers={"If-None-Match": r.headers["etag"]}
                      ).status_code == 304
    assert client.get("/t/debug.js").text == "/* debug */"
    assert client.get("/t/banner.css").status_code == 404
    (dist / "banner.css").write_text(".tw{}")
    try:
        r = client.get("/t/banner.css", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and r.text == ".tw{}"
        assert r.headers["content-type"] == "text/css; charset=utf-8"
        assert r.headers["content-encoding"] == "gzip"
    finally:
        (dist / "banner.css").unlink()
    (dist / "debug.css").write_text(".dbg{}")
    try:
        assert client.get("/t/debug.css").text == ".dbg{}"
    finally:
        (dist / "debug.css").unlink()
    assert client.get("/t/other.css").status_code == 404


def test_bundle_missing_or_broken(env, site):
    client, _, dist = env
    tag = dist / "tag.js"
    try:
        tag.unlink()
        r = client.get(f"/t/{site}.js")
        assert r.status_code == 503 and "not built" in r.json()["error"]
        tag.write_bytes(BUNDLE.replace(b"__TAGWERK_CONFIG__", b"x"))
        assert client.get(f"/t/{site}.js").status_code == 503
        tag.write_bytes(BUNDLE + BUNDLE)
        assert client.get(f"/t/{site}.js").status_code == 503
    finally:
        tag.write_bytes(BUNDLE)
    assert client.get(f"/t/{site}.js").status_code == 200


def test_a_rebuilt_bundle_is_served(env, site):
    client, _, dist = env
    first = client.get(f"/t/{site}.js")
    try:
        (dist / "tag.js").write_bytes(b"/*v2*/" + BUNDLE)
        second = client.get(f"/t/{site}.js")
        assert second.content.startswith(b"/*v2*/")
        assert second.headers["etag"] != first.headers["etag"]
    finally:
        (dist / "tag.js").write_bytes(BUNDLE)


def test_public_origin_behind_a_trusted_proxy(env, site, monkeypatch):
    client, collector, _ = env
    monkeypatch.setattr(collector.settings, "networks", parse_networks("10.0.0.0/8"))
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "collect.shop.example"}
    proxied = TestClient(client.app, client=("10.1.2.3", 5000))
    config = config_of(proxied.get(f"/t/{site}.js", headers=headers))
    assert config["endpoint"] == "https://collect.shop.example/collect"
    assert config["assets"]["banner"].startswith("https://collect.shop.example/t/banner.js?v=")
    stranger = TestClient(client.app, client=("192.0.2.1", 5000))
    config = config_of(stranger.get(f"/t/{site}.js", headers=headers))
    assert config["endpoint"] == "http://testserver/collect"
    config = config_of(stranger.get(f"/t/{site}.js", headers={"Host": "bad host!"}))
    assert config["endpoint"] == "/collect"


def test_absolute_endpoint_is_kept(env, site):
    client, collector, _ = env
    doc = full()
    doc["settings"]["endpoint"] = "https://collect.shop.example/c"
    collector.containers.put_draft(site, doc, ORIGINS)
    assert config_of(client.get(f"/t/{site}.js"))["endpoint"] == "https://collect.shop.example/c"


def test_demo_site_has_a_published_container(env):
    client, collector, _ = env
    assert collector.containers.live_version("demo") >= 1
    config = config_of(client.get("/t/demo.js"))
    assert config["site"] == "demo" and config["version"] >= 1
