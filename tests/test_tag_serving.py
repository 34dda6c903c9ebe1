"""Serving the tag: /t/{site}.js with the live container inlined, the static files beside it."""

from __future__ import annotations

import gzip
import json
import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import orjson
import pytest
from starlette.testclient import TestClient

from collector.containers import normalize
from collector.tag import serving
from collector.tag.serving import core_bundle, core_config, engine_config, js_json
from collector.web.clientip import parse_networks
from tests.helpers import make_client, served
from tests.test_containers import ORIGINS, full

HEAD, TAIL = b"/*tw*/(function(){var config = ", b";window.__tw = config;})();\n"
BUNDLE = HEAD + b'"__TAGWERK_CONFIG__"' + TAIL
ENGINE = b"/*engine*/" + BUNDLE
FIXTURE = json.loads((Path(__file__).resolve().parent.parent / "js_snippet" / "test"
                      / "compact.json").read_text())


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    (dist / "tag.js").write_bytes(BUNDLE)
    (dist / "tag.basic.js").write_bytes(BUNDLE)
    (dist / "decide.js").write_text("/* decide */")
    (dist / "engine.js").write_bytes(ENGINE)
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


def config_of(response, head: bytes = HEAD) -> dict:
    assert response.status_code == 200, response.text
    body = response.content
    assert body.startswith(head) and body.endswith(TAIL)
    return orjson.loads(body[len(head):-len(TAIL)])


def engine_of(response) -> dict:
    return config_of(response, b"/*engine*/" + HEAD)


def test_config_is_inlined(env, site):
    client, collector, _ = env
    r = client.get(f"/t/{site}.js")
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=300, stale-while-revalidate=86400"
    assert r.headers["vary"] == "Accept-Encoding"
    config = config_of(r)
    # The default container (nothing published) is all defaults and has no tags: the
    # compact config is the site, the policy hash and the assets' version, nothing else.
    policy = collector.containers.draft(site).policy
    assert config == {"s": site, "p": policy, "v": config["v"]}
    assert re.fullmatch(r"[0-9a-f]{12}", config["v"])
    assert b"__TAGWERK_CONFIG__" not in r.content
    assert b"Reject all" not in r.content  # texts are fetched by the banner
    engine = client.get(f"/t/{site}/tm.js")
    assert engine.headers["content-type"] == "text/javascript; charset=utf-8"
    assert engine.headers["cache-control"] == r.headers["cache-control"]
    assert engine_of(engine) == {"v": [{"id": "page_path", "type": "url", "part": "path"}],
                                 "r": [{"id": "all_pages", "type": "page_view"}], "g": []}


def test_compact_configs_match_the_tag_tests():
    """The same container gives the same configs as js_snippet/test/fake.mjs `compact`."""
    doc = normalize(FIXTURE["document"])
    assert core_bundle(doc) == FIXTURE["bundle"]
    assert core_config(FIXTURE["site"], doc, FIXTURE["policy"], "v1") == FIXTURE["core"]
    assert engine_config(doc) == FIXTURE["engine"]


def test_compact_config_keeps_what_differs_from_the_defaults():
    doc = normalize(FIXTURE["document"])
    doc["settings"].update(endpoint="https://c.example/c", cookie_domain=".shop.example",
                           session_timeout_minutes=10, download_extensions=["PDF", "epub"],
                           scroll_thresholds=[10, 50])
    doc["settings"]["auto"].update(clicks=True, spa=False)
    doc["consent"].update(lifetime_days=90, rejection_lifetime_days=30)
    doc["consent"]["purposes"][1]["default"] = True
    doc["triggers"].append({"id": "deep", "type": "scroll_depth", "percent": 95,
                            "conditions": []})
    doc["triggers"] = [t for t in doc["triggers"] if t["type"] not in ("timer",
                                                                       "element_visible")]
    assert core_config("demo", doc, "p" * 16, "v1") == {
        "s": "demo", "p": "p" * 16, "v": "v1", "e": "https://c.example/c",
        "d": ".shop.example", "m": 10, "a": "pcodxfe", "x": "pdf epub", "t": [10, 50],
        "k": [95], "P": "necessary!,analytics+,personalization,marketing",
            "g": "necessary,analytics", "l": 90, "r": 30,
        "n": "analytics,marketing,personalization"}
    doc["settings"]["auto"] = {k: False for k in doc["settings"]["auto"]}
    doc["settings"]["download_extensions"] = []
    doc["tags"] = []
    config = core_config("demo", doc, "p" * 16, "v1")
    assert (config["a"], config["x"]) == ("-", "-") and "n" not in config and "k" not in config


