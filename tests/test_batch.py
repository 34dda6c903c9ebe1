"""POST /api/v1/batch: authenticated server-side events (POS, call centre, CRM)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import uuid

import orjson
import pytest

from tests.helpers import drained, on_path, rows, wait_for

_KEYS: dict[str, dict[str, str]] = {}  # the sites' keys, created once in the shared store


@pytest.fixture(scope="module", params=["asgi", "fast"])
def env(request, store, tmp_path_factory):
    """``fast``: on uvicorn, where a batch with a Content-Length takes the fast path."""
    data_dir = tmp_path_factory.mktemp(f"batch-{request.param}")
    with on_path(request.param, store, data_dir) as (client, collector):
        for site in ("batch-test", "batch-other"):
            if site not in _KEYS:
                _KEYS[site] = collector.sites.create(site)[1]
        yield client, collector, _KEYS["batch-test"], _KEYS["batch-other"]


def send(client, key, body, **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/api/v1/batch", content=data,
                       headers={"Content-Type": "application/json", **auth, **headers})


def stored(env, marker):
    _, collector, _, _ = env
    wait_for(lambda: drained(collector))
    return rows(collector.store, "batch-test", "props['marker'] = {m:String}", m=marker)


def test_pos_purchase_keeps_original_time_and_store_location(env):
    client, _, keys, _ = env
    marker = uuid.uuid4().hex
    event = {"event": "purchase", "channel": "pos", "ts": "2026-11-20T18:30:00+01:00",
             "user_id": 4711, "consent": ["analytics"], "order_id": f"pos-{marker}",
             "revenue": 42.5, "currency": "EUR", "coupon": "NEWS10", "country": "de",
             "city": "Berlin",
             "items": [{"product_id": "sku-1", "price": 42.5, "quantity": 1}],
             "props": {"marker": marker, "store": "berlin-mitte"}}
    response = send(client, keys["write"], {"events": [event]})
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    [row] = wait_for(lambda: stored(env, marker))
    assert row["ts"] == "2026-11-20 17:30:00.000"
    assert (row["channel"], row["user_id"], row["country"], row["city"]) == (
        "pos", "4711", "DE", "Berlin")


def test_repeated_event_id_is_stored_once(env):
    client, _, keys, _ = env
    marker = uuid.uuid4().hex
    events = [{"event_id": str(uuid.uuid4()), "event": "call", "channel": "callcenter",
               "props": {"marker": marker}} for _ in range(3)]
    assert send(client, keys["write"], {"site": "batch-test", "events": events}).status_code == 202
    wait_for(lambda: len(stored(env, marker)) == 3)
    # The sender retries the whole batch (it never saw our answer), plus one duplicate inside.
    again = {"events": [*events, events[0]]}
    assert send(client, keys["write"], again).status_code == 202
    assert send(client, keys["write"], again).status_code == 202
    assert len(stored(env, marker)) == 3


def purchase(order_id, marker, n, **fields):
    return {"event": "purchase", "channel": "pos", "order_id": order_id, "revenue": 20,
            "currency": "EUR", "items": [{"product_id": f"sku-{marker}", "price": 20}],
            "props": {"marker": marker, "n": str(n)}, **fields}


def test_a_purchase_repeated_with_its_order_id_counts_once(env):
    """A confirmation page reloaded, a purchase sent by the browser and by the shop's server:
    the first with that order id counts, in the events and in every aggregate fed from them;
    within a request too. Another order, the same order id on another site, a placeholder
    order id and an event id the sender chose each count on their own."""
    client, collector, keys, other = env
    marker = uuid.uuid4().hex
    order = f"order-{marker}"
    first = [purchase(order, marker, 1), purchase(order, marker, 2)]
    assert send(client, keys["write"], {"events": first}).status_code == 202
    earlier = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()  # the till's time
    again = [purchase(order, marker, 3, ts=earlier), purchase(f"{order}-b", marker, 4),
             purchase("undefined", marker, 5), purchase("undefined", marker, 6),
             purchase(order, marker, 7, event_id=str(uuid.uuid4()))]
    assert send(client, keys["write"], {"events": again}).status_code == 202
    assert send(client, other["write"], {"events": [purchase(order, marker, 8)]}).status_code == 202
    wait_for(lambda: drained(collector))
    assert sorted(r["props"]["n"] for r in stored(env, marker)) == ["1", "4", "5", "6", "7"]
    assert [r["props"]["n"] for r in rows(collector.store, "batch-other",
                                          "props['marker'] = {m:String}", m=marker)] == ["8"]
    [counted] = collector.store.rows(
        "SELECT sum(purchases) AS purchases, toFloat64(sum(revenue)) AS revenue "
        "FROM tagwerk.product_hourly WHERE site_id = 'batch-test' AND product_id = {p:String}",
        {"p": f"sku-{marker}"})
    assert counted == {"purchases": 5, "revenue": 100.0}


def test_basic_auth_and_gzip(env):
    client, _, keys, _ = env
    marker = uuid.uuid4().hex
    body = gzip.compress(orjson.dumps([{"event": "crm_update", "props": {"marker": marker}}]))
    basic = base64.b64encode(f"{keys['write']}:".encode()).decode()
    response = client.post("/api/v1/batch", content=body, headers={
        "Authorization": f"Basic {basic}", "Content-Encoding": "gzip"})
    assert response.status_code == 202
    assert wait_for(lambda: stored(env, marker))


def test_user_agent_and_ip_enrich_but_are_not_stored(env):
    client, _, keys, _ = env
    marker = uuid.uuid4().hex
    agent = "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    response = send(client, keys["write"], {"events": [
        {"event": "app_open", "user_agent": agent, "ip": "81.2.69.160",
         "props": {"marker": marker}}]})
    assert response.status_code == 202
    [row] = wait_for(lambda: stored(env, marker))
    assert row["device_class"] == "tablet"
    assert "81.2.69" not in orjson.dumps(row).decode()


@pytest.mark.parametrize(("key", "body", "headers", "status", "message"), [
    (None, {"events": [{"event": "e"}]}, {}, 401, "write key"),
    ("tw_write_wrong", {"events": [{"event": "e"}]}, {}, 401, "invalid write key"),
    ("read", {"events": [{"event": "e"}]}, {}, 401, "invalid write key"),
    ("write", {"site": "batch-other", "events": [{"event": "e"}]}, {}, 403, "site"),
    ("write", {"events": [{"event": "e"}] * 501}, {}, 413, "more than 500"),
    ("write", {"events": [{"event": "e", "props": {"a": "x" * 2000, "b": "y" * 2000}}] * 499},
     {}, 413, "larger than"),
    ("write", {"events": []}, {}, 400, "empty"),
    ("write", {"events": "x"}, {}, 400, "events"),
    ("write", {"events": [{"event": "e"}], "extra": 1}, {}, 400, "extra"),
    ("write", {"events": [{"event": "e"}, {"event": "e", "ts": "1999-01-01T00:00:00Z"}]}, {},
     400, "events[1]"),
    ("write", b'{"events": [', {}, 400, "malformed"),
    ("write", b'{"events": [{"event": "\xc3\x28"}]}', {}, 400, "UTF-8"),
    ("write", {"events": [{"event": "e"}]}, {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    # What a server states about the shopper is checked, not dropped or stored as sent.
    ("write", {"events": [{"event": "e", "ip": 12345}]}, {}, 400, "'ip'"),
    ("write", {"events": [{"event": "e", "ip": "not an ip\u0000"}]}, {}, 400, "'ip'"),
    ("write", {"events": [{"event": "e", "user_agent": {"a": [1]}}]}, {}, 400, "'user_agent'"),
    ("write", {"events": [{"event": "e", "country": "\u0000\u0001"}]}, {}, 400, "'country'"),
    ("write", {"events": [{"event": "e", "country": "1a"}]}, {}, 400, "'country'"),
    ("write", {"events": [{"event": "e", "region": "B-"}]}, {}, 400, "'region'"),
    ("write", {"events": [{"event": "e", "language": "\u0000<script>"}]}, {}, 400,
     "'language'"),
    # A time a day or more ahead of the collector's is the sender's bug, not a moment to
    # replace with the time of receipt.
    ("write", {"events": [{"event": "e", "ts": "9999-12-31T23:59:59Z"}]}, {}, 400, "'ts'"),
    ("write", {"events": [{"event": "e", "ts": 9999999999999}]}, {}, 400, "'ts'"),
    # Each in range, but not their product: a line's revenue must fit the columns.
    ("write", {"events": [{"event": "purchase", "items": [
        {"product_id": "p", "price": 1000000, "quantity": 1000000000}]}]}, {}, 400,
     "items[0]"),
    ("write", {"events": [{"event": "purchase", "items": [
        {"product_id": "p", "price": "-99999999999", "quantity": 4000}]}]}, {}, 400,
     "items[0]"),
])
def test_bad_requests(env, key, body, headers, status, message):
    client, collector, keys, _ = env
    wait_for(lambda: drained(collector))
    before = len(rows(collector.store, "batch-test"))
    secret = keys.get(key, key) if key else None
    response = send(client, secret, body, **headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    wait_for(lambda: drained(collector))
    assert len(rows(collector.store, "batch-test")) == before
    assert send(client, keys["write"], {"events": [{"event": "after"}]}).status_code == 202


def test_the_largest_line_item_reaches_every_view_beside_another_shoppers(env):
    """A line item's revenue (price x quantity) is computed by the views in the columns'
    decimal type: one that overflowed it made the engine drop the views' rows of the whole
    insert, everyone's, without an error (found by a probe). The largest line accepted
    fits, and the other shopper's purchase in the same insert is in the profile tables."""
    client, collector, keys, _ = env
    n = uuid.uuid4().hex[:8]
    consent = ["analytics", "personalization"]
    big = {"product_id": f"big-{n}", "price": "99999999999.9999", "quantity": 999}
    response = send(client, keys["write"], {"events": [
        {"event": "purchase", "device_id": f"v-{n}", "consent": consent,
         "items": [{"product_id": f"small-{n}", "price": 3, "quantity": 1}]},
        {"event": "purchase", "device_id": f"b-{n}", "consent": consent, "items": [big]}]})
    assert response.status_code == 202, response.text
    wait_for(lambda: drained(collector))
    found = collector.store.rows(
        "SELECT key, toString(revenue) AS revenue FROM tagwerk.person_hits "
        "WHERE site_id = 'batch-test' AND key IN {k:Array(String)} ORDER BY key",
        {"k": [f"device:b-{n}", f"device:v-{n}"]})
    assert found == [{"key": f"device:b-{n}", "revenue": "99899999999999.9001"},
                     {"key": f"device:v-{n}", "revenue": "3"}]
