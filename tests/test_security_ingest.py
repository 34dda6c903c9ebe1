"""Hostile input on the collector's port, sent as an attacker would (issue 9, points 8-10).

Against real uvicorn with the collector's own protocol (``tests.helpers.served``), so both
ways a request can go are hit: ``POST /collect`` with a ``Content-Length`` body and
``GET /p.gif`` take the fast path (``collector/ingest/fasthttp.py``); a chunked ``/collect`` body,
``HEAD /p.gif``, ``/api/v1/batch``, ``/consent``, ``/t/...`` and the container API take the
ASGI one. Headers that an HTTP client library would refuse to send go over a raw socket.

Each refusal is checked for its status and the field it names, for nothing stored (row
counts before and after, once the spool is flushed), for an answer whose headers are all
printable ASCII, and for a collector that still answers afterwards.
"""

from __future__ import annotations

import random
import re
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import orjson
import pytest

from collector.containers import MAX_DOCUMENT_BYTES
from collector.ingest.adapters import BATCH_MAX_BYTES, COLLECT_MAX_BYTES, CONSENT_MAX_BYTES
from collector.ingest.events import MAX_PROP_DEPTH
from collector.web.http import header_safe, header_url, json_field, nesting
from consent.cookie import consent_set_cookie, device_clear_cookie, device_set_cookie
from consent.enforce import CLICK_IDS, strip_url
from tests.helpers import CHROME, drained, served, wait_for

ORIGIN = "https://shop.example"
SITE = "sec-test"
STAR = "sec-star"  # origins ["*"]: any Origin would be allowed, and echoed
POLICY = "3c1d0e7a9b2f4c11"
DEPTHS = (200, 254, 255, 1000, 100000)
# What would end or bend a header line, or is no text at all in one.
CONTROL = {
    "CR": "\r", "LF": "\n", "CRLF": "\r\n", "NUL": "\x00", "tab": "\t", "DEL": "\x7f",
    "NEL": "\x85", "LS": "\u2028", "PS": "\u2029", "NBSP": "\xa0", "ZWSP": "\u200b",
    "space": " ", "injection": "\r\nSet-Cookie: evil=1\r\nX-Injected: 1",
}


@dataclass
class Env:
    client: httpx.Client
    collector: object
    keys: dict
    star_keys: dict
    host: str
    port: int


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    with served(store, tmp_path_factory.mktemp("security")) as (client, collector):
        _, keys = collector.sites.create(SITE, [ORIGIN, "https://*.shop.example"])
        _, star_keys = collector.sites.create(STAR, ["*"])
        url = urlsplit(str(client.base_url))
        try:
            yield Env(client, collector, keys, star_keys, url.hostname, url.port)
        finally:
            # Sites are in the session's shared store: a site allowing any origin would
            # let every other test's preflight through.
            collector.sites.set_origins(STAR, ["https://sec-star.example"])


# -- helpers ----------------------------------------------------------------------------------


