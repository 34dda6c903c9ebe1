"""GET /api/v1/sites/{site}/products/top, /trending, /{product_id}/related: the read key's
product lists, from the pre-aggregates."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from tests.helpers import CHROME, drained, make_client, wait_for
from tests.test_aggregates import refresh_pairs

NOW = dt.datetime.now(dt.UTC)


def hit(event: str, ago: dt.timedelta, items: list[tuple[str, float, int]], session: str = "",
        device: str = "d-1", category: str = "shoes") -> dict:
    return {"event": event, "ts": (NOW - ago).isoformat(timespec="milliseconds"),
            "device_id": device, "session_id": session or device, "consent": ["analytics"],
            "user_agent": CHROME,
            "items": [{"product_id": p, "price": price, "quantity": q, "category": category}
                      for p, price, q in items]}


def send(client, key: str, events: list[dict]) -> None:
    response = client.post("/api/v1/batch", content=orjson.dumps({"events": events}),
                           headers={"Authorization": f"Bearer {key}",
                                    "Content-Type": "application/json"})
    assert response.status_code == 202, response.text


MIN = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)


def dataset() -> list[dict]:
    events = []
    # p1: viewed often, just now (trending); p2: viewed steadily over the past days.
    events += [hit("view_item", MIN * (i + 1), [("p1", 10, 1)], session=f"s{i % 3}",
                   device=f"d{i % 3}") for i in range(6)]
    events += [hit("view_item", DAY + dt.timedelta(hours=i * 3), [("p2", 20, 1)],
                   session=f"old{i}", device=f"d{i % 3}") for i in range(20)]
    events += [hit("view_item", MIN * 2, [("p2", 20, 1)], session="s0", device="d0")]
    events += [hit("view_item", MIN * 3, [("p3", 5, 1)], session="s0", device="d0",
                   category="bags")]
    events += [hit("add_to_cart", MIN * 4, [("p3", 5, 2)], session="s0", device="d0",
                   category="bags")]
    events += [hit("purchase", MIN * 5, [("p3", 5.5, 2), ("p4", 100, 1)], device="d0")]
    events += [hit("purchase", MIN * 6, [("p3", 5.5, 1), ("p4", 100, 1)], device="d1")]
    return events


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("products"))
    with client:
        _, keys = collector.sites.create("prod-a", ["https://a.example"])
        _, other = collector.sites.create("prod-b")
        send(client, keys["write"], dataset())
        send(client, other["write"], [hit("view_item", MIN, [("b-only", 1, 1)], device="x"),
                                      hit("view_item", MIN, [("p1", 1, 1)], device="x")] * 10)
        wait_for(lambda: drained(collector))
        refresh_pairs(store, ("prod-a",))
        yield client, collector, keys, other


def get(env, path: str, key: str | None = "read", site: str = "prod-a"):
    client, _, keys, _ = env
    headers = {"Authorization": f"Bearer {keys.get(key, key)}"} if key else {}
    return client.get(f"/api/v1/sites/{site}{path}", headers=headers)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["product_id"] for item in response.json()["items"]]


def test_top_views(env):
    response = get(env, "/products/top?window=24h")
    assert ids(response) == ["p1", "p2", "p3"]
    body = response.json()
    assert body["items"][0] == {"product_id": "p1", "score": 6, "views": 6, "add_to_carts": 0,
                                "purchases": 0, "revenue": 0.0, "quantity": 0}
    newest = NOW - MIN
    assert body["as_of"] == newest.strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{newest.microsecond // 1000:03d}Z"
    assert response.headers["cache-control"] == "no-store"


def test_top_by_purchases_revenue_and_category(env):
    assert ids(get(env, "/products/top?metric=purchases")) == ["p3", "p4"]
    revenue = get(env, "/products/top?metric=revenue&limit=1").json()["items"]
    assert revenue == [{"product_id": "p4", "score": 200.0, "views": 0, "add_to_carts": 0,
                        "purchases": 2, "revenue": 200.0, "quantity": 2}]
    p3 = get(env, "/products/top?metric=revenue&category=bags").json()["items"]
    assert [(i["product_id"], i["revenue"], i["quantity"]) for i in p3] == [("p3", 16.5, 3)]
    assert ids(get(env, "/products/top?category=none")) == []
    assert get(env, "/products/top?category=none").json()["as_of"] is None


def test_revenue_is_of_one_currency(env):
    """A shop selling in EUR and CHF: revenue never adds francs to euros. It is the asked
    currency's, else the one most purchases named; the answer says which."""
    client, collector, _, _ = env
    created, keys = collector.sites.create(f"prod-fx-{uuid.uuid4().hex[:6]}")

    def bought(product, price, currency):
        return {**hit("purchase", MIN, [(product, price, 1)]),
                **({"currency": currency} if currency else {})}

    send(client, keys["write"], [bought("euro-1", 10, "EUR"), bought("euro-1", 10, "eur"),
                                 bought("euro-2", 15, "EUR"), bought("franc", 100, "CHF"),
                                 bought("unnamed", 1000, "")])
    wait_for(lambda: drained(collector))
    site = created.site_id

    def top(query):
        r = client.get(f"/api/v1/sites/{site}/products/top?{query}",
                       headers={"Authorization": f"Bearer {keys['read']}"})
        assert r.status_code == 200, r.text
        body = r.json()
        return body["currency"], [(i["product_id"], i["revenue"]) for i in body["items"]]

    assert top("metric=revenue") == ("EUR", [("euro-1", 20.0), ("euro-2", 15.0)])
    assert top("metric=revenue&currency=chf") == ("CHF", [("franc", 100.0)])
    assert top("metric=revenue&currency=USD") == ("USD", [])
    # Every list's revenue is of its currency; purchases count in any.
    assert top("metric=purchases&currency=CHF") == ("CHF", [
        ("euro-1", 0.0), ("euro-2", 0.0), ("franc", 100.0), ("unnamed", 0.0)])


