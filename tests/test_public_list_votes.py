"""One client cannot vote a product onto the shop's public lists.

Browsers' hits are not authenticated and device ids cost nothing to mint: a script on one
line sending views from fresh devices made any product the shop's most viewed, trending
and "popular" on its own pages. The browser-safe lists rank by clients (an IPv4 address, an
IPv6 /48), each counted once per product, hour and kind of interaction
(``collector/enrich/client_hash.py``, clickhouse/0047); the keyed lists keep the counts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import orjson
import pytest

from collector.api import recommend
from collector.enrich import client_hash
from collector.web import ratelimit
from tests.helpers import drained, served, wait_for
from tests.test_aggregates import refresh_minute, refresh_settled
from tests.test_collect import post
from tests.test_products import send

ORIGIN = "https://votes.example"
CONSENTED = ["analytics", "personalization"]


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    with served(store, tmp_path_factory.mktemp("votes"),
                trusted_proxies="127.0.0.1/32") as (client, collector):
        recommend.LIMITS[collector] = ratelimit.RateLimit(rate=1000, burst=1000)
        yield client, collector


def collect(client, site: str, address: str, events: list[dict]) -> None:
    client.cookies.clear()  # (each its own browser: a tw_id cookie would name the device)
    response = post(client, {"site": site, "events": events}, Origin=ORIGIN,
                    **{"X-Forwarded-For": address})
    assert response.status_code == 202, response.text


def view(product: str | list[str], device: str, event: str = "view_item") -> dict:
    products = [product] if isinstance(product, str) else product
    return {"event": event, "device_id": device, "session_id": device, "consent": CONSENTED,
            "items": [{"product_id": p, "price": 5} for p in products]}


def listed(client, site: str, path: str) -> list[str]:
    response = client.get(f"/t/{site}/recommend{path}")
    assert response.status_code == 200, response.text
    return [item["product_id"] for item in response.json()["items"]]


def keyed(client, read_key: str, site: str, path: str) -> list[dict]:
    response = client.get(f"/api/v1/sites/{site}/products{path}",
                          headers={"Authorization": f"Bearer {read_key}"})
    assert response.status_code == 200, response.text
    return response.json()["items"]


@pytest.mark.parametrize("stuffer", [
    ["203.0.113.9"],  # one IPv4 address
    [f"2001:db8:77:{n:x}::1" for n in range(12)],  # one IPv6 line: 12 of its /64s
], ids=["ipv4", "ipv6-48"])
def test_fresh_devices_from_one_client_do_not_outvote_three_shoppers(env, stuffer):
    client, collector = env
    name = f"votes-{len(stuffer)}"
    _, keys = collector.sites.create(name, [ORIGIN])
    for n, address in enumerate(("198.51.100.1", "198.51.100.2", "2001:db8:1::5")):
        collect(client, name, address, [view("honest", f"shopper-{n}")])
    # 12 fresh devices, 10 views, 2 carts and a purchase each, from one client.
    for n in range(12):
        device = f"minted-{n}"
        collect(client, name, stuffer[n % len(stuffer)],
                [view("stuffed", device)] * 10 + [view("stuffed", device, "add_to_cart")] * 2
                + [view("stuffed", device, "purchase")])
    wait_for(lambda: drained(collector))
    # The data team's lists count every hit.
    counts = keyed(client, keys["read"], name, "/top?window=24h")
    assert [(i["product_id"], i["views"]) for i in counts] == [("stuffed", 120), ("honest", 3)]
    # The shop's own pages: three shoppers outrank one client, however many devices.
    assert listed(client, name, "/top") == ["honest", "stuffed"]
    assert listed(client, name, "/trending?window=1h&baseline=7d") == ["honest", "stuffed"]


def test_views_dated_back_count_once_in_the_hour_they_came(env):
    """A browser may date its hits back (a queue the tag kept offline): one request of 30
    views, each an hour earlier, counted as 30 clients on the week's top (clickhouse/0051)."""
    client, collector = env
    name = "votes-dated"
    collector.sites.create(name, [ORIGIN])
    for n, address in enumerate(("198.51.100.70", "198.51.100.71", "198.51.100.72")):
        collect(client, name, address, [view("honest", f"shopper-{n}")])
    now = dt.datetime.now(dt.UTC)
    collect(client, name, "203.0.113.70", [
        {**view("dated", f"minted-{n}"),
         "ts": (now - dt.timedelta(hours=n)).isoformat(timespec="milliseconds")}
        for n in range(30)])
    wait_for(lambda: drained(collector))
    assert listed(client, name, "/top?window=7d") == ["honest", "dated"]


