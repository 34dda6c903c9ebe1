"""POST /collect: the browser's JSON beacon endpoint; on both paths (see helpers.on_path)."""

from __future__ import annotations

import datetime as dt
import gzip
import uuid

import orjson
import pytest

from collector.ingest import accept
from collector.ingest.events import MAX_BROWSER_AGE
from collector.web import ratelimit
from collector.web.http import MAX_GZIP_MEMBERS
from tests.helpers import IPHONE, drained, on_path, rows, served, wait_for

ORIGIN = "https://shop.example"


@pytest.fixture(scope="module", params=["asgi", "fast"])
def env(request, store, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"collect-{request.param}")
    with on_path(request.param, store, data_dir) as (client, collector):
        if collector.sites.get("collect-test") is None:
            collector.sites.create("collect-test", [ORIGIN, "https://*.shop.example"])
        yield client, collector


def post(client, body, content_type="text/plain", **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/collect", content=data,
                       headers={"Content-Type": content_type, **headers})


def stored(env, marker: str) -> list[dict]:
    client, collector = env
    wait_for(lambda: drained(collector))
    return rows(collector.store, "collect-test", "props['marker'] = {m:String}", m=marker)


def test_one_event_is_enriched_and_stored(env):
    client, _ = env
    marker = uuid.uuid4().hex
    response = post(client, {
        "site": "collect-test", "event": "page_view", "consent": ["analytics"],
        "device_id": "dev-1", "session_id": "s-1", "title": "Shoes",
        "url": "https://shop.example/shoes?utm_source=news&utm_campaign=nov",
        "referrer": "https://www.google.com/search?q=shoes", "props": {"marker": marker},
    }, Origin=ORIGIN)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1}
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    [row] = wait_for(lambda: stored(env, marker))
    assert row["event"] == "page_view" and row["type"] == "page" and row["channel"] == "web"
    assert row["path"] == "/shoes"
    assert (row["utm_source"], row["utm_campaign"]) == ("news", "nov")
    assert row["referrer_host"] == "www.google.com"
    assert (row["device_class"], row["browser"], row["os"]) == ("desktop", "Chrome", "Windows")
    assert row["device_id"] == "dev-1" and row["session_id"] == "s-1"
    assert row["consent"] == ["analytics"]
    assert row["received_at"] >= row["ts"][:19]


def test_language_from_accept_language_when_the_hit_names_none(env):
    client, _ = env
    marker = uuid.uuid4().hex
    events = [{"site": "collect-test", "event": "a", "props": {"marker": marker, "n": "1"}},
              {"site": "collect-test", "event": "b", "language": "fr-CA",
               "props": {"marker": marker, "n": "2"}}]
    assert post(client, {"site": "collect-test", "events": events}, Origin=ORIGIN,
                **{"Accept-Language": "de-DE,de;q=0.9,en;q=0.8"}).status_code == 202
    got = wait_for(lambda: len(stored(env, marker)) == 2 and stored(env, marker))
    assert {r["props"]["n"]: r["language"] for r in got} == {"1": "de-DE", "2": "fr-CA"}
    # none, "*" or a malformed header: no language
    for header in ("*", "de_DE", "x" * 40, ";q=1"):
        marker = uuid.uuid4().hex
        assert post(client, {"site": "collect-test", "event": "c", "props": {"marker": marker}},
                    Origin=ORIGIN, **{"Accept-Language": header}).status_code == 202
        assert wait_for(lambda m=marker: stored(env, m))[0]["language"] == ""


def test_batch_with_ecommerce(env):
    client, _ = env
    marker = uuid.uuid4().hex
    events = [
        {"event": "add_to_cart", "consent": ["analytics"], "device_id": "d",
         "items": [{"product_id": "sku-1", "name": "Shoe", "price": 59.9, "quantity": 2}],
         "props": {"marker": marker}},
        {"event": "purchase", "consent": ["analytics"], "user_id": "cust-7", "order_id": "o-1",
         "revenue": "119.80", "currency": "eur", "coupon": "NEWS10",
         "items": [{"product_id": "sku-1", "price": "59.90", "quantity": 2}],
         "props": {"marker": marker, "n": 3, "vip": True, "tags": ["a", "b"]}},
    ]
    response = post(client, {"site": "collect-test", "events": events}, "application/json",
                    Origin="https://www.shop.example", **{"User-Agent": IPHONE})
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    got = wait_for(lambda: len(stored(env, marker)) == 2 and stored(env, marker))
    cart, purchase = sorted(got, key=lambda row: row["event"] == "purchase")
    assert cart["items"] == [{"product_id": "sku-1", "name": "Shoe", "category": "", "brand": "",
                              "variant": "", "price": 59.9, "quantity": 2}]
    assert purchase["revenue"] == 119.8 and purchase["currency"] == "EUR"
    assert purchase["props"]["n"] == "3" and purchase["props"]["vip"] == "true"
    assert orjson.loads(purchase["props"]["tags"]) == ["a", "b"]
    assert purchase["device_class"] == "mobile" and purchase["os"] == "iOS"