def test_the_main_currency_is_kept_a_minute(env, monkeypatch):
    """The window's main currency is read once a minute, not with every list: the lists
    stay fresh, in the currency chosen last."""
    from collector.api import products

    client, collector, _, _ = env
    created, keys = collector.sites.create(f"prod-fx-{uuid.uuid4().hex[:6]}")

    def buy(currency, n=1):
        send(client, keys["write"], [{**hit("purchase", MIN, [("x", 10, 1)]),
                                      "currency": currency}] * n)
        wait_for(lambda: drained(collector))

    def top():
        r = client.get(f"/api/v1/sites/{created.site_id}/products/top?metric=revenue",
                       headers={"Authorization": f"Bearer {keys['read']}"})
        return r.json()["currency"], [i["revenue"] for i in r.json()["items"]]

    buy("CHF")
    assert top() == ("CHF", [10.0])
    buy("EUR", 2)
    buy("CHF")
    assert top() == ("CHF", [20.0])
    monkeypatch.setitem(products.KEPT_SECONDS, "currency", 0.0)
    buy("EUR")
    assert top() == ("EUR", [30.0])


def test_revenue_without_a_named_currency(env):
    """A shop that never names a currency (this module's dataset): revenue as before."""
    body = get(env, "/products/top?metric=revenue").json()
    assert body["currency"] is None and body["items"][0]["revenue"] == 200.0


def test_top_window_counts_older_hours(env):
    week = get(env, "/products/top?window=7d").json()["items"]
    assert week[0] == {**week[0], "product_id": "p2", "views": 21}


def test_trending_prefers_what_is_new(env):
    response = get(env, "/products/trending?window=1h&baseline=7d")
    assert ids(response)[0] == "p1"
    items = {i["product_id"]: i for i in response.json()["items"]}
    assert items["p1"]["recent"] == 6 and items["p1"]["baseline"] == 0
    assert items["p2"]["recent"] == 1 and items["p2"]["baseline"] == 20
    assert items["p1"]["score"] > items["p2"]["score"] > 1  # K=5 damps small counts


def test_related(env):
    response = get(env, "/products/p3/related")
    assert ids(response) == ["p1", "p2"]  # both viewed in session s0 with p3
    assert response.json()["items"][0] == {"product_id": "p1", "score": 1, "sessions": 1}
    bought = get(env, "/products/p3/related?kind=co_purchase").json()
    assert bought["items"] == [{"product_id": "p4", "score": 2, "buyers": 2}]
    assert bought["as_of"] is not None
    assert ids(get(env, "/products/unknown/related")) == []


def test_sites_never_mix(env):
    assert "b-only" not in ids(get(env, "/products/top"))
    other = get(env, "/products/top", key=env[3]["read"], site="prod-b")
    assert ids(other) == ["b-only", "p1"] and other.json()["items"][1]["views"] == 10
    assert ids(get(env, "/products/p1/related", key=env[3]["read"], site="prod-b")) == \
        ["b-only"]


@pytest.mark.parametrize("path", ["/products/top", "/products/trending",
                                  "/products/p1/related"])
def test_keys(env, path):
    assert get(env, path, key=None).status_code == 401
    assert get(env, path, key="write").status_code == 403
    assert get(env, path, key="tw_read_wrong").status_code == 403
    assert get(env, path, key=env[3]["read"]).status_code == 403  # another site's key
    assert get(env, path, key="admin").status_code == 200
    assert get(env, path, site="nope").status_code == 404


