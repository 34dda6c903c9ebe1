"""The container API under /api/v1/sites/{site}/container, with the site's admin key."""

from __future__ import annotations

import re
import threading
import uuid

import orjson
import pytest

from collector.containers import ContainerError, Containers, default_container, parse_if_match
from tests.helpers import make_client, served
from tests.test_containers import ORIGINS, full

BASE = "/api/v1/sites/api-shop/container"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("container-api"),
                                    demo_site=False)
    with client:
        _, keys = collector.sites.create("api-shop", ["https://shop.example",
                                                      "https://*.cdn.shop.example"])
        _, other = collector.sites.create("api-other")
        yield client, collector, keys, other


def call(client, method, path, key=None, body=None, **headers):
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        body = orjson.dumps(body)
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    return client.request(method, path, content=body, headers=headers)


def stored(collector, site="api-shop"):
    c = collector.containers
    return c.draft(site).document, c.versions(site), c.releases(site)


def test_happy_path(env):
    client, collector, keys, other = env
    admin = keys["admin"]
    r = call(client, "GET", "/api/v1/sites/api-other/container", other["admin"])
    assert r.status_code == 200 and r.json() == default_container()
    assert r.headers["cache-control"] == "no-store"

    doc = full()
    r = call(client, "PUT", BASE, admin, doc)
    assert r.status_code == 200, r.text
    assert r.json()["site"] == "api-shop" and len(r.json()["policy"]) == 16
    assert call(client, "GET", BASE, admin).json() == doc

    r = call(client, "POST", BASE + "/publish", admin, {"note": "launch"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["live"] == first["version"] and first["note"] == "launch"

    doc["tags"].pop(0)
    assert call(client, "PUT", BASE, admin, doc).status_code == 200
    r = call(client, "POST", BASE + "/publish", admin)  # no body: no note
    second = r.json()
    assert r.status_code == 200 and second["version"] == first["version"] + 1
    assert second["policy"] != first["policy"]

    r = call(client, "POST", BASE + "/rollback", admin, {"version": first["version"]})
    assert r.status_code == 200 and r.json()["live"] == first["version"]

    listed = call(client, "GET", BASE + "/versions", admin).json()
    assert listed["live"] == first["version"]
    assert [(v["version"], v["live"]) for v in listed["versions"]][-2:] == [
        (first["version"], True), (second["version"], False)]
    assert [r["action"] for r in listed["releases"]][-3:] == ["publish", "publish", "rollback"]

    one = call(client, "GET", f"{BASE}/versions/{first['version']}", admin).json()
    assert one["document"] == full() and one["live"] is True and one["note"] == "launch"


def test_validation_errors_name_the_fields(env):
    client, collector, keys, _ = env
    before = stored(collector)
    doc = full()
    doc["tags"][2]["purpose"] = "ads"
    doc["triggers"][0]["type"] = "pageview"
    r = call(client, "PUT", BASE, keys["admin"], doc)
    assert r.status_code == 400
    body = r.json()
    assert body["field"] == "triggers[0].type"
    assert body["error"].startswith("triggers[0].type: must be one of page_view, history_change")
    assert [e["field"] for e in body["errors"]] == ["triggers[0].type", "tags[2].purpose"]
    assert body["errors"][1]["error"].startswith("tags[2].purpose: unknown purpose 'ads'")
    assert stored(collector) == before


def test_the_site_origins_decide_what_is_necessary(env):
    client, _, keys, _ = env
    doc = full()  # its necessary tag loads from https://static.cdn.shop.example
    assert call(client, "PUT", BASE, keys["admin"], doc).status_code == 200
    r = call(client, "PUT", "/api/v1/sites/api-other/container", env[3]["admin"], doc)
    assert r.status_code == 400 and r.json()["field"] == "tags[3].purpose"


BIG = orjson.dumps({"consent": {"x": "y" * (256 * 1024)}})

BAD = [
    # (method, path, key, body, headers, status, message, field)
    ("GET", BASE, None, None, {}, 401, "admin key", None),
    ("PUT", BASE, None, full(), {}, 401, "admin key", None),
    ("GET", BASE, "tw_admin_wrong", None, {}, 403, "may not do this", "Authorization"),
    ("PUT", BASE, "write", full(), {}, 403, "may not do this", "Authorization"),
    ("PUT", BASE, "read", full(), {}, 403, "may not do this", "Authorization"),
    ("POST", BASE + "/publish", "write", None, {}, 403, "may not do this", "Authorization"),
    ("POST", BASE + "/publish", "other", None, {}, 403, "may not do this", "Authorization"),
    ("POST", BASE + "/rollback", "read", {"version": 1}, {}, 403, "may not do this",
     "Authorization"),
    ("GET", BASE + "/versions", "write", None, {}, 403, "may not do this", "Authorization"),
    ("GET", BASE + "/versions/1", "read", None, {}, 403, "may not do this", "Authorization"),
    ("GET", BASE, "basic", None, {}, 401, "admin key", None),
    ("GET", "/api/v1/sites/nope/container", "admin", None, {}, 404, "unknown site", "site"),
    ("PUT", "/api/v1/sites/nope/container", "admin", full(), {}, 404, "unknown site", "site"),
    ("POST", "/api/v1/sites/Bad%20Id/container/publish", "admin", None, {}, 404,
     "unknown site", "site"),
    ("PUT", BASE, "admin", b'{"consent": ', {}, 400, "malformed JSON", None),
    ("PUT", BASE, "admin", b'{"consent": "\xc3\x28"}', {}, 400, "UTF-8", None),
    ("PUT", BASE, "admin", b"", {}, 400, "empty body", None),
    ("PUT", BASE, "admin", [], {}, 400, "must be an object, not a list", None),
    ("PUT", BASE, "admin", {"consent": 1}, {}, 400, "consent: must be an object", "consent"),
    ("PUT", BASE, "admin", BIG, {}, 413, "larger than 262144", None),
    ("PUT", BASE, "admin", full(), {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "application/json", None),
    ("PUT", BASE, "admin", full(), {"Content-Encoding": "gzip"}, 415, "compressed", None),
    ("DELETE", BASE, "admin", None, {}, 405, "Method Not Allowed", None),
    ("POST", BASE + "/publish", "admin", b"{", {}, 400, "malformed JSON", None),
    ("POST", BASE + "/publish", "admin", [], {}, 400, "expected a JSON object", None),
    ("POST", BASE + "/publish", "admin", {"note": 5}, {}, 400, "'note' must be a string", "note"),
    ("POST", BASE + "/publish", "admin", {"note": "x" * 1001}, {}, 400, "note", "note"),
    ("POST", BASE + "/publish", "admin", {"note": "x", "force": True}, {}, 400,
     "unknown field 'force'", "force"),
    ("POST", BASE + "/rollback", "admin", None, {}, 400, "empty body", None),
    ("POST", BASE + "/rollback", "admin", b"\xff", {}, 400, "UTF-8", None),
    ("POST", BASE + "/rollback", "admin", {}, {}, 400, "'version' is required", "version"),
    ("POST", BASE + "/rollback", "admin", {"version": "1"}, {}, 400, "version number",
     "version"),
    ("POST", BASE + "/rollback", "admin", {"version": True}, {}, 400, "version number",
     "version"),
    ("POST", BASE + "/rollback", "admin", {"version": 2**40}, {}, 400, "version number",
     "version"),
    ("POST", BASE + "/rollback", "admin", {"version": 9999}, {}, 404, "has no version 9999",
     "version"),
    ("GET", BASE + "/versions/9999", "admin", None, {}, 404, "has no version 9999", "version"),
    ("GET", BASE + "/versions/0", "admin", None, {}, 404, "has no version 0", "version"),
    ("GET", BASE + "/versions/99999999999999999999", "admin", None, {}, 404, "has no version",
     "version"),
    ("GET", BASE + "/versions/abc", "admin", None, {}, 404, "Not Found", None),
    # If-Match: auth and the site come first; a malformed one is a 400, a stale one a 412.
    ("PUT", BASE, None, full(), {"If-Match": '"x"'}, 401, "admin key", None),
    ("POST", BASE + "/publish", "write", None, {"If-Match": "*"}, 403, "may not do this",
     "Authorization"),
    ("PUT", "/api/v1/sites/nope/container", "admin", full(), {"If-Match": '"x"'}, 404,
     "unknown site", "site"),
    ("PUT", BASE, "admin", full(), {"If-Match": "abc"}, 400, "list of entity-tags",
     "If-Match"),
    ("PUT", BASE, "admin", full(), {"If-Match": '"abc'}, 400, "list of entity-tags",
     "If-Match"),
    ("PUT", BASE, "admin", full(), {"If-Match": '"a" "b"'}, 400, "list of entity-tags",
     "If-Match"),
    ("PUT", BASE, "admin", full(), {"If-Match": '*, "a"'}, 400, "list of entity-tags",
     "If-Match"),
    ("PUT", BASE, "admin", full(), {"If-Match": "w/\"a\""}, 400, "list of entity-tags",
     "If-Match"),
    ("PUT", BASE, "admin", full(), {"If-Match": " , "}, 400, "If-Match is empty", "If-Match"),
    ("POST", BASE + "/publish", "admin", None, {"If-Match": "12"}, 400, "list of entity-tags",
     "If-Match"),
    ("PUT", BASE, "admin", full(), {"If-Match": '"stale"'}, 412, "the draft has changed",
     "If-Match"),
    ("PUT", BASE, "admin", b"{", {"If-Match": '"stale"'}, 400, "malformed JSON", None),
    # The document is validated first: its errors are worth fixing either way.
    ("PUT", BASE, "admin", {"consent": 1}, {"If-Match": '"stale"'}, 400, "consent: must be",
     "consent"),
    ("PUT", BASE, "admin", {"consent": 1}, {"If-Match": "*"}, 400, "consent: must be",
     "consent"),
    ("POST", BASE + "/publish", "admin", None, {"If-Match": '"stale", W/"stale"'}, 412,
     "the draft has changed", "If-Match"),
    ("POST", BASE + "/publish", "admin", {"note": 5}, {"If-Match": '"stale"'}, 400,
     "'note' must be a string", "note"),
]


@pytest.mark.parametrize(("method", "path", "key", "body", "headers", "status", "message",
                          "field"), BAD)
def test_bad_requests(env, method, path, key, body, headers, status, message, field):
    client, collector, keys, other = env
    secret = {"admin": keys["admin"], "write": keys["write"], "read": keys["read"],
              "other": other["admin"]}.get(key, key)
    if key == "basic":
        headers = {"Authorization": "Basic " + keys["admin"]}
        secret = None
    before = stored(collector)
    r = call(client, method, path, secret, body, **headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert r.json().get("field") == field
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    if status == 412:  # names the current draft, which is what a GET answers
        current = call(client, "GET", path.removesuffix("/publish"), secret).headers["etag"]
        assert r.headers["etag"] == r.json()["etag"] == current
        assert current in r.json()["error"]
    assert stored(collector) == before
    # The process keeps serving.
    assert call(client, "GET", BASE, keys["admin"]).status_code == 200
    assert client.get("/healthz").status_code == 200


# -- a container's own tag path and the routes ---------------------------------------------


@pytest.mark.parametrize(("tag_path", "route"), [
    ("/t/shop/tm.js", "GET, HEAD /t/{site}/tm.js"),
    ("/demo/x.js", "GET, HEAD /demo/{path:path}"),
    ("/t/x.css", "GET, HEAD /t/{name}.css"),
    ("/t/preview", "GET, HEAD /t/preview"),
    ("/demo", "GET, HEAD /demo"),
    ("/collect", "OPTIONS, POST /collect"),
    ("/api/v1/sites/api-shop/persons/x.js",
     "GET, HEAD /api/v1/sites/{site}/persons/{ident:identifier}"),
])
def test_a_tag_path_a_route_answers_is_refused(env, tag_path, route):
    client, collector, keys, _ = env
    before = stored(collector)
    doc = full()
    doc["settings"]["tag_path"] = tag_path
    r = call(client, "PUT", BASE, keys["admin"], doc)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "settings.tag_path"
    assert r.json()["error"] == (f"settings.tag_path: {tag_path!r} is reserved: the "
                                 f"collector's route {route} answers it")
    assert stored(collector) == before


def test_a_draft_whose_tag_path_a_route_answers_is_not_published(fresh, store):
    """A draft saved without the route table (as before the check existed) stays a draft."""
    client, collector, admin, url, site = fresh
    doc = full()
    doc["settings"]["tag_path"] = "/demo/{site}.js"
    Containers(store).put_draft(site, doc, ORIGINS)
    before = stored(collector, site)
    r = call(client, "POST", url + "/publish", admin)
    assert r.status_code == 400 and r.json()["field"] == "settings.tag_path"
    assert f"'/demo/{site}.js' for this site" in r.json()["error"]
    assert "route GET, HEAD /demo/{path:path} answers it" in r.json()["error"]
    assert stored(collector, site) == before and before[1] == []


def test_a_custom_tag_path_is_served(fresh):
    client, _, admin, url, site = fresh
    doc = full()
    doc["settings"]["tag_path"] = "/assets/shop-tag.js"
    assert call(client, "PUT", url, admin, doc).status_code == 200
    assert call(client, "POST", url + "/publish", admin).status_code == 200
    custom, default = client.get("/assets/shop-tag.js"), client.get(f"/t/{site}.js")
    assert custom.status_code == default.status_code == 200
    assert custom.headers["content-type"] == "text/javascript; charset=utf-8"
    assert custom.content == default.content and f'"{site}"'.encode() in custom.content
    # Back to the default path, which frees the custom one for other sites.
    assert call(client, "PUT", url, admin, full()).status_code == 200
    assert call(client, "POST", url + "/publish", admin).status_code == 200
    assert client.get("/assets/shop-tag.js").status_code == 404


# -- optimistic concurrency: ETag and If-Match ------------------------------------------------


@pytest.fixture
def fresh(env):
    """A new site of its own: (client, collector, admin key, its container URL)."""
    client, collector, _, _ = env
    site = "api-etag-" + uuid.uuid4().hex[:10]
    _, keys = collector.sites.create(site, list(ORIGINS))
    return client, collector, keys["admin"], f"/api/v1/sites/{site}/container", site


STRONG = re.compile(r'^"[0-9a-f]{32}"$')


def test_etag_identifies_the_draft(fresh):
    client, collector, admin, url, site = fresh
    first = call(client, "GET", url, admin)
    etag = first.headers["etag"]  # the default container has one too
    assert first.status_code == 200 and STRONG.match(etag)
    assert call(client, "GET", url, admin).headers["etag"] == etag  # stable while unchanged

    r = call(client, "PUT", url, admin, full(), **{"If-Match": etag})
    assert r.status_code == 200, r.text
    new = r.headers["etag"]
    assert STRONG.match(new) and new != etag and r.json()["etag"] == new
    assert call(client, "GET", url, admin).headers["etag"] == new

    # The same document saved again is a new draft: someone may have edited in between.
    r = call(client, "PUT", url, admin, full(), **{"If-Match": new})
    assert r.status_code == 200 and r.headers["etag"] != new
    # Without If-Match the last writer still wins (backwards compatible).
    assert call(client, "PUT", url, admin, full()).status_code == 200
    assert collector.containers.draft(site).etag == call(client, "GET", url, admin).headers["etag"]


def test_stale_if_match_changes_nothing(fresh):
    client, collector, admin, url, site = fresh
    seen = call(client, "GET", url, admin).headers["etag"]
    edited = full()
    current = call(client, "PUT", url, admin, edited, **{"If-Match": seen}).headers["etag"]

    # A second editor who read the draft before that edit: refused, the edit stays.
    before = stored(collector, site)
    r = call(client, "PUT", url, admin, default_container(), **{"If-Match": seen})
    assert r.status_code == 412, r.text
    assert r.json() == {"error": r.json()["error"], "field": "If-Match", "etag": current}
    assert current in r.json()["error"] and r.headers["etag"] == current
    assert r.headers["cache-control"] == "no-store"
    assert stored(collector, site) == before and before[0] == edited

    # Publishing a draft one has not seen: refused, no version, no release.
    r = call(client, "POST", url + "/publish", admin, {"note": "x"}, **{"If-Match": seen})
    assert r.status_code == 412 and r.json()["etag"] == current
    assert stored(collector, site) == before and before[1] == [] and before[2] == []
    # A weak tag never matches, even the current one's.
    r = call(client, "POST", url + "/publish", admin, **{"If-Match": "W/" + current})
    assert r.status_code == 412 and stored(collector, site) == before

    # The reviewed draft: published; publishing does not change the draft or its ETag.
    r = call(client, "POST", url + "/publish", admin, {"note": "ok"}, **{"If-Match": current})
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    assert collector.containers.version(site, 1).document == edited
    assert call(client, "GET", url, admin).headers["etag"] == current


def test_if_match_star_and_lists(fresh):
    client, collector, admin, url, site = fresh
    r = call(client, "PUT", url, admin, full(), **{"If-Match": "*"})  # a draft always exists
    assert r.status_code == 200, r.text
    current = r.headers["etag"]
    # Any one of a list matches; repeated fields are one list; empty elements are allowed.
    r = call(client, "PUT", url, admin, full(), **{"If-Match": f'"nope", ,{current}'})
    assert r.status_code == 200, r.text
    current = r.headers["etag"]
    r = client.request("PUT", url, content=orjson.dumps(full()), headers=[
        ("Authorization", f"Bearer {admin}"), ("If-Match", '"nope"'), ("If-Match", current)])
    assert r.status_code == 200, r.text
    assert call(client, "POST", url + "/publish", admin, **{"If-Match": "*"}).status_code == 200
    assert [v.version for v in collector.containers.versions(site)] == [1]


def test_concurrent_conditional_puts_one_wins(store, tmp_path):
    """Real HTTP, concurrent requests with the same If-Match: exactly one is saved."""
    site = "api-race-" + uuid.uuid4().hex[:10]
    url = f"/api/v1/sites/{site}/container"
    with served(store, tmp_path, demo_site=False) as (client, collector):
        _, keys = collector.sites.create(site, list(ORIGINS))
        headers = {"Authorization": f"Bearer {keys['admin']}"}
        etag = client.get(url, headers=headers).headers["etag"]
        results: list[tuple[int, str]] = []
        barrier = threading.Barrier(6)

        def edit(n: int) -> None:
            doc = full()
            doc["tags"] = doc["tags"][:n % 3 + 1]
            barrier.wait()
            r = client.put(url, content=orjson.dumps(doc),
                           headers={**headers, "If-Match": etag})
            results.append((r.status_code, r.headers["etag"]))

        threads = [threading.Thread(target=edit, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(code for code, _ in results)
        assert codes == [200] + [412] * 5, results
        winner = next(tag for code, tag in results if code == 200)
        # Every refusal named the winner's draft, which is the one stored.
        assert {tag for code, tag in results if code == 412} == {winner}
        assert collector.containers.draft(site).etag == winner


@pytest.mark.parametrize(("value", "expected"), [
    ("*", None),
    (' "a" ', {'"a"'}),
    ('"a,b", W/"c",,"d"', {'"a,b"', '"d"'}),  # a comma inside a tag; weak tags dropped
    ('W/"c"', set()),  # only weak: nothing can match
    ('""', {'""'}),
])
def test_parse_if_match(value, expected):
    assert parse_if_match(value) == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize("value", ["", " ", ",", "a", '"a', '"a""b"', '"a" x', "**", '*,"a"',
                                   '"a b"', 'W/ "a"', '"\x7f"'])
def test_parse_if_match_refuses(value):
    with pytest.raises(ValueError, match="If-Match"):
        parse_if_match(value)


# -- attacks: a huge version number, control characters in a rollback note ---------------------


@pytest.fixture(scope="module")
def real(store, tmp_path_factory):
    """Real HTTP: a site with version 1 published; (client, collector, admin key, its URL)."""
    site = "api-attack-" + uuid.uuid4().hex[:10]
    with served(store, tmp_path_factory.mktemp("container-attack"), demo_site=False) as (
            client, collector):
        _, keys = collector.sites.create(site, list(ORIGINS))
        collector.containers.publish(site, "first", ORIGINS)
        yield client, collector, keys["admin"], f"/api/v1/sites/{site}/container"


NINES = "9" * 5000  # int() refuses more than 4300 digits


@pytest.mark.parametrize("number", [NINES, "9" * 11, "0" * 5000 + "1" + "0" * 10, "4294967296"],
                         ids=["5000 nines", "11 digits", "zeros and 11 digits", "2**32"])
@pytest.mark.parametrize("slash", ["", "/"])
@pytest.mark.parametrize("where", ["site", "unknown site", "no key"])
def test_a_huge_version_number_is_a_404(real, number, slash, where):
    """Any number of digits answers JSON 404 as an out-of-range version does, never a 500."""
    client, _, admin, url = real
    if where == "unknown site":
        url = "/api/v1/sites/nope-" + uuid.uuid4().hex[:8] + "/container"
    key = None if where == "no key" else admin
    r = call(client, "GET", f"{url}/versions/{number}{slash}", key)
    if r.status_code == 307:  # the trailing slash: sent to the path without it
        assert r.headers["location"] == f"{url}/versions/{number}"
        r = call(client, "GET", r.headers["location"], key)
    assert r.status_code == {"site": 404, "unknown site": 404, "no key": 401}[where], r.text
    body = r.json()
    if where == "site":
        assert "has no version" in body["error"] and body["field"] == "version"
        assert len(body["error"]) < 200  # the digits are not echoed in full
    # The process keeps serving.
    assert call(client, "GET", f"{url}/versions/1", admin).status_code in (200, 404)
    assert client.get("/healthz").status_code == 200


def test_a_version_with_leading_zeros_is_that_version(real):
    client, _, admin, url = real
    r = call(client, "GET", f"{url}/versions/{'0' * 20}1", admin)
    assert r.status_code == 200 and r.json()["version"] == 1


@pytest.mark.parametrize("note", ["\u001b]0;x\u0007\r\nfake", "a\nb", "\x00", "x\x7f",
                                  "x" * 1001, 5],
                         ids=["terminal escape", "newline", "NUL", "DEL", "too long", "number"])
def test_a_rollback_note_is_checked_as_a_publish_note(real, note):
    client, collector, admin, url = real
    site = url.split("/")[4]
    before = stored(collector, site)
    r = call(client, "POST", url + "/rollback", admin, {"version": 1, "note": note})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "note" and "note" in r.json()["error"]
    publish = call(client, "POST", url + "/publish", admin, {"note": note})
    assert publish.status_code == 400 and publish.json()["field"] == "note"
    assert stored(collector, site) == before
    with pytest.raises(ContainerError, match="note"):
        collector.containers.rollback(site, 1, note)
    assert stored(collector, site) == before


def test_a_rollback_note_is_kept(real):
    client, collector, admin, url = real
    site = url.split("/")[4]
    r = call(client, "POST", url + "/rollback", admin, {"version": 1, "note": "undo: ok ü"})
    assert r.status_code == 200, r.text
    assert collector.containers.releases(site)[-1]["note"] == "undo: ok ü"