def test_gzip_body_labelled_text_plain(env):
    client, _ = env
    marker = uuid.uuid4().hex
    body = gzip.compress(orjson.dumps({"site": "collect-test", "event": "gz",
                                       "props": {"marker": marker}}))
    assert post(client, body).status_code == 202
    assert wait_for(lambda: stored(env, marker))


def test_without_analytics_consent_no_identifiers_are_kept(env):
    client, _ = env
    marker = uuid.uuid4().hex
    response = post(client, {"site": "collect-test", "event": "page_view", "consent": [],
                             "device_id": "dev-x", "session_id": "s-x", "user_id": "u-x",
                             "props": {"marker": marker}})
    assert response.status_code == 202
    [row] = wait_for(lambda: stored(env, marker))
    assert (row["device_id"], row["session_id"], row["user_id"]) == ("", "", "")


def test_cors_preflight(env):
    client, _ = env
    ok = client.options("/collect", headers={"Origin": ORIGIN,
                                             "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert ok.headers["access-control-allow-credentials"] == "true"
    denied = client.options("/collect", headers={"Origin": "https://evil.example"})
    assert denied.status_code == 403
    assert "access-control-allow-origin" not in denied.headers


BAD = [
    ("malformed JSON", b'{"site": "collect-test", "event": ', {}, 400, "malformed JSON"),
    ("invalid UTF-8", b'{"site": "collect-test", "event": "\xff\xfe"}', {}, 400, "UTF-8"),
    ("byte order mark", b'\xef\xbb\xbf{"site": "collect-test", "event": "e"}', {}, 400,
     "byte order mark"),
    ("not an object", b'[1, 2]', {}, 400, "JSON object"),
    ("empty body", b"", {}, 400, "empty body"),
    ("event is a number", {"site": "collect-test", "event": 5}, {}, 400, "'event'"),
    ("event missing", {"site": "collect-test"}, {}, 400, "'event' is required"),
    ("ts is a bool", {"site": "collect-test", "event": "e", "ts": True}, {}, 400, "'ts'"),
    ("ts garbage", {"site": "collect-test", "event": "e", "ts": "yesterday"}, {}, 400, "'ts'"),
    ("ts before 2000", {"site": "collect-test", "event": "e", "ts": 1000}, {}, 400, "2000"),
    ("bad event_id", {"site": "collect-test", "event": "e", "event_id": "x"}, {}, 400, "UUID"),
    ("bad type", {"site": "collect-test", "event": "e", "type": "x"}, {}, 400, "'type'"),
    ("identify without user", {"site": "collect-test", "event": "login", "type": "identify"},
     {}, 400, "user_id"),
    ("bad channel", {"site": "collect-test", "event": "e", "channel": "fax"}, {}, 400, "channel"),
    ("items not a list", {"site": "collect-test", "event": "e", "items": {}}, {}, 400, "items"),
    ("item price", {"site": "collect-test", "event": "e", "items": [{"price": "x"}]}, {}, 400,
     "price"),
    ("item quantity", {"site": "collect-test", "event": "e", "items": [{"quantity": -1}]}, {},
     400, "quantity"),
    ("revenue NaN", {"site": "collect-test", "event": "e", "revenue": "NaN"}, {}, 400, "revenue"),
    ("revenue huge", {"site": "collect-test", "event": "e", "revenue": 1e20}, {}, 400, "range"),
    ("currency", {"site": "collect-test", "event": "e", "currency": "EURO"}, {}, 400, "currency"),
    # A ligature that upper-cases to three letters ("FFA") is no ISO 4217 code.
    ("currency not ASCII", {"site": "collect-test", "event": "e", "currency": "\ufb00a"}, {},
     400, "currency"),
    ("consent not a list", {"site": "collect-test", "event": "e", "consent": "all"}, {}, 400,
     "consent"),
    ("props not an object", {"site": "collect-test", "event": "e", "props": []}, {}, 400, "props"),
    ("props value too long", {"site": "collect-test", "event": "e", "props": {"a": "x" * 3000}},
     {}, 400, "props.a"),
    ("too many props", {"site": "collect-test", "event": "e",
                        "props": {str(i): i for i in range(65)}}, {}, 400, "props"),
    ("url too long", {"site": "collect-test", "event": "e", "url": "https://a.b/" + "x" * 5000},
     {}, 400, "'url'"),
    ("url not absolute", {"site": "collect-test", "event": "e", "url": "/x"}, {}, 400, "url"),
    ("unknown field", {"site": "collect-test", "event": "e", "colour": "red"}, {}, 400,
     "colour"),
    ("server-only field", {"site": "collect-test", "event": "e", "country": "DE"}, {}, 400,
     "batch API"),
    ("site missing", {"event": "e"}, {}, 400, "'site' is required"),
    ("site not a string", {"site": 7, "event": "e"}, {}, 400, "'site' must be a string"),
    ("unknown site", {"site": "no-such-site", "event": "e"}, {}, 404, "unknown site"),
    ("events not a list", {"site": "collect-test", "events": "x"}, {}, 400, "events"),
    ("events empty", {"site": "collect-test", "events": []}, {}, 400, "events"),
    ("too many events", {"site": "collect-test", "events": [{"event": "e"}] * 101}, {}, 413,
     "more than 100"),
    ("oversized body", {"site": "collect-test", "event": "e", "title": "x" * 300_000}, {}, 413,
     "larger than"),
    ("event of another site", {"site": "collect-test", "events": [{"event": "e", "site": "o"}]},
     {}, 400, "site"),
    ("field beside events", {"site": "collect-test", "events": [{"event": "e"}], "x": 1}, {}, 400,
     "beside"),
    ("form content type", {"site": "collect-test", "event": "e"},
     {"Content-Type": "application/x-www-form-urlencoded"}, 415, "text/plain"),
    ("disallowed origin", {"site": "collect-test", "event": "e"},
     {"Origin": "https://evil.example"}, 403, "not allowed"),
    ("broken gzip", b"\x1f\x8b\x08\x00garbage", {}, 400, "gzip"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_whole(env, body, headers, status, message):
    client, collector = env
    wait_for(lambda: drained(collector))
    before = len(rows(collector.store, "collect-test"))
    accepted = collector.metrics.hits_accepted.values.get(("collect",), 0)
    response = post(client, body, **{"Content-Type": "text/plain", **headers})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert collector.metrics.hits_accepted.values.get(("collect",), 0) == accepted
    wait_for(lambda: drained(collector))
    assert len(rows(collector.store, "collect-test")) == before
    # ... and the process keeps serving.
    assert post(client, {"site": "collect-test", "event": "after"}).status_code == 202


def test_one_bad_event_rejects_the_whole_batch(env):
    client, _ = env
    marker = uuid.uuid4().hex
    events = [{"event": "ok", "props": {"marker": marker}}] * 2 + [{"event": "bad", "ts": "x"}]
    response = post(client, {"site": "collect-test", "events": events})
    assert response.status_code == 400
    assert response.json()["field"] == "events[2].ts"
    assert post(client, {"site": "collect-test", "event": "flush"}).status_code == 202
    assert stored(env, marker) == []


def test_gzip_members_are_read_whole_and_nothing_after_them(env):
    """Several gzip members are one body (RFC 1952; ``gzip.decompress`` reads them all);
    anything after the last member is a 400, as after a plain body's JSON, not dropped (the
    first member alone was read: found by an attacker's probe)."""
    client, _ = env
    marker = uuid.uuid4().hex
    document = orjson.dumps({"site": "collect-test", "event": "gz", "props": {"marker": marker}})
    half = len(document) // 2
    assert post(client, gzip.compress(document[:half]) + gzip.compress(document[half:])
                ).status_code == 202
    assert wait_for(lambda: stored(env, marker))
    for tail in (b"JUNK", gzip.compress(b"{{{"), gzip.compress(b"x")[:-3]):
        other = uuid.uuid4().hex
        body = gzip.compress(document.replace(marker.encode(), other.encode())) + tail
        response = post(client, body)
        assert response.status_code == 400, (tail, response.text)
        assert post(client, {"site": "collect-test", "event": "flush"}).status_code == 202
        assert stored(env, other) == []
    bomb = b"".join(gzip.compress(b" " * 200_000) for _ in range(3))  # 600 KB over members
    assert post(client, bomb).status_code == 413


def test_gzip_members_are_bounded(env):
    """Each member's rest was copied for the next: 13,000 empty members took 45 ms of the
    event loop a /collect (probe 50), a 1 MB batch 720 ms. A body of more than
    MAX_GZIP_MEMBERS members is a 400 naming them (its reading stops there)."""
    client, _ = env
    empty = gzip.compress(b"", mtime=0)
    document = gzip.compress(b'{"site":"collect-test","event":"gz"}')
    assert post(client, empty * (MAX_GZIP_MEMBERS - 1) + document).status_code == 202
    response = post(client, empty * 13_097 + document)
    assert response.status_code == 400 and "members" in response.json()["error"]
    assert post(client, {"site": "collect-test", "event": "flush"}).status_code == 202


def test_gzip_bomb_is_refused(env):
    client, _ = env
    bomb = gzip.compress(b'{"site":"collect-test","event":"e","title":"' + b"a" * 5_000_000)
    assert len(bomb) < 256 * 1024
    response = post(client, bomb)
    assert response.status_code == 413


def test_error_keeps_cors_for_allowed_origin(env):
    client, _ = env
    response = post(client, {"site": "collect-test", "event": 1}, Origin=ORIGIN)
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_a_purchase_reloaded_on_a_device_counts_once(env):
    """The confirmation page reloaded: the tag sends the purchase again with a new event id;
    the order and the device make its id, and the first counts. Another device naming the
    same order id cannot suppress it (any visitor can send any order id), and without a
    device id (no analytics consent) nothing is deduplicated."""
    client, _ = env
    marker = uuid.uuid4().hex

    def purchase(n, **fields):
        return {"site": "collect-test", "event": "purchase", "event_id": str(uuid.uuid4()),
                "order_id": f"RW-{marker}", "revenue": 10, "currency": "EUR",
                "props": {"marker": marker, "n": str(n)}, **fields}

    mine = {"consent": ["analytics"], "device_id": f"phone-{marker}"}
    for event in (purchase(1, **mine), purchase(2, **mine),
                  purchase(3, consent=["analytics"], device_id=f"other-{marker}"),
                  purchase(4), purchase(5)):
        client.cookies.clear()  # the device is the page's device_id, not a tw_id of before
        assert post(client, event, Origin=ORIGIN).status_code == 202
    assert sorted(r["props"]["n"] for r in stored(env, marker)) == ["1", "3", "4", "5"]


def test_a_browsers_time_from_long_ago_is_the_time_of_receipt(env):
    """Events are partitioned by month of ``ts``: a browser's hits spread over years made a
    part per month in every flush (1.6 s a flush over 320 months, re-probe 51), for anyone
    to ask. A browser's time more than MAX_BROWSER_AGE old is replaced by the time of
    receipt, as one ahead of the clock is; within it, kept (a queue stored offline)."""
    client, _ = env
    now = dt.datetime.now(dt.UTC)
    within = now - MAX_BROWSER_AGE + dt.timedelta(days=1)
    markers = {}
    for name, ts in (("old", "2001-02-03T04:05:06Z"), ("within", within.isoformat()),
                     ("old ms", int((now - MAX_BROWSER_AGE).timestamp() * 1000) - 60_000)):
        markers[name] = uuid.uuid4().hex
        assert post(client, {"site": "collect-test", "event": "e", "ts": ts,
                             "props": {"marker": markers[name]}}).status_code == 202
    for name in ("old", "old ms"):
        [row] = stored(env, markers[name])
        assert row["ts"][:10] == row["received_at"][:10], (name, row["ts"])
    [row] = stored(env, markers["within"])
    assert row["ts"].startswith(within.strftime("%Y-%m-%d %H:%M:%S"))


def test_a_clients_hits_are_budgeted(store, tmp_path, monkeypatch):
    """Each event and each item of a browser's hits costs the collector CPU (an event of
    200 items ~ 2 ms): one host sending 250 KB bodies of 11,000 items kept a core busy and
    every site's hits minutes from queryable (re-probe 52). A client (behind the trusted
    proxy here: the address it forwards) has a budget of events and items; past it a 429
    with Retry-After, nothing stored; other clients, and addresses that are not public
    (a proxy nobody declared trusted), are not held."""
    monkeypatch.setattr(accept, "BUDGETS", ratelimit.RateLimits(rate=1.0, burst=50.0))
    item = {"product_id": "p", "price": 1.0}
    hits = {"site": "collect-test", "events": [
        {"event": "view_item_list", "items": [item] * 19}] * 2}  # 2 events + 38 items
    with served(store, tmp_path, trusted_proxies="127.0.0.1/32") as (client, collector):
        if collector.sites.get("collect-test") is None:
            collector.sites.create("collect-test", [ORIGIN])

        def send(forwarded: str):
            return post(client, hits, **{"X-Forwarded-For": forwarded})

        assert send("198.51.100.7, 8.8.4.4").status_code == 202  # 40 of 50
        over = send("8.8.4.4")
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 30
        assert "events and items" in over.json()["error"]
        # While it waits, its bodies are not even parsed (re-probe 53: a refused 230 KB
        # body still cost 1.5 ms): a malformed one is a 429 too, not a 400.
        spent = post(client, b'{"site": "collect-test", "events": [', **{
            "X-Forwarded-For": "8.8.4.4"})
        assert spent.status_code == 429
        assert send("8.8.8.8").status_code == 202  # another client
        for _ in range(3):  # a private address: a proxy, not a client
            assert send("10.1.2.3").status_code == 202
        wait_for(lambda: drained(collector))