@pytest.mark.parametrize(("query", "field"), [
    ("/products/top?person=bogus:1", "person"),
    ("/products/top?person=user:undefined", "person"),
    ("/products/top?person=user:1&exclude=bought", "exclude"),
    ("/products/top?exclude=purchased", "exclude"),
    ("/products/top?limit=1&limit=2", "limit"),
    ("/products/top?limit=0", "limit"),
    ("/products/top?limit=101", "limit"),
    ("/products/top?limit=ten", "limit"),
    ("/products/top?limit=-1", "limit"),
    ("/products/top?limit=%EF%BC%95", "limit"),
    ("/products/top?window=30m", "window"),
    ("/products/top?window=0h", "window"),
    ("/products/top?window=91d", "window"),
    ("/products/top?window=24", "window"),
    ("/products/top?metric=clicks", "metric"),
    ("/products/top?currency=EURO", "currency"),
    ("/products/top?currency=", "currency"),
    ("/products/top?currency=E1R", "currency"),
    ("/products/top?currency=%EF%AC%80a", "currency"),
    ("/products/top?currency=%C3%A9ur", "currency"),
    ("/products/top?currency=" + "E" * 600, "currency"),
    ("/products/top?currency=%00UR", "currency"),
    ("/products/top?category=%01", "category"),
    ("/products/top?category=" + "x" * 300, "category"),
    ("/products/top?window=%ff", "window"),
    ("/products/trending?baseline=1h", "baseline"),
    ("/products/trending?window=2d&baseline=1d", "baseline"),
    ("/products/trending?baseline=100d", "baseline"),
    ("/products/p1/related?kind=co_click", "kind"),
    ("/products/p1/related?person=device", "person"),
    ("/products/%01/related", "product_id"),
    ("/products/%ff/related", "product_id"),
    ("/products/a%0Ab/related", "product_id"),  # a line break: was an unmatched route's 404
    ("/products/" + "x" * 300 + "/related", "product_id"),
])
def test_bad_input_is_a_400_naming_it(env, query, field):
    response = get(env, query)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] and body.get("field", "") == field


@pytest.mark.parametrize("window", ["0h", "30m", "91d", "24", "x", "500d"])
def test_every_bad_window_names_the_same_limit(env, window):
    """window=0h named the general span's limit (400d), 91d the list's (probe 44)."""
    response = get(env, f"/products/top?window={window}")
    assert response.status_code == 400
    assert "from 1h to 90d" in response.json()["error"]


def test_huge_query_and_the_service_keeps_serving(env):
    assert get(env, "/products/top?category=" + "x" * 5000).status_code == 414
    assert ids(get(env, "/products/top"))[0] == "p1"


def test_slash_in_a_product_id(env):
    assert ids(get(env, "/products/a%2Fb/related")) == []


def test_a_flushed_hit_is_in_the_next_answer(env):
    client, collector, keys, _ = env
    assert "fresh" not in ids(get(env, "/products/top?limit=100"))
    send(client, keys["write"], [hit("view_item", dt.timedelta(0), [("fresh", 1, 1)],
                                     device="d9")])
    wait_for(lambda: drained(collector))
    assert "fresh" in ids(get(env, "/products/top?limit=100"))


def test_a_hit_stamped_ahead_of_the_clock_counts_only_when_its_hour_comes(env):
    """The batch API takes times up to a day ahead (a till on local time sent as UTC):
    such a hit is not "now" for the windows, and no answer's as_of is in the future."""
    client, collector, keys, _ = env
    ahead = hit("view_item", -dt.timedelta(hours=20), [("ahead", 1, 1)], device="d-ahead")
    ahead["ts"] = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=20)).isoformat()
    send(client, keys["write"], [ahead])
    wait_for(lambda: drained(collector))
    for path in ("/products/top?window=1h&limit=100", "/products/top?window=24h&limit=100",
                 "/products/trending?window=1h&limit=100"):
        response = get(env, path)
        assert "ahead" not in ids(response), path
        as_of = response.json()["as_of"]
        assert as_of is None or dt.datetime.fromisoformat(as_of.replace("Z", "+00:00")) \
            <= dt.datetime.now(dt.UTC), (path, as_of)


def test_a_buyer_of_more_than_the_exclusion_limit_never_sees_what_they_bought_last(
        env, monkeypatch):
    """A list leaves out at most MAX_EXCLUDED of a person's products: the most recent ones,
    not the alphabetically first (the newest purchase, a bestseller named 'zz...', was
    cut and topped the list; found by a probe)."""
    from collector.api import products

    monkeypatch.setattr(products, "MAX_EXCLUDED", 3)
    client, collector, keys, _ = env
    personal = {"consent": ["analytics", "personalization"]}
    buyer = f"buyer-{uuid.uuid4().hex[:6]}"
    send(client, keys["write"], [
        {**hit("purchase", dt.timedelta(minutes=30 - i), [(f"aa-{i}", 1, 1)], device=buyer),
         **personal} for i in range(5)] + [
        {**hit("purchase", MIN, [("zz-best", 1, 1)], device=buyer), **personal}] + [
        hit("view_item", MIN, [("zz-best", 1, 1)], device=f"fan-{i}") for i in range(40)])
    wait_for(lambda: drained(collector))
    listed = ids(get(env, "/products/top?window=1h&metric=purchases&limit=100"
                      f"&person=device:{buyer}"))
    assert "zz-best" not in listed and "aa-4" not in listed and "aa-3" not in listed
    assert "aa-0" in listed  # the oldest purchase, past the limit