def test_fresh_devices_from_one_client_make_no_public_co_view_pair(env):
    """Pairs rank by the clients behind them, and need two persons' sessions of two clients:
    12 fresh devices viewing a pair from one line make none; two shoppers on two lines do."""
    client, collector = env
    name = "votes-pairs"
    collector.sites.create(name, [ORIGIN])
    for n, address in enumerate(("198.51.100.50", "2001:db8:50::1")):
        collect(client, name, address, [view("x", f"real-{n}"), view("z", f"real-{n}")])
    for n in range(12):
        collect(client, name, f"2001:db8:66:{n:x}::1",
                [view("x", f"fake-{n}"), view("y", f"fake-{n}")] * 3)
    wait_for(lambda: drained(collector))
    refresh_settled(collector.store)
    refresh_minute(collector.store, (name,), tables=("coview_pairs",))
    assert listed(client, name, "/related/x") == ["z"]
    assert listed(client, name, "/related/y") == []


def test_fresh_devices_buying_from_one_client_make_no_public_bought_together_pair(env):
    """A browser's purchase is as unauthenticated as its views: each fresh device is a
    buyer of its own, and two made a public "bought together" pair. A pair needs two
    buyers' clients (clickhouse/0050)."""
    client, collector = env
    name = "votes-bought"
    _, keys = collector.sites.create(name, [ORIGIN])
    for n, address in enumerate(("198.51.100.60", "198.51.100.61")):
        collect(client, name, address, [view(["x", "z"], f"buyer-{n}", "purchase")])
    for n in range(6):
        collect(client, name, "203.0.113.60", [view(["y", "w"], f"bot-{n}", "purchase")])
    # The shop's own systems are trusted: two customers' till purchases pair as before.
    send(client, keys["write"], [
        {**view(["t", "u"], f"till-{n}", "purchase"), "user_agent": "tagwerk-pos/1.0"}
        for n in range(2)])
    wait_for(lambda: drained(collector))
    refresh_minute(collector.store, (name,), tables=("copurchase_pairs",))
    assert listed(client, name, "/related/x?kind=co_purchase") == ["z"]
    assert listed(client, name, "/related/y?kind=co_purchase") == []
    assert listed(client, name, "/related/t?kind=co_purchase") == ["u"]
    bought = keyed(client, keys["read"], name, "/y/related?kind=co_purchase")
    assert [(i["product_id"], i["score"]) for i in bought] == [("w", 6)]  # (keyed: all)


def test_a_client_counts_once_an_hour_for_each_product_and_interaction(env):
    """Two shoppers on one line (a family, an office) count as one client: the price of
    the cap. Another hour, or another interaction, counts again."""
    client, collector = env
    name = "votes-hour"
    collector.sites.create(name, [ORIGIN])
    collect(client, name, "198.51.100.20", [view("office", "a"), view("office", "b")])
    collect(client, name, "198.51.100.20",
            [view("office", "a", "add_to_cart"), view("office", "b", "add_to_cart")])
    for n, address in enumerate(("198.51.100.21", "198.51.100.22")):
        collect(client, name, address, [view("pair", f"p{n}"), view("pair", f"q{n}")])
    wait_for(lambda: drained(collector))
    # office: 1 viewing client; pair: 2 (add-to-carts rank add_to_carts, not views).
    assert listed(client, name, "/top") == ["pair", "office"]
    assert listed(client, name, "/top?metric=add_to_carts") == ["office"]