def test_live_version_not_draft_is_served(env, site):
    client, collector, _ = env
    c = collector.containers
    doc = full()
    c.put_draft(site, doc, ORIGINS)
    tags = lambda: engine_of(client.get(f"/t/{site}/tm.js"))["g"]  # noqa: E731
    draft = config_of(client.get(f"/t/{site}.js"))
    assert len(tags()) == len(doc["tags"]) and draft["n"]  # the draft
    c.publish(site, origins=ORIGINS)
    c.put_draft(site, {**doc, "tags": []}, ORIGINS)
    assert config_of(client.get(f"/t/{site}.js")) == draft  # version 1, the same document
    assert len(tags()) == len(doc["tags"])
    ads = tags()[0]
    assert ads["url"] == "https://ads.example/p?o={{order_id}}&c={{campaign}}"
    assert "blocking_triggers" not in ads and "name" not in ads  # empty / unused: left out
    c.publish(site)
    assert tags() == [] and "n" not in config_of(client.get(f"/t/{site}.js"))
    c.rollback(site, 1)
    assert len(tags()) == len(doc["tags"])


def test_the_core_build_follows_the_container(env, site):
    """tag.basic.js unless the container has click events on, or tags with triggers that
    need the core's signals (collector/tag/serving.py core_bundle)."""
    client, collector, dist = env
    c = collector.containers
    (dist / "tag.basic.js").write_bytes(b"/*basic*/" + BUNDLE)
    try:
        assert client.get(f"/t/{site}.js").content.startswith(b"/*basic*/")  # the default
        doc = full()  # tags on a custom event, a click...
        c.put_draft(site, doc, ORIGINS)
        c.publish(site, origins=ORIGINS)
        config_of(client.get(f"/t/{site}.js"))  # tag.js
        assert core_bundle(normalize({**doc, "tags": []})) == "tag.basic.js"
        page_views = {**doc, "triggers": [{"id": "all", "type": "page_view"}],
                      "tags": [{**doc["tags"][0], "triggers": ["all"], "blocking_triggers": []}]}
        assert core_bundle(normalize(page_views)) == "tag.basic.js"
        clicks = normalize(page_views)
        clicks["settings"]["auto"]["clicks"] = True
        assert core_bundle(clicks) == "tag.js"
    finally:
        (dist / "tag.basic.js").write_bytes(BUNDLE)


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
    config_of(r)
    engine = client.get(f"/t/{site}/tm.js")
    assert b"</script" not in engine.content.lower() and b"<!--" not in engine.content
    assert "\u2028".encode() not in engine.content
    config = engine_of(engine)
    assert config["v"][6]["value"] == nasty
    assert config["g"][2]["html"] == "<div>" + nasty + "</div>"
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
    collector.containers.put_draft(site, full(), ORIGINS)
    collector.containers.publish(site, origins=ORIGINS)
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
    assert config["s"] == site
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
    assert client.get("/t/decide.js").text == "/* decide */"
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
    tag = dist / "tag.basic.js"  # the default container's build
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
        (dist / "tag.basic.js").write_bytes(b"/*v2*/" + BUNDLE)  # the default's build
        second = client.get(f"/t/{site}.js")
        assert second.content.startswith(b"/*v2*/")
        assert second.headers["etag"] != first.headers["etag"]
    finally:
        (dist / "tag.basic.js").write_bytes(BUNDLE)


