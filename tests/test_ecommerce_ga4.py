"""GA4 e-commerce objects (``{"event": "purchase", "ecommerce": {...}}``), mapped onto the
order and item columns by the collector (collector/ingest/events.py ``_ecommerce``): through
POST /collect on both paths (see helpers.on_path), the batch API, and refused on the pixel."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from collector.enrich.useragent import parse_agent
from collector.ingest.events import MAX_ITEMS, Context, EventError, normalize
from tests.helpers import drained, make_client, on_path, rows, wait_for

SITE = "ga4-test"
ORIGIN = "https://shop.example"


@pytest.fixture(scope="module", params=["asgi", "fast"])
def env(request, store, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"ga4-{request.param}")
    with on_path(request.param, store, data_dir) as (client, collector):
        if collector.sites.get(SITE) is None:
            collector.sites.create(SITE, [ORIGIN])
        yield client, collector


def post(client, body):
    return client.post("/collect", content=orjson.dumps(body),
                       headers={"Content-Type": "text/plain", "Origin": ORIGIN})


def stored(collector, marker: str, site: str = SITE) -> list[dict]:
    wait_for(lambda: drained(collector))
    return rows(collector.store, site, "props['marker'] = {m:String}", m=marker)


def hit(ecommerce, marker: str, event: str = "purchase", **fields):
    return {"site": SITE, "event": event, "consent": ["analytics"], "ecommerce": ecommerce,
            "props": {"marker": marker}, **fields}


def blank_item(**fields):
    return {"product_id": "", "name": "", "category": "", "brand": "", "variant": "",
            "price": 0.0, "quantity": 1, **fields}


def test_purchase_with_two_items(env):
    client, collector = env
    marker = uuid.uuid4().hex
    ecommerce = {
        "transaction_id": "T-1001", "value": "28.99", "currency": "eur", "coupon": "SUMMER",
        "shipping": 4.9, "tax": 3.1, "payment_type": "card", "affiliation": "web shop",
        "items": [
            {"item_id": 12345, "item_name": "Socks", "item_category": "Apparel",
             "item_brand": "Acme", "item_variant": "red", "price": "9.50", "quantity": "2",
             "index": 0, "item_list_name": "Related", "item_list_id": "rel", "discount": 1.0,
             "affiliation": "web shop", "item_category2": "Socks", "item_category5": "x",
             "location_id": "ChIJ", "promotion_id": None},
            {"item_id": "SKU-2", "item_name": "Hat", "price": 9.99, "quantity": 1},
        ],
    }
    response = post(client, hit(ecommerce, marker))
    assert response.status_code == 202, response.text
    [row] = wait_for(lambda: stored(collector, marker))
    assert (row["event"], row["order_id"], row["revenue"], row["currency"], row["coupon"]) == (
        "purchase", "T-1001", 28.99, "EUR", "SUMMER")
    assert row["items"] == [
        {"product_id": "12345", "name": "Socks", "category": "Apparel", "brand": "Acme",
         "variant": "red", "price": 9.5, "quantity": 2},
        blank_item(product_id="SKU-2", name="Hat", price=9.99),
    ]
    assert set(row["props"]) == {"marker"}  # the ignored GA4 keys are not kept anywhere


def test_view_item_without_transaction(env):
    client, collector = env
    marker = uuid.uuid4().hex
    ecommerce = {"currency": "USD", "value": 59.9, "item_list_id": "home",
                 "items": [{"item_id": "sku-9", "item_name": "Shoe", "price": 59.9}]}
    assert post(client, hit(ecommerce, marker, "view_item")).status_code == 202
    [row] = wait_for(lambda: stored(collector, marker))
    assert (row["event"], row["type"], row["order_id"], row["coupon"]) == (
        "view_item", "track", "", "")
    assert (row["revenue"], row["currency"]) == (59.9, "USD")
    assert row["items"] == [blank_item(product_id="sku-9", name="Shoe", price=59.9)]


def test_numbers_as_ids_and_empty_ecommerce(env):
    client, collector = env
    marker = uuid.uuid4().hex
    events = [
        hit({"transaction_id": 4711, "value": 10,
             "items": [{"item_id": 7.0, "item_variant": 42, "item_brand": 1.5,
                        "item_name": None, "price": 10}]}, marker, props={"marker": marker,
                                                                          "n": "1"}),
        hit({}, marker, "add_payment_info", props={"marker": marker, "n": "2"}),
        hit(None, marker, "page_view", props={"marker": marker, "n": "3"}),  # null: absent
    ]
    for event in events:
        del event["site"]
    response = client.post("/collect", content=orjson.dumps({"site": SITE, "events": events}),
                           headers={"Content-Type": "text/plain", "Origin": ORIGIN})
    assert response.status_code == 202, response.text
    got = wait_for(lambda: len(stored(collector, marker)) == 3 and stored(collector, marker))
    by_n = {row["props"]["n"]: row for row in got}
    assert (by_n["1"]["order_id"], by_n["1"]["revenue"]) == ("4711", 10.0)
    assert by_n["1"]["items"] == [blank_item(product_id="7", variant="42", brand="1.5",
                                             price=10.0)]
    for n in ("2", "3"):
        assert (by_n[n]["order_id"], by_n[n]["revenue"], by_n[n]["currency"],
                by_n[n]["items"]) == ("", 0.0, "", [])


def test_quantity_rules(env):
    client, collector = env
    marker = uuid.uuid4().hex
    # JavaScript's ~~quantity || 1, with negatives as 1 too.
    quantities = [(0, 1), (None, 1), ("missing", 1), (2.7, 2), ("3", 3), ("x", 1), (-2, 1),
                  ("2.9", 2), (" 4 ", 4), ("", 1), (True, 1), ([], 1), (0.5, 1), ("-3", 1),
                  ("1_000", 1), (5, 5)]
    items = []
    for n, (quantity, _) in enumerate(quantities):
        item = {"item_id": f"q{n}", "price": 1}
        if quantity != "missing":
            item["quantity"] = quantity
        items.append(item)
    assert post(client, hit({"items": items}, marker, "add_to_cart")).status_code == 202
    [row] = wait_for(lambda: stored(collector, marker))
    assert [item["quantity"] for item in row["items"]] == [want for _, want in quantities]
    assert [item["product_id"] for item in row["items"]] == [f"q{n}"
                                                             for n in range(len(quantities))]


BAD = [
    ("ecommerce a string", "x", {}, "event.ecommerce", "JSON object"),
    ("ecommerce a list", [{"items": []}], {}, "event.ecommerce", "JSON object"),
    ("items not a list", {"items": {"item_id": "a"}}, {}, "event.ecommerce.items", "list"),
    ("item not an object", {"items": [{"item_id": "a"}, "sku-2"]}, {},
     "event.ecommerce.items[1]", "must be an object"),
    ("bool item_id", {"items": [{"item_id": True}]}, {}, "event.ecommerce.items[0].item_id",
     "string or a number"),
    ("object item_name", {"items": [{"item_name": {"de": "Hut"}}]}, {},
     "event.ecommerce.items[0].item_name", "string or a number"),
    ("too many items", {"items": [{"item_id": str(n)} for n in range(MAX_ITEMS + 1)]}, {},
     "event.ecommerce.items", f"more than {MAX_ITEMS}"),
    ("oversized item name", {"items": [{"item_id": "a", "item_name": "x" * 257}]}, {},
     "event.ecommerce.items[0].item_name", "longer than 256"),
    ("item price", {"items": [{"item_id": "a", "price": "9,50"}]}, {},
     "event.ecommerce.items[0].price", "must be a number"),
    ("quantity beyond range", {"items": [{"item_id": "a", "quantity": 2**40}]}, {},
     "event.ecommerce.items[0]", "quantity"),
    ("value not a number", {"value": "lots"}, {}, "event.ecommerce.value", "number"),
    ("currency", {"currency": "EURO"}, {}, "event.ecommerce.currency", "ISO 4217"),
    ("transaction_id an object", {"transaction_id": {"id": 1}}, {},
     "event.ecommerce.transaction_id", "string"),
    ("transaction_id too long", {"transaction_id": "t" * 129}, {},
     "event.ecommerce.transaction_id", "longer than 128"),
    ("coupon a number", {"coupon": 10}, {}, "event.ecommerce.coupon", "string"),
    ("with flat items", {"items": []}, {"items": [{"product_id": "a"}]}, "event.ecommerce",
     "either ecommerce or the flat fields"),
    ("with flat order_id", {"transaction_id": "T-1"}, {"order_id": "T-1"}, "event.ecommerce",
     "either ecommerce or the flat fields"),
    ("with flat revenue", {"value": 1}, {"revenue": 1}, "event.ecommerce", "'revenue'"),
]


@pytest.mark.parametrize(("ecommerce", "flat", "field", "message"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_ecommerce_is_refused(env, ecommerce, flat, field, message):
    client, collector = env
    wait_for(lambda: drained(collector))
    before = len(rows(collector.store, SITE))
    accepted = collector.metrics.hits_accepted.values.get(("collect",), 0)
    response = post(client, hit(ecommerce, uuid.uuid4().hex, **flat))
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert message in response.json()["error"]
    assert collector.metrics.hits_accepted.values.get(("collect",), 0) == accepted
    wait_for(lambda: drained(collector))
    assert len(rows(collector.store, SITE)) == before
    # ... and the process keeps serving.
    assert post(client, {"site": SITE, "event": "after"}).status_code == 202


@pytest.mark.parametrize("value", ["x", "%7B%22items%22%3A%5B%5D%7D", ""])
def test_pixel_cannot_carry_ecommerce(env, value):
    client, collector = env
    wait_for(lambda: drained(collector))
    before = len(rows(collector.store, SITE))
    response = client.get(f"/p.gif?site={SITE}&event=purchase&ecommerce={value}")
    assert response.status_code == 400
    assert response.json()["field"] == "event.ecommerce"
    assert "'ecommerce' must be a JSON object" in response.json()["error"]
    wait_for(lambda: drained(collector))
    assert len(rows(collector.store, SITE)) == before
    assert client.get(f"/p.gif?site={SITE}&event=after").status_code == 200


def test_batch_api(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("ga4-batch"))
    with client:
        _, keys = collector.sites.create("ga4-batch")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {keys['write']}"}
        marker = uuid.uuid4().hex
        event = {"event": "purchase", "channel": "pos", "user_id": 4711,
                 "consent": ["analytics"], "props": {"marker": marker},
                 "ecommerce": {"transaction_id": "pos-7", "value": 19.99, "currency": "chf",
                               "items": [{"item_id": "sku-1", "price": "19.99",
                                          "quantity": 1.0, "location_id": "store-3"}]}}
        response = client.post("/api/v1/batch", content=orjson.dumps({"events": [event]}),
                               headers=headers)
        assert response.status_code == 202, response.text
        [row] = wait_for(lambda: stored(collector, marker, "ga4-batch"))
        assert (row["channel"], row["order_id"], row["revenue"], row["currency"]) == (
            "pos", "pos-7", 19.99, "CHF")
        assert row["items"] == [blank_item(product_id="sku-1", price=19.99)]

        bad = {**event, "event_id": str(uuid.uuid4()), "currency": "CHF"}
        response = client.post("/api/v1/batch", headers=headers,
                               content=orjson.dumps({"events": [event, bad]}))
        assert response.status_code == 400
        assert response.json()["field"] == "events[1].ecommerce"
        assert "either ecommerce or the flat fields" in response.json()["error"]
        wait_for(lambda: drained(collector))
        assert len(stored(collector, marker, "ga4-batch")) == 1


def test_normalize_without_ecommerce_is_unchanged():
    """The flat fields alone give the same row as before; ecommerce is only looked up."""
    ctx = Context("s", dt.datetime.now(dt.UTC), "web", parse_agent("x"))
    flat = {"event": "purchase", "order_id": "o-1", "revenue": 5, "currency": "eur",
            "items": [{"product_id": "p", "price": "5", "quantity": 1}]}
    ga4 = {"event": "purchase", "ecommerce": {"transaction_id": "o-1", "value": 5,
                                              "currency": "eur", "items": [
                                                  {"item_id": "p", "price": "5"}]}}
    flat_row, _ = normalize(flat, ctx)
    ga4_row, _ = normalize(ga4, ctx)
    for name in ("order_id", "revenue", "currency", "coupon", "items"):
        assert flat_row[name] == ga4_row[name]
    with pytest.raises(EventError) as caught:
        normalize({**ga4, "coupon": "X"}, ctx)
    assert caught.value.field == "ecommerce"