def deep(n: int, leaf: bytes = b'"x"', opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    """A JSON value nested ``n`` levels deep."""
    return opener * n + leaf + closer * n


def deep_object(n: int) -> bytes:
    return b'{"a":' * n + b'"x"' + b"}" * n


def events(env: Env, site: str = SITE) -> int:
    wait_for(lambda: drained(env.collector))
    return env.collector.store.rows("SELECT count() AS n FROM tagwerk.events "
                                    "WHERE site_id = {s:String}", {"s": site})[0]["n"]


def decisions(env: Env, site: str = SITE) -> int:
    wait_for(lambda: drained(env.collector))
    return env.collector.store.rows("SELECT count() AS n FROM tagwerk.consent_log "
                                    "WHERE site_id = {s:String}", {"s": site})[0]["n"]


def stored(env: Env, marker: str, site: str = SITE) -> list[dict]:
    wait_for(lambda: drained(env.collector))
    return env.collector.store.rows(
        "SELECT * FROM tagwerk.events WHERE site_id = {s:String} AND props['marker'] = {m:String}",
        {"s": site, "m": marker})


def alive(env: Env) -> None:
    """The collector still answers, on both paths."""
    assert env.client.get(f"/p.gif?site={SITE}&event=alive").status_code == 200
    assert env.client.head(f"/p.gif?site={SITE}&event=alive").status_code == 200
    assert env.client.get("/healthz").status_code == 200


def headers_clean(response) -> None:
    """Every header of the answer is printable ASCII (nothing injected, nothing broken)."""
    for name, value in response.headers.raw if hasattr(response.headers, "raw") else response:
        assert header_safe(value.decode("latin-1")), (name, value)
    assert "x-injected" not in {k.lower() for k in response.headers}
    assert "evil" not in response.headers.get("set-cookie", "")


def collect(env: Env, body: bytes, way: str, **headers):
    """``way``: "fast" (Content-Length: the fast path) or "asgi" (a chunked body, which the
    fast path leaves to the ASGI app)."""
    headers = {"Content-Type": "text/plain", **headers}
    if way == "fast":
        return env.client.post("/collect", content=body, headers=headers)
    return env.client.post("/collect", content=iter([body[: len(body) // 2],
                                                     body[len(body) // 2:]]), headers=headers)


def batch(env: Env, body: bytes):
    return env.client.post("/api/v1/batch", content=body, headers={
        "Authorization": f"Bearer {env.keys['write']}", "Content-Type": "application/json"})


def consent(env: Env, body: bytes, **headers):
    env.client.cookies.clear()
    return env.client.post("/consent", content=body,
                           headers={"Content-Type": "text/plain", **headers})


def event_body(field: bytes, value: bytes, site: str = SITE) -> bytes:
    return b'{"site":"' + site.encode() + b'","event":"e","' + field + b'":' + value + b"}"


def refused_or_too_large(response, body: bytes, limit: int, field_part: str | None) -> None:
    """A body past the endpoint's size limit (100,000 levels of ``{"a":`` are 600 KB) is
    refused for its size before it is parsed: a 413."""
    if len(body) > limit:
        refused(response, None, 413)
    else:
        refused(response, field_part)


def refused(response, field_part: str | None, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    data = response.json()
    assert isinstance(data["error"], str) and data["error"]
    if field_part is not None:
        assert field_part in data.get("field", ""), data
    headers_clean(response)
    return data


@dataclass
class Raw:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return orjson.loads(self.body)


def raw(env: Env, method: str, target: str, headers: list[tuple[bytes, bytes]],
        body: bytes = b"", chunked: bool = False) -> Raw:
    """One request over a plain socket (for header bytes no client library sends), read to
    the end (Connection: close). ``chunked``: the body in one chunk (the ASGI path)."""
    lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: {env.host}:{env.port}".encode(),
             b"Connection: close", b"User-Agent: " + CHROME.encode()]
    lines += [name + b": " + value for name, value in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    elif body or method in ("POST", "PUT"):
        lines.append(b"Content-Length: %d" % len(body))
    with socket.create_connection((env.host, env.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    parsed = []
    for line in header_lines:
        name, _, value = line.partition(b":")
        parsed.append((name.strip().lower(), value.strip()))
    for name, value in parsed:  # the answer itself is well-formed: nothing injected
        assert header_safe(value.decode("latin-1")), (name, value)
        assert name != b"x-injected", parsed
    return Raw(int(status_line.split()[1]), parsed, rest)


# -- 8. deep and otherwise unserialisable JSON ------------------------------------------------


# (name, body of one /collect event at depth n, the field named when the event is refused)
DEEP_EVENTS = [
    ("props list", lambda n: event_body(b"props", b'{"a":' + deep(n) + b"}"), "props.a"),
    ("props object", lambda n: event_body(b"props", b'{"a":' + deep_object(n) + b"}"),
     "props.a"),
    ("item field", lambda n: event_body(b"items", b'[{"name":' + deep(n) + b"}]"),
     "items[0]"),
    ("items", lambda n: event_body(b"items", deep(n, b"{}")), "items"),
    ("ecommerce item", lambda n: event_body(
        b"ecommerce", b'{"items":[{"item_name":' + deep(n) + b"}]}"), "ecommerce.items[0]"),
    ("ecommerce ignored key", lambda n: event_body(b"ecommerce", b'{"shipping":' + deep(n) +
                                                    b"}"), "ecommerce.shipping"),
    ("consent", lambda n: event_body(b"consent", deep(n, b'"analytics"')), "consent"),
    ("url", lambda n: event_body(b"url", deep_object(n)), "url"),
]


@pytest.mark.parametrize("way", ["fast", "asgi"])
@pytest.mark.parametrize("n", DEPTHS)
@pytest.mark.parametrize(("name", "make", "field"), DEEP_EVENTS, ids=[e[0] for e in DEEP_EVENTS])
def test_deep_json_in_collect_is_a_400_naming_the_field(env, way, n, name, make, field):
    before = events(env)
    body = make(n)
    response = collect(env, body, way, Origin=ORIGIN)
    refused_or_too_large(response, body, COLLECT_MAX_BYTES, field)
    assert response.headers["access-control-allow-origin"] == ORIGIN  # readable by the page
    assert events(env) == before
    alive(env)


@pytest.mark.parametrize("way", ["fast", "asgi"])
@pytest.mark.parametrize("n", DEPTHS)
def test_deep_json_in_a_collect_batch_names_the_event(env, way, n):
    before = events(env)
    body = (b'{"site":"' + SITE.encode() + b'","events":[{"event":"ok"},{"event":"e","props":'
            b'{"a":' + deep(n) + b"}}]}")
    data = refused(collect(env, body, way), "events[1].props.a")
    assert "events[1]" in data["error"]
    assert events(env) == before
    alive(env)


@pytest.mark.parametrize("way", ["fast", "asgi"])
@pytest.mark.parametrize("n", DEPTHS)
def test_deep_json_at_the_top_level_is_a_400(env, way, n):
    before = events(env)
    refused(collect(env, deep(n), way), None)  # not an object
    body = deep_object(n)  # an object without a site
    refused_or_too_large(collect(env, body, way), body, COLLECT_MAX_BYTES, "site")
    body = b'{"site":"' + SITE.encode() + b'","a":' + deep_object(n) + b"}"
    refused_or_too_large(collect(env, body, way), body, COLLECT_MAX_BYTES, "a")  # unknown
    body = b'{"site":"' + SITE.encode() + b'","events":' + deep(n, b"{}") + b"}"
    refused(collect(env, body, way), "event")
    assert events(env) == before
    alive(env)


@pytest.mark.parametrize("n", DEPTHS)
@pytest.mark.parametrize(("name", "make", "field"), DEEP_EVENTS, ids=[e[0] for e in DEEP_EVENTS])
def test_deep_json_in_the_batch_api_is_a_400_naming_the_field(env, n, name, make, field):
    before = events(env)
    event = make(n).replace(b'"site":"' + SITE.encode() + b'",', b"")
    body = b'{"events":[{"event":"ok"},' + event + b"]}"
    refused_or_too_large(batch(env, body), body, BATCH_MAX_BYTES, f"events[1].{field}")
    refused(batch(env, deep(n)), None)  # a bare list is the events: refused as they are
    assert events(env) == before
    assert batch(env, b'{"events":[{"event":"after"}]}').status_code == 202
    alive(env)


CONSENT_DEEP = [("granted", lambda n: deep(n, b'"analytics"')), ("url", deep_object),
                ("how", deep), ("site", deep)]


@pytest.mark.parametrize("n", DEPTHS)
@pytest.mark.parametrize(("field", "make"), CONSENT_DEEP, ids=[c[0] for c in CONSENT_DEEP])
def test_deep_json_in_a_consent_decision_is_a_400(env, n, field, make):
    before = decisions(env)
    body = {"site": SITE, "consent_id": uuid.uuid4().hex, "granted": ["necessary"],
            "denied": ["marketing"], "policy": POLICY, "how": "banner", field: "@@"}
    data = orjson.dumps(body).replace(b'"@@"', make(n))
    refused_or_too_large(consent(env, data, Origin=ORIGIN), data, CONSENT_MAX_BYTES, field)
    assert decisions(env) == before
    alive(env)


@pytest.mark.parametrize("n", DEPTHS)
def test_deep_json_in_the_container_api_is_a_400(env, n):
    auth = {"Authorization": f"Bearer {env.keys['admin']}"}
    before = env.client.get(f"/api/v1/sites/{SITE}/container", headers=auth)
    assert before.status_code == 200
    for path, method, body in [
        ("", "PUT", b'{"consent":{"purposes":' + deep(n, b"{}") + b"}}"),
        ("", "PUT", b'{"settings":{"auto":' + deep_object(n) + b'},"consent":{}}'),
        ("", "PUT", deep(n)),
        ("/publish", "POST", b'{"note":' + deep(n) + b"}"),
        ("/rollback", "POST", b'{"version":' + deep(n, b"1") + b"}"),
        ("/preview", "POST", b'{"url":' + deep(n) + b"}"),
    ]:
        response = env.client.request(method, f"/api/v1/sites/{SITE}/container{path}",
                                       content=body, headers=auth)
        assert response.status_code == (413 if len(body) > MAX_DOCUMENT_BYTES else 400), (
            path, n, response.text)
        assert response.json()["error"]
        headers_clean(response)
    after = env.client.get(f"/api/v1/sites/{SITE}/container", headers=auth)
    assert after.headers["etag"] == before.headers["etag"]  # nothing was written
    alive(env)


def test_nesting_within_the_limits_is_stored(env):
    """The limits are on depth, not on lists and objects as such."""
    marker = uuid.uuid4().hex
    within = orjson.loads(deep(MAX_PROP_DEPTH - 2, b'{"k":[1,2]}'))  # MAX_PROP_DEPTH levels
    body = orjson.dumps({"site": SITE, "event": "e", "props": {"marker": marker, "v": within},
                         "ecommerce": {"items": [{"item_id": "a", "promotion": {"x": [1]}}]}})
    assert collect(env, body, "fast").status_code == 202
    [row] = wait_for(lambda: stored(env, marker))
    assert orjson.loads(row["props"]["v"]) == within
    over = {"site": SITE, "event": "e", "props": {"v": [within]}}
    refused(collect(env, orjson.dumps(over), "fast"), "event.props.v")


# Bodies that are not JSON a field could take; each is a 400 (or taken, where JSON allows it).
NASTY = [
    ("lone high surrogate", event_body(b"event", b'"\\ud800"'), 400),
    ("lone low surrogate in props", event_body(b"props", b'{"a":"x\\udc00"}'), 400),
    ("surrogate in a props key", event_body(b"props", b'{"\\ud83d":"x"}'), 400),
    ("surrogate as a field name", b'{"site":"sec-test","event":"e","\\udfff":1}', 400),
    ("surrogate in UTF-8 bytes", event_body(b"title", b'"\xed\xa0\x80"'), 400),
    ("invalid UTF-8", event_body(b"title", b'"\xc3\x28"'), 400),
    ("BOM", b"\xef\xbb\xbf" + event_body(b"title", b'"t"'), 400),
    ("NaN", event_body(b"revenue", b"NaN"), 400),
    ("Infinity", event_body(b"revenue", b"Infinity"), 400),
    ("-Infinity", event_body(b"revenue", b"-Infinity"), 400),
    ("1e999", event_body(b"revenue", b"1e999"), 400),
    ("u64 max as revenue", event_body(b"revenue", b"18446744073709551615"), 400),
    ("2**64 as revenue", event_body(b"revenue", b"18446744073709551616"), 400),
    ("-2**63-1 as ts", event_body(b"ts", b"-9223372036854775809"), 400),
    ("u64 max as ts", event_body(b"ts", b"18446744073709551615"), 400),
    ("2**64 as user_id", event_body(b"user_id", b"18446744073709551616"), 400),
    ("huge integer as quantity",
     event_body(b"items", b'[{"product_id":"a","quantity":18446744073709551615}]'), 400),
    ("2**200 as quantity", event_body(b"items", b'[{"quantity":' + str(2**200).encode() +
                                      b"}]"), 400),
    ("huge GA4 quantity", event_body(b"ecommerce", b'{"items":[{"quantity":1e308}]}'), 400),
    ("huge GA4 transaction id", event_body(b"ecommerce", b'{"transaction_id":' +
                                           b"9" * 200 + b"}"), 400),
    ("5000-digit revenue string", event_body(b"revenue", b'"' + b"9" * 5000 + b'"'), 400),
    ("revenue exponent", event_body(b"revenue", b'"1e99999999999999999999"'), 400),
    # Past Decimal's context (exponent 999,999) but within its syntax: abs() overflowed (500).
    ("revenue exponent past Decimal's", event_body(b"revenue", b'"1e1000000"'), 400),
    ("GA4 value exponent", event_body(b"ecommerce", b'{"value":"-1E+1000000"}'), 400),
    ("item price exponent", event_body(b"items", b'[{"product_id":"a","price":"1e1000000"}]'),
     400),
    # Within range as sent, rounded to 4 decimals past it: stored, ClickHouse refused the
    # flush of every hit behind it (an attacker's probe).
    ("revenue rounded out of range", event_body(b"revenue", b'"99999999999999.99995"'), 400),
    ("negative revenue rounded out of range",
     event_body(b"revenue", b'"-99999999999999.99995"'), 400),
    ("item price rounded out of range",
     event_body(b"items", b'[{"product_id":"a","price":"99999999999999.99999"}]'), 400),
    ("GA4 value rounded out of range",
     event_body(b"ecommerce", b'{"value":"99999999999999.99995"}'), 400),
    ("string top level", b'"sec-test"', 400),
    ("number top level", b"1", 400),
    ("null top level", b"null", 400),
    ("true top level", b"true", 400),
    ("empty list top level", b"[]", 400),
    ("empty body", b"", 400),
    ("truncated", b'{"site":"sec-test","event":', 400),
    ("trailing garbage", event_body(b"title", b'"t"') + b"}", 400),
    ("two documents", event_body(b"title", b'"t"') * 2, 400),
    ("comment", b'{"site":"sec-test",/*x*/"event":"e"}', 400),
    ("single quotes", b"{'site':'sec-test','event':'e'}", 400),
    ("purpose with a newline", event_body(b"consent", b'["analytics\\n"]'), 400),
    ("currency with a newline", event_body(b"currency", b'"EUR\\n"'), 400),
    # Control characters in names and in what the read API looks up products by (which
    # refuses them): stored, nobody could ask for them (an attacker's probe). Identifiers
    # keep them (tests/test_security_data_out.py: odd identifiers round-trip).
    ("event with control characters", b'{"site":"sec-test","event":"a\\nb\\u0007"}', 400),
    ("product_id with a tab", event_body(b"items", b'[{"product_id":"a\\tb"}]'), 400),
    ("category with a newline", event_body(b"items", b'[{"product_id":"a","category":"c\\n"}]'),
     400),
    ("props value beyond 64 bits", event_body(b"props", b'{"n":18446744073709551616}'), 202),
    ("duplicate keys: the last counts", b'{"site":"nope","site":"sec-test","event":"x",'
                                        b'"event":"dup"}', 202),
    ("duplicate site: the last is unknown", b'{"site":"sec-test","site":"nope","event":"e"}',
     404),
]


@pytest.mark.parametrize("way", ["fast", "asgi"])
@pytest.mark.parametrize(("name", "body", "status"), NASTY, ids=[n[0] for n in NASTY])
def test_unserialisable_json_is_a_4xx_never_a_5xx(env, way, name, body, status):
    before = events(env)
    response = collect(env, body, way)
    assert response.status_code == status, response.text
    headers_clean(response)
    if status >= 400:
        assert response.json()["error"]
        assert events(env) == before
    alive(env)


@pytest.mark.parametrize(("name", "body", "status"), NASTY, ids=[n[0] for n in NASTY])
def test_unserialisable_json_in_the_batch_api(env, name, body, status):
    if body.startswith(b"{"):  # the event inside {"events": [...]}, without its site
        body = b'{"events":[' + body.replace(b'"site":"sec-test",', b"") + b"]}"
    before = events(env)
    response = batch(env, body)
    assert response.status_code < 500, response.text
    headers_clean(response)
    if response.status_code >= 400:
        assert response.json()["error"]
        assert events(env) == before
    assert batch(env, b'{"events":[{"event":"after"}]}').status_code == 202


CONSENT_NASTY = [
    b'{"site":"sec-test","consent_id":"\\ud800","granted":[],"denied":[],"policy":"'
    + POLICY.encode() + b'","how":"banner"}',
    b'{"site":"sec-test","consent_id":"' + b"a" * 32 + b'","granted":["necessary"],'
    b'"denied":[],"policy":"' + POLICY.encode() + b'","how":"banner","url":NaN}',
    b'{"site":"sec-test","consent_id":' + b"1" * 40 + b"}",
    b'[{"site":"sec-test"}]',
    b'"x"',
    b"\xef\xbb\xbf{}",
    b'{"site":"sec-test","consent_id":"' + b"a" * 32 + b'","granted":["necessary"],'
    b'"denied":[],"policy":"' + POLICY.encode() + b'","how":"banner","url":"https://x\\udfff"}',
]


@pytest.mark.parametrize("body", CONSENT_NASTY)
def test_unserialisable_json_in_a_consent_decision(env, body):
    before = decisions(env)
    response = consent(env, body, Origin=ORIGIN)
    assert 400 <= response.status_code < 500, response.text
    headers_clean(response)
    assert decisions(env) == before
    alive(env)


PIXEL_NASTY = [
    "ts=%C2%B2",  # a Unicode digit: isdigit() says yes, int() says no
    "ts=" + "9" * 5000,  # beyond Python's int() digit limit
    "ts=" + "9" * 17,
    "ts=-1",
    "items=" + quote(deep(1000).decode()),
    "items=" + "[" * 2000,
    "items=" + quote('[{"name":' + deep(300).decode() + "}]"),
    "items=%5B%7B%22quantity%22%3A18446744073709551616%7D%5D",
    "props.a=%ED%A0%80",  # a surrogate, UTF-8 encoded
    "title=%C3%28",
    "revenue=NaN",
    "revenue=1e999",
    "revenue=1e1000000",
    "props=zzz&props.x=1",  # the plain one was dropped without a word
    "items=" + quote('[{"product_id":"a","price":"1e1000000"}]'),
    "event_id=%00",
    "consent=analytics%0A",
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])  # the fast path, the ASGI path
@pytest.mark.parametrize("query", PIXEL_NASTY)
def test_hostile_pixels_are_a_400(env, method, query):
    before = events(env)
    response = env.client.request(method, f"/p.gif?site={SITE}&event=e&{query}")
    assert response.status_code == 400, response.text
    headers_clean(response)
    assert events(env) == before
    alive(env)


def test_json_unit_helpers():
    assert nesting({"a": [1, {"b": 2}]}, 3) == (None, False, 3)
    assert nesting({"a": [1, {"b": {"c": []}}]}, 3) == (["a", 1, "b"], False, 4)
    assert nesting([[], {"a": []}, []], 3, most=2) == ([1, "a"], True, 3)
    assert json_field(["events", 3, "props", "a", 0, 0]) == "events[3].props.a"
    assert json_field([0, 0, 0, 0]) == ""
    assert json_field(["a\ud800"]) == "a\\ud800"  # never text orjson cannot write


# -- 9. control characters in anything that reaches a response header --------------------------


def mint(env: Env, url: str = f"{ORIGIN}/shoes") -> str:
    """A preview token of the site (through the container API)."""
    response = env.client.post(f"/api/v1/sites/{SITE}/container/preview",
                               content=orjson.dumps({"url": url}),
                               headers={"Authorization": f"Bearer {env.keys['admin']}"})
    assert response.status_code == 201, response.text
    return parse_qs(urlsplit(response.json()["link"]).query)["token"][0]


@pytest.mark.parametrize(("name", "char"), CONTROL.items(), ids=list(CONTROL))
@pytest.mark.parametrize("where", ["path", "query", "fragment", "host"])
def test_control_characters_in_the_preview_target_are_a_400(env, name, char, where):
    token = mint(env)
    target = {"path": f"{ORIGIN}/a{char}b", "query": f"{ORIGIN}/a?x={char}",
              "fragment": f"{ORIGIN}/a#{char}", "host": f"https://shop{char}.example/"}[where]
    # %-encoded in the link, as any client sends it: the server decodes it to the raw text.
    answer = raw(env, "GET", f"/t/preview?token={token}&to={quote(target, safe='')}", [])
    assert answer.status == 400, answer
    assert answer.json()["field"] == "to"
    assert not answer.header(b"location") and not answer.header(b"set-cookie")
    # The same through httpx (which encodes it itself).
    response = env.client.get("/t/preview", params={"token": token, "to": target},
                              follow_redirects=False)
    assert response.status_code == 400
    headers_clean(response)
    # Minting a link to such a page is refused too, naming the field.
    minted = env.client.post(f"/api/v1/sites/{SITE}/container/preview",
                             content=orjson.dumps({"url": target}),
                             headers={"Authorization": f"Bearer {env.keys['admin']}"})
    assert minted.status_code == 400 and minted.json()["field"] == "url"
    alive(env)


@pytest.mark.parametrize("to", [
    "https://shop.example/a\r\nLocation: https://evil.example/",  # header injection
    "\r\nhttps://shop.example/",  # urllib strips a leading CR/LF
    "https://shop.example/\x00",
    " https://shop.example/",
    "https://shop.example/\t",
    "https://shop.example/\u2028",
    "https://shop.example/\x85",
])
def test_raw_control_bytes_in_the_preview_query(env, to):
    """Raw (not %-encoded) bytes in the request line: the HTTP parser refuses the request
    itself, or the collector does; either way a 400 (a 505 where a raw CR or LF left a
    request line without its version, as HTTP/0.9), and no Location."""
    token = mint(env)
    target = f"/t/preview?token={token}&to=" + quote(to, safe=":/?#\r\n\t\x00 \x85\u2028")
    try:
        answer = raw(env, "GET", target.encode("utf-8", "surrogateescape").decode("latin-1"),
                     [])
    except (ConnectionError, IndexError):
        answer = None  # the parser closed the connection: no answer to break
    if answer is not None and answer.status == 303:
        # A raw CR or LF ends the request line there: the rest is no part of 'to'.
        [location] = answer.header(b"location")
        assert location.startswith(b"https://shop.example/") and b"evil" not in location
    elif answer is not None:
        assert answer.status in (400, 505)
        assert not answer.header(b"location")
    alive(env)


def test_an_encoded_crlf_stays_encoded(env):
    """%250d%250a decodes once, to the text %0d%0a: a valid URL, sent on as it is."""
    token = mint(env)
    response = env.client.get(f"/t/preview?token={token}&to={ORIGIN}/a%250d%250aX:%2520y",
                              follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"{ORIGIN}/a%0d%0aX:%20y?tagwerk_debug=1"
    headers_clean(response)


def test_a_non_ascii_preview_target_is_percent_encoded(env):
    token = mint(env)
    response = env.client.get("/t/preview", params={"token": token, "to": f"{ORIGIN}/größe"},
                              follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"{ORIGIN}/gr%C3%B6%C3%9Fe?tagwerk_debug=1"


@pytest.mark.parametrize(("path", "location"), [
    ("/healthz/", "/healthz"),
    (f"/api/v1/sites/{SITE}/products/top/?window=24h",
     f"/api/v1/sites/{SITE}/products/top?window=24h"),
    (f"/api/v1/sites/{SITE}/products/a%2Fb/related/",  # an id's "/" stays encoded
     f"/api/v1/sites/{SITE}/products/a%2Fb/related"),
    ("/t/preview/?end=1", "/t/preview?end=1"),
])
def test_a_trailing_slash_redirect_never_names_the_requests_host(env, path, location):
    """A path a route matches with its trailing slash toggled is redirected, relative to the
    host the client asked: a Location built from ``Host`` would let one request store a
    redirect to any host in a shared cache for everyone (web cache poisoning)."""
    response = env.client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == location
    headers_clean(response)


@pytest.mark.parametrize("path", ["//evil.example/healthz/", "/\\evil.example/healthz/",
                                  "//evil.example/healthz"])
def test_no_redirect_to_another_host_from_the_path(env, path):
    """A path that starts like a host ("//host") is no route's, toggled or not: a 404,
    never a Location a browser would read as another host."""
    answer = raw(env, "GET", path, [])
    assert answer.status == 404 and not answer.header(b"location")
    alive(env)


@pytest.mark.parametrize("token", ["twp_a\r\nX-Injected: 1", "twp_\x00", "twp_a\tb", "twp_\u2028"])
def test_control_characters_in_the_preview_token_are_a_400(env, token):
    response = env.client.get("/t/preview", params={"token": token, "to": f"{ORIGIN}/"},
                              follow_redirects=False)
    assert response.status_code == 400 and response.json()["field"] == "token"
    headers_clean(response)


# Bytes an HTTP parser lets through in a header value (CR, LF, NUL and other C0 controls are
# refused by the parser itself, before the collector sees the request: tested below).
PASSING_BYTES = {"tab": b"\t", "NEL": b"\x85", "NBSP": b"\xa0", "latin-1": b"\xff",
                 "UTF-8 LS": "\u2028".encode()}
PARSER_REFUSES = {"CR": b"\r", "LF": b"\n", "NUL": b"\x00", "DEL": b"\x7f", "SOH": b"\x01",
                  "ESC": b"\x1b"}


def collect_raw(env: Env, origin: bytes, chunked: bool = False) -> Raw:
    body = orjson.dumps({"site": STAR, "event": "e", "consent": ["analytics"]})
    return raw(env, "POST", "/collect", [(b"Content-Type", b"text/plain"), (b"Origin", origin)],
               body, chunked)


@pytest.mark.parametrize("chunked", [False, True], ids=["fast", "asgi"])
@pytest.mark.parametrize(("name", "byte"), PASSING_BYTES.items(), ids=list(PASSING_BYTES))
def test_an_origin_that_cannot_be_echoed_is_a_400(env, chunked, name, byte):
    """A site that allows any origin echoes the request's Origin: not this one."""
    before = events(env, STAR)
    origins = [b"https://shop" + byte + b".example"]
    if byte != b"\t":  # a tab before or after is whitespace around the value, not in it
        origins += [b"https://a.example" + byte, byte + b"https://a.example"]
    for origin in origins:
        answer = collect_raw(env, origin, chunked)
        assert answer.status == 400, answer
        assert answer.json()["field"] == "Origin"
        assert not answer.header(b"access-control-allow-origin")
        assert not answer.header(b"set-cookie")
    assert events(env, STAR) == before
    # The preflight and /consent alike.
    answer = raw(env, "OPTIONS", "/collect", [(b"Origin", b"https://a" + byte + b".example"),
                                              (b"Access-Control-Request-Method", b"POST")])
    assert answer.status == 400 and not answer.header(b"access-control-allow-origin")
    decision = orjson.dumps({"site": STAR, "consent_id": uuid.uuid4().hex,
                             "granted": ["necessary"], "denied": [], "policy": POLICY,
                             "how": "banner"})
    answer = raw(env, "POST", "/consent", [(b"Content-Type", b"text/plain"),
                                           (b"Origin", b"https://a" + byte)], decision)
    assert answer.status == 400 and answer.json()["field"] == "Origin"
    assert decisions(env, STAR) == 0
    alive(env)


@pytest.mark.parametrize("chunked", [False, True], ids=["fast", "asgi"])
def test_an_origin_only_a_star_admits_neither_reads_nor_sets_the_collectors_cookies(
        env, chunked):
    """Any page may send a `*` site's hits, but the collector's cookies are trusted only to
    the origins a site names (Site.names_origin): from any page, /consent cleared the
    visitor's tw_id and /collect read it and set it (found by an attacker's probe)."""
    device = "AbCdEfGhIjKlMnOpQrSt-_"
    day = int(time.time() // 86400)
    cookie = f"tw_id={device}.{day - 3}".encode()
    marker = uuid.uuid4().hex
    for consent in (["analytics"], []):  # would renew tw_id; would clear it
        body = orjson.dumps({"site": STAR, "event": "e", "consent": consent,
                             "props": {"marker": marker}})
        answer = raw(env, "POST", "/collect", [(b"Content-Type", b"text/plain"),
                                               (b"Origin", b"https://evil.example"),
                                               (b"Cookie", cookie)], body, chunked)
        assert answer.status == 202, answer
        assert not answer.header(b"set-cookie"), answer
    wait_for(lambda: drained(env.collector))
    stored = env.collector.store.rows(
        "SELECT device_id FROM tagwerk.events WHERE site_id = {s:String} "
        "AND props['marker'] = {m:String}", {"s": STAR, "m": marker})
    assert len(stored) == 2 and all(row["device_id"] != device for row in stored)
    decision = orjson.dumps({"site": STAR, "consent_id": uuid.uuid4().hex,
                             "granted": ["necessary"], "denied": ["analytics"],
                             "policy": POLICY, "how": "banner"})
    answer = raw(env, "POST", "/consent", [(b"Content-Type", b"text/plain"),
                                           (b"Origin", b"https://evil.example"),
                                           (b"Cookie", cookie)], decision, chunked)
    assert answer.status == 202 and not answer.header(b"set-cookie"), answer
    alive(env)


@pytest.mark.parametrize(("name", "byte"), PARSER_REFUSES.items(), ids=list(PARSER_REFUSES))
def test_header_bytes_the_parser_refuses(env, name, byte):
    before = events(env, STAR)
    for header in (b"Origin", b"Cookie", b"X-Forwarded-For", b"User-Agent"):
        try:
            answer = raw(env, "POST", "/collect", [(b"Content-Type", b"text/plain"),
                                                   (header, b"https://a" + byte + b"b")],
                         orjson.dumps({"site": STAR, "event": "e"}))
        except (ConnectionError, IndexError):
            continue  # closed without an answer: nothing to break either
        if byte in (b"\r", b"\n"):  # a header split in two: "b" is a malformed line
            assert answer.status == 400
        else:
            assert answer.status == 400 and b"Invalid HTTP request" in answer.body
    assert events(env, STAR) == before
    alive(env)


def consent_cookie(cid: str, policy: str) -> str:
    return f"v1.{cid}.{policy}.necessary,analytics.{int(time.time()) - 60}.banner"


@pytest.mark.parametrize(("name", "byte"), PASSING_BYTES.items(), ids=list(PASSING_BYTES))
def test_a_reflected_consent_cookie_never_carries_a_control_character(env, name, byte):
    """POST /consent sets the tag's own tw_consent cookie again: only a valid one. One with
    a control character anywhere is no decision (consent/cookie.py): the decision itself is
    logged, and no cookie is set from it."""
    cid = uuid.uuid4().hex
    policy = env.collector.containers.live(SITE).policy
    value = consent_cookie(cid, policy).encode()
    decision = orjson.dumps({"site": SITE, "consent_id": cid, "granted":
                             ["necessary", "analytics"], "denied": [], "policy": policy,
                             "how": "banner"})
    for cookie in (value + byte, byte + value, value[:20] + byte + value[20:],
                   b'"' + value + byte + b'"', value + b";" + byte + b"Domain=evil.example"):
        answer = raw(env, "POST", "/consent", [(b"Content-Type", b"text/plain"),
                                               (b"Origin", ORIGIN.encode()),
                                               (b"Cookie", b"tw_consent=" + cookie)], decision)
        assert answer.status == 202, answer
        for set_cookie in answer.header(b"set-cookie"):
            assert b"evil" not in set_cookie and byte not in set_cookie
    # A valid one is set again: the check above is not vacuous.
    answer = raw(env, "POST", "/consent", [(b"Content-Type", b"text/plain"),
                                           (b"Origin", ORIGIN.encode()),
                                           (b"Cookie", b"tw_consent=" + value)], decision)
    assert any(v.startswith(b"tw_consent=" + value + b";") for v in answer.header(b"set-cookie"))
    alive(env)


@pytest.mark.parametrize(("name", "byte"), PASSING_BYTES.items(), ids=list(PASSING_BYTES))
@pytest.mark.parametrize("chunked", [False, True], ids=["fast", "asgi"])
def test_a_device_cookie_with_control_characters_is_not_reflected(env, name, byte, chunked):
    body = orjson.dumps({"site": SITE, "event": "e", "consent": ["analytics"]})
    for cookie in (b"tw_id=" + b"A" * 22 + byte, b"tw_id=" + byte + b"A" * 22 + b".20000"):
        answer = raw(env, "POST", "/collect", [(b"Content-Type", b"text/plain"),
                                               (b"Origin", ORIGIN.encode()), (b"Cookie", cookie)],
                     body, chunked)
        assert answer.status == 202
        [set_cookie] = answer.header(b"set-cookie")  # the id without what surrounds it, or new
        assert re.match(rb"tw_id=[A-Za-z0-9_-]{22}\.[0-9]+; Path=/; ", set_cookie), set_cookie
        assert byte not in set_cookie


def test_cookie_values_and_domains_are_checked_where_the_header_is_made():
    """Defence in depth: whatever a caller passes, no Set-Cookie with a control character,
    a ``;`` or a space in its value or Domain is ever made."""
    for bad in ("x\r\nSet-Cookie: a=b", "x;Domain=evil.example", "x\x00", "x y", "x\x85",
                "x\u2028"):
        for make in (lambda v: device_set_cookie(v, 1, True),
                     lambda v: consent_set_cookie(v, 60, True),
                     lambda v: device_set_cookie("A" * 22, 1, True, v),
                     lambda v: device_clear_cookie(False, v)):
            with pytest.raises(ValueError):
                make(bad)
    assert device_set_cookie("A" * 22, 5, True, ".shop.example").endswith("Domain=.shop.example")


@pytest.mark.parametrize("domain", [".shop.example\n", "shop.example\r\nX: y", "a b",
                                    "shop.example;Secure", "shop.example\x85"])
def test_a_container_cookie_domain_with_control_characters_is_refused(env, domain):
    auth = {"Authorization": f"Bearer {env.keys['admin']}"}
    draft = env.client.get(f"/api/v1/sites/{SITE}/container", headers=auth)
    document = draft.json()
    document["settings"]["cookie_domain"] = domain
    response = env.client.put(f"/api/v1/sites/{SITE}/container", content=orjson.dumps(document),
                              headers=auth)
    assert response.status_code == 400
    assert response.json()["field"] == "settings.cookie_domain"
    headers_clean(response)


def test_a_served_cookie_domain_that_cannot_be_sent_is_left_out():
    """webconsent: a live container's cookie_domain goes into Set-Cookie only if it can."""
    from collector.ingest.webconsent import _cookie_domain

    class Live:
        def __init__(self, domain):
            self.document = {"settings": {"cookie_domain": domain}}

    assert _cookie_domain(Live(".shop.example")) == ".shop.example"
    assert _cookie_domain(Live("")) == ""
    for bad in (".shop.example\n", "shop.example\r\nX: y", "a b", "a;b", "\u2028"):
        assert _cookie_domain(Live(bad)) == ""


@pytest.mark.parametrize(("name", "byte"), PASSING_BYTES.items(), ids=list(PASSING_BYTES))
def test_if_match_with_control_characters_is_not_echoed(env, name, byte):
    document = env.client.get(f"/api/v1/sites/{SITE}/container",
                              headers={"Authorization": f"Bearer {env.keys['admin']}"}).content
    answer = raw(env, "PUT", f"/api/v1/sites/{SITE}/container",
                 [(b"Authorization", f"Bearer {env.keys['admin']}".encode()),
                  (b"Content-Type", b"application/json"), (b"If-Match", b'"a' + byte + b'"')],
                 document)
    assert answer.status in (400, 412)
    assert answer.json()["field"] == "If-Match"
    for etag in answer.header(b"etag"):
        assert byte not in etag


def test_header_url_unit():
    assert header_url(f"{ORIGIN}/p?x=1#f") == f"{ORIGIN}/p?x=1#f"
    assert header_url(f"{ORIGIN}/größe") == f"{ORIGIN}/gr%C3%B6%C3%9Fe"
    for char in CONTROL.values():
        assert header_url(f"{ORIGIN}/a{char}") is None
    assert header_url(f"{ORIGIN}/" + "a" * 5000) is None
    for code in [*range(0x21), 0x7F, *range(0x80, 0xA1), 0x2028, 0x2029, 0x200B, 0x202E,
                 0xFEFF, 0x3000]:
        assert header_url(f"{ORIGIN}/{chr(code)}") is None, hex(code)


# -- 10. click ids in every field that can carry a URL ----------------------------------------


PATHS = [  # (path as sent, path as stored without marketing)
    ("/p?gclid=abc", "/p"),
    ("/p?GCLID=abc&x=1", "/p?x=1"),
    ("/p?x=1&gclid=abc", "/p?x=1"),
    ("/p?x=1&GcLiD=abc&y=2", "/p?x=1&y=2"),
    ("/p?fbclid=1&msclkid=2&_gl=1*abc*_ga*MTIz", "/p"),
    ("/p?%67clid=abc&x=1", "/p?x=1"),  # a percent-encoded name is the name, decoded
    ("/p?%47CLID=abc", "/p"),
    ("/p?x=1#gclid=abc", "/p?x=1"),  # the fragment as a parameter list
    ("/p#/cart?fbclid=1&step=2", "/p#/cart?step=2"),  # a query in the fragment
    ("/p?gclid=1#_gl=2&top", "/p#top"),
    ("/p?q=gclid%3D1", "/p?q=gclid%3D1"),  # a value, not a name
    ("/p?gclidx=1", "/p?gclidx=1"),  # another name
]


@pytest.mark.parametrize(("sent", "kept"), PATHS)
def test_click_ids_in_an_explicit_path_of_a_pixel(env, sent, kept):
    marker = uuid.uuid4().hex
    query = f"site={SITE}&event=e&consent=analytics&props.marker={marker}&path={quote(sent)}"
    assert env.client.get(f"/p.gif?{query}").status_code == 200
    [row] = wait_for(lambda: stored(env, marker))
    assert row["path"] == kept
    # With marketing consent it stays as sent.
    marker = uuid.uuid4().hex
    query = (f"site={SITE}&event=e&consent=analytics,marketing&props.marker={marker}"
             f"&path={quote(sent)}")
    assert env.client.get(f"/p.gif?{query}").status_code == 200
    [row] = wait_for(lambda: stored(env, marker))
    assert row["path"] == sent


@pytest.mark.parametrize("way", ["fast", "asgi"])
def test_click_ids_in_every_url_field_of_a_collect_hit(env, way):
    marker = uuid.uuid4().hex
    hit = {"site": SITE, "event": "e", "consent": ["analytics"],
           "url": f"{ORIGIN}/a?%67clid=1&k=v#fbclid=2",
           "path": "/x?fbclid=1&y=2",
           "referrer": "https://www.google.com/?q=shoes#/r?GCLID=9",
           "props": {"marker": marker, "landing": "/landing?gclid=3&z=1",
                     "query": "?wbraid=4", "page_location": f"{ORIGIN}/b?_gl=5",
                     "%67clid": "6", "GCLID": "7", "note": "what? gclid is a word here"}}
    response = collect(env, orjson.dumps(hit), way, Origin=ORIGIN)
    assert response.status_code == 202
    [row] = wait_for(lambda: stored(env, marker))
    assert row["url"] == f"{ORIGIN}/a?k=v"
    assert row["path"] == "/x?y=2"
    assert row["referrer"] == "https://www.google.com/?q=shoes#/r"
    assert row["props"] == {"marker": marker, "landing": "/landing?z=1", "query": "",
                            "page_location": f"{ORIGIN}/b", "note": "what? gclid is a word here"}


def test_click_ids_in_the_batch_api_and_the_consent_log(env):
    marker = uuid.uuid4().hex
    body = orjson.dumps({"events": [{"event": "e", "consent": ["analytics"], "path":
                                     "/p?Gclid=1&a=b", "props": {"marker": marker}}]})
    assert batch(env, body).status_code == 202
    [row] = wait_for(lambda: stored(env, marker))
    assert row["path"] == "/p?a=b"
    cid = uuid.uuid4().hex
    decision = orjson.dumps({"site": SITE, "consent_id": cid, "granted": ["necessary"],
                             "denied": ["marketing"], "policy": POLICY, "how": "banner",
                             "url": f"{ORIGIN}/p?%67clid=1#_gl=2"})
    assert consent(env, decision, Origin=ORIGIN).status_code == 202
    wait_for(lambda: drained(env.collector))
    [logged] = env.collector.store.rows("SELECT url FROM tagwerk.consent_log WHERE "
                                        "consent_id = {c:String}", {"c": cid})
    assert logged["url"] == f"{ORIGIN}/p"


def _segments(text: str) -> list[str]:
    """Every parameter name a reader could find in ``text``: in its query, in its fragment
    as a list, and in a query inside the fragment; decoded, lower-case."""
    from urllib.parse import unquote_plus

    head, _, fragment = text.partition("#")
    lists = [head.partition("?")[2]]
    route, _, query = fragment.partition("?")
    lists += [route, query]
    return [unquote_plus(p.partition("=")[0]).lower() for part in lists for p in part.split("&")]


def test_strip_url_leaves_no_click_id_anywhere():
    rng = random.Random(9)
    names = ["gclid", "GCLID", "%67clid", "g%43lid", "_gl", "fbclid", "x", "a%26b", "utm_source",
             "q", ""]
    for _ in range(5000):
        def params():
            return "&".join(rng.choice(names) + rng.choice(["", "=1", "=gclid", "=%3F"])
                            for _ in range(rng.randint(0, 4)))
        text = (rng.choice(["https://s.example/p", "/p", ""]) + rng.choice(["?", ""]) + params()
                + rng.choice(["#", "#/r?", ""]) + params())
        out = strip_url(text)
        assert not set(_segments(out)) & CLICK_IDS, (text, out)
        assert strip_url(out) == out
        if not set(_segments(text)) & CLICK_IDS:
            assert out == text


def test_respond_never_writes_a_header_with_a_control_character():
    """Defence in depth on the ASGI path: a header value that is not printable ASCII turns
    the answer into a plain 500 without it, instead of a broken or split response."""
    import asyncio

    from collector.web.http import respond

    for bad in ("https://a\r\nX-Injected: 1", "a\nb", "a\x00", "a\tb", "a\x85", "a\u2028"):
        sent = []

        async def send(message, sent=sent):
            sent.append(message)

        asyncio.run(respond(send, 202, b"{}", headers=[("Set-Cookie", "ok=1"),
                                                        ("Access-Control-Allow-Origin", bad)]))
        start, body = sent
        assert start["status"] == 500 and body["body"] == b'{"error":"internal error"}'
        assert [name for name, _ in start["headers"]] == [b"content-type", b"content-length"]


def test_an_error_body_is_always_json():
    from collector.web.http import HTTPError

    body = HTTPError(400, "unknown field '\ud800'", "invalid", "\udfff").body()
    assert orjson.loads(body) == {"error": "unknown field '\\ud800'", "field": "\\udfff"}


# -- connection upgrades, trailers and pipelining (an HTTP-layer probe) --------------------


def exchange(env: Env, *writes: bytes, pause: float = 0.3, wait: float = 3.0) -> list[Raw]:
    """``writes`` sent on one connection, ``pause`` apart; every answer read until the
    server closes the connection or is silent for ``wait`` seconds."""
    data = b""
    with socket.create_connection((env.host, env.port), timeout=wait) as sock:
        for i, chunk in enumerate(writes):
            if i:
                time.sleep(pause)
            sock.sendall(chunk)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    answers = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = [(name.strip().lower(), value.strip())
                   for name, _, value in (line.partition(b":") for line in lines)]
        length = int(dict(headers).get(b"content-length", b"0"))
        answers.append(Raw(int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    return answers


def pixel_request(env: Env, marker: str, *extra: bytes) -> bytes:
    return (f"GET /p.gif?site={SITE}&event=up&props.marker={marker} HTTP/1.1\r\n"
            f"Host: {env.host}\r\nUser-Agent: {CHROME}\r\n".encode()
            + b"".join(line + b"\r\n" for line in extra) + b"\r\n")


WEBSOCKET = (b"Connection: Upgrade", b"Upgrade: websocket",
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13")


def test_an_upgrade_is_answered_as_http_and_nothing_after_it_is_parsed(env):
    """The collector upgrades no connection. A request that asks to (new WebSocket(...) on
    the pixel's URL) was stored and answered with nothing, a traceback logged; its answer
    is now the request's own, and the connection ends with it: bytes after the head of an
    upgrade are not HTTP to the parser, and were once read as another request."""
    first, after = uuid.uuid4().hex, uuid.uuid4().hex
    answers = exchange(env, pixel_request(env, first, *WEBSOCKET) + pixel_request(env, after))
    assert [a.status for a in answers] == [200]
    assert answers[0].header(b"content-type") == [b"image/gif"]
    assert len(stored(env, first)) == 1 and not stored(env, after)
    alive(env)


def test_an_upgrade_behind_a_pixel_leaves_the_pixel_its_answer(env):
    """A WebSocket upgrade pipelined behind a pixel waiting for its fsync took the
    connection, and the pixel's 200 was never written; an upgrade after an application's
    request was handed that request's headers."""
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    upgrade = (f"GET /healthz HTTP/1.1\r\nHost: {env.host}\r\n".encode()
               + b"".join(line + b"\r\n" for line in WEBSOCKET) + b"\r\n")
    answers = exchange(env, pixel_request(env, first) + upgrade)
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].header(b"content-type") == [b"image/gif"]
    secret = (f"GET /healthz HTTP/1.1\r\nHost: {env.host}\r\nAuthorization: Bearer SECRET\r\n"
              "Connection: upgrade\r\n\r\n").encode()
    answers = exchange(env, secret, pixel_request(env, second, *WEBSOCKET))
    assert [a.status for a in answers] == [200, 200]
    assert answers[1].header(b"content-type") == [b"image/gif"]
    assert len(stored(env, first)) == 1 and len(stored(env, second)) == 1
    alive(env)


@pytest.mark.parametrize("path", ["/collect", "/api/v1/batch", "/consent"])
@pytest.mark.parametrize("split", [False, True], ids=["one write", "body later"])
def test_an_upgrade_with_a_body_is_refused_and_its_body_never_a_request(env, path, split):
    """With Upgrade: h2c the parser stops at the head: the body went unread and was then
    parsed as the next request (request smuggling; uvicorn#2722, httptools#124)."""
    smuggled = uuid.uuid4().hex
    body = pixel_request(env, smuggled)
    head = (f"POST {path} HTTP/1.1\r\nHost: {env.host}\r\nOrigin: {ORIGIN}\r\n"
            "Content-Type: application/json\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            f"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    answers = exchange(env, *((head, body) if split else (head + body,)))
    assert [a.status for a in answers] == [400]  # by the HTTP layer (limits.py): text
    assert b"upgrade" in answers[0].body.lower()
    assert not stored(env, smuggled)
    alive(env)


@pytest.mark.parametrize("origin", ["https://evil.example", ORIGIN])
def test_a_chunked_bodys_trailer_is_no_header(env, origin):
    """Trailer fields came into the request's headers when they arrived with the body:
    an Origin (or a Cookie, an X-Forwarded-For) a proxy had stripped or set."""
    marker = uuid.uuid4().hex
    body = event_body(b"props", b'{"marker":"' + marker.encode() + b'"}')
    request = (f"POST /collect HTTP/1.1\r\nHost: {env.host}\r\nUser-Agent: {CHROME}\r\n"
               "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
               "Connection: close\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n" % (
        len(body), body) + f"Origin: {origin}\r\n\r\n".encode()
    answers = exchange(env, request)
    assert [a.status for a in answers] == [202]
    assert not answers[0].header(b"access-control-allow-origin")
    assert len(stored(env, marker)) == 1


# Nested JSON walked before it is refused: 60,000 empty lists in ecommerce (180 KB) took
# 50 ms of CPU a request, and 64 props of [[[[[[[1]]]]]]] in each of 100 events 45 ms,
# counted as one event each against the client's budget (re-probe 53). Past
# MAX_NESTED_PROPS containers in an event's props, or MAX_ECOMMERCE_NODES in its ecommerce,
# a 400 naming the field, found after that many containers, not all of them.
WALKED = [
    ("ecommerce of many lists", b'{"site":"sec-test","event":"e","ecommerce":{"x":[' +
     b",".join([b"[]"] * 60_000) + b"]}}", "ecommerce"),
    ("props of many lists", b'{"site":"sec-test","event":"e","props":{"a":[' +
     b",".join([b"[]"] * 60_000) + b"]}}", "props"),
    ("props nested in every key", orjson.dumps({"site": "sec-test", "event": "e", "props": {
        f"k{n}": [[[[[[[1]]]]]]] for n in range(64)}}), "props"),
]


@pytest.mark.parametrize("way", ["fast", "asgi"])
@pytest.mark.parametrize(("name", "body", "field"), WALKED, ids=[w[0] for w in WALKED])
def test_nested_json_is_refused_before_it_is_walked_whole(env, way, name, body, field):
    before = events(env)
    refused(collect(env, body, way), field)
    assert events(env) == before


@pytest.mark.parametrize("way", ["fast", "asgi"])
@pytest.mark.parametrize("channel", ["pos", "callcenter", "server"])
def test_a_hit_without_a_key_cannot_say_it_came_from_a_till(env, way, channel):
    """A browser's "purchase in the store" would pass for a till's in the person's profile
    and channels: a server-side channel needs the write key (the batch API)."""
    marker = uuid.uuid4().hex
    body = orjson.dumps({"site": SITE, "event": "purchase", "channel": channel,
                         "props": {"marker": marker}})
    response = collect(env, body, way, Origin=ORIGIN)
    assert response.status_code == 400 and "channel" in response.text, response.text
    pixel = env.client.get(f"/p.gif?site={SITE}&event=purchase&channel={channel}"
                           f"&props.marker={marker}")
    assert pixel.status_code == 400
    assert stored(env, marker) == []
    for keyless in ("web", "app", "email", "qr"):
        ok = collect(env, orjson.dumps({"site": SITE, "event": "open", "channel": keyless,
                                        "props": {"marker": marker}}), way, Origin=ORIGIN)
        assert ok.status_code == 202, ok.text
    assert sorted(row["channel"] for row in stored(env, marker)) == ["app", "email", "qr", "web"]
    alive(env)