def test_public_origin_behind_a_trusted_proxy(env, site, monkeypatch):
    client, collector, _ = env
    monkeypatch.setattr(collector.settings, "networks", parse_networks("10.0.0.0/8"))
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "collect.shop.example"}
    # The tag resolves the endpoint and its files against the URL it was loaded from, so
    # the served config holds no origin: the same whoever asks and through whatever proxy.
    proxied = TestClient(client.app, client=("10.1.2.3", 5000))
    config = config_of(proxied.get(f"/t/{site}.js", headers=headers))
    assert "e" not in config and b"http" not in orjson.dumps(config)
    stranger = TestClient(client.app, client=("192.0.2.1", 5000))
    assert config_of(stranger.get(f"/t/{site}.js", headers=headers)) == config
    assert config_of(stranger.get(f"/t/{site}.js", headers={"Host": "bad host!"})) == config


def test_absolute_endpoint_is_kept(env, site):
    client, collector, _ = env
    doc = full()
    doc["settings"]["endpoint"] = "https://collect.shop.example/c"
    collector.containers.put_draft(site, doc, ORIGINS)
    assert config_of(client.get(f"/t/{site}.js"))["e"] == "https://collect.shop.example/c"


def test_demo_site_has_a_published_container(env):
    client, collector, _ = env
    assert collector.containers.live_version("demo") >= 1
    config = config_of(client.get("/t/demo.js"))
    assert config["s"] == "demo" and config["n"] == "marketing"  # the partner tag
    assert [t["id"] for t in engine_of(client.get("/t/demo/tm.js"))["g"]] == ["partner"]


def test_engine_route(env, site):
    client, _, dist = env
    assert client.get("/t/no-such-site/tm.js").status_code == 404
    r = client.get(f"/t/{site}/tm.js", headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.headers["etag"]
    assert client.get(f"/t/{site}/tm.js", headers={
        "Accept-Encoding": "gzip", "If-None-Match": r.headers["etag"]}).status_code == 304
    before = config_of(client.get(f"/t/{site}.js"))["v"]
    try:
        (dist / "engine.js").write_bytes(b"/*v2*/" + ENGINE)
        # a rebuilt engine is a new version of every asset URL the core builds
        assert config_of(client.get(f"/t/{site}.js"))["v"] != before
        (dist / "engine.js").unlink()
        assert client.get(f"/t/{site}/tm.js").status_code == 503
    finally:
        (dist / "engine.js").write_bytes(ENGINE)


def test_a_burst_of_first_requests_builds_each_answer_once(store, tmp_path, monkeypatch):
    """Right after a publish, every visitor misses the cache at once: one build (and its
    compression, seconds for a large container) serves them all, where each used to build
    its own and a burst of 60 took 20-29 s each (probe 41)."""
    dist = tmp_path / "dist"
    dist.mkdir()
    for name, body in (("tag.js", BUNDLE), ("tag.basic.js", BUNDLE), ("engine.js", ENGINE)):
        (dist / name).write_bytes(body)
    built: Counter[bytes] = Counter()
    real = serving.Asset.build.__func__

    def slow_build(cls, body, media, *args):
        built[body] += 1
        time.sleep(0.3)  # a large container's compression: the burst overlaps it
        return real(cls, body, media, *args)

    monkeypatch.setattr(serving.Asset, "build", classmethod(slow_build))
    with served(store, tmp_path / "data", tag_dir=dist) as (client, collector):
        site_id = "burst-" + uuid.uuid4().hex[:8]
        collector.sites.create(site_id, list(ORIGINS))
        collector.containers.put_draft(site_id, full(), ORIGINS)
        collector.containers.publish(site_id, origins=ORIGINS)
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: client.get(f"/t/{site_id}.js"), range(24)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert built[answers[0].content] == 1