def test_the_hash_keeps_no_address_and_changes_every_day(env):
    """What is stored: a keyed hash of the client's network with the day's random salt,
    which is deleted once the day is over (the address cannot be recovered from the
    hash afterwards); another site's hash of the same client differs."""
    client, collector = env
    salts = collector.client_salts
    today = salts.salt_of(client_hash.today())
    one = salts.hash_of("s1", "198.51.100.7", today)
    assert one == salts.hash_of("s1", "198.51.100.7", today) != 0
    assert one != salts.hash_of("s2", "198.51.100.7", today)
    assert one != salts.hash_of("s1", "198.51.100.8", today)
    assert one != salts.hash_of("s1", "198.51.100.7", b"\x01" * 32)
    # An IPv6 /48 is one client; an IPv4-mapped address is its IPv4 address.
    assert salts.hash_of("s1", "2001:db8:5:1::1", today) == \
        salts.hash_of("s1", "2001:db8:5:ffff::2", today)
    assert salts.hash_of("s1", "::ffff:198.51.100.7", today) == one
    # Not public (a proxy nobody declared trusted, the shop's own systems): no client.
    for address in ("10.1.2.3", "127.0.0.1", "", "not-an-address"):
        assert salts.hash_of("s1", address, today) == 0
    assert ipaddress.ip_address("198.51.100.7")  # (documentation ranges count as public)


def test_what_each_hit_stores(env):
    """A client's hash on its hits with analytics consent only, one per client; none on a
    hit without consent, from an address that is not public, or from the batch API."""
    client, collector = env
    name = "votes-stored"
    _, keys = collector.sites.create(name, [ORIGIN])
    collect(client, name, "198.51.100.30", [view("a", "d1"), view("b", "d2")])
    collect(client, name, "2001:db8:9:1::1", [view("a", "d3")])
    collect(client, name, "2001:db8:9:2::1", [view("b", "d4")])  # (the same /48)
    collect(client, name, "198.51.100.30", [{**view("a", "d5"), "consent": []}])
    collect(client, name, "10.0.0.7", [view("a", "d6")])
    send(client, keys["write"], [{**view("a", "d7"), "user_agent": "tagwerk-pos/1.0"}])
    wait_for(lambda: drained(collector))
    stored = collector.store.rows(
        "SELECT device_id, client_hash FROM tagwerk.events WHERE site_id = {s:String} "
        "ORDER BY received_at, device_id", {"s": name})
    hashes = {row["device_id"]: row["client_hash"] for row in stored}
    assert hashes[""] == 0  # (no consent: no device id either)
    assert hashes["d6"] == hashes["d7"] == 0
    assert hashes["d1"] == hashes["d2"] != 0
    assert hashes["d3"] == hashes["d4"] not in (0, hashes["d1"])
    # The export hands it to the data team with every other column.
    export = client.get(f"/api/v1/sites/{name}/export?format=ndjson",
                        headers={"Authorization": f"Bearer {keys['read']}"})
    assert {orjson.loads(line)["client_hash"] for line in export.text.splitlines()} == \
        {0, hashes["d1"], hashes["d3"]}


def test_browser_hits_without_a_client_are_counted_in_the_metrics(env):
    """Behind a proxy nobody declared trusted every browser hit comes from its private
    address: no client, and the public lists count such hits by device. /metrics says how
    many, so that an operator sees it."""
    client, collector = env
    name = "votes-metric"
    collector.sites.create(name, [ORIGIN])

    def without() -> float:
        text = client.get("/metrics").text
        [line] = [x for x in text.splitlines()
                  if x.startswith("tagwerk_browser_hits_without_client_total ")]
        return float(line.split()[1])

    before = without()
    collect(client, name, "10.0.0.9", [view("a", "d1"), view("b", "d1")])
    assert without() == before + 2
    collect(client, name, "198.51.100.90", [view("a", "d2")])
    assert without() == before + 2
