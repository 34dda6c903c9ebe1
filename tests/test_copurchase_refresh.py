"""collector/api/copurchase_refresh.py: co-purchase pairs follow purchases and identity
changes within seconds, without waiting for the view's 10-minute schedule, and a flush
without purchases asks for no refresh."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.api.copurchase_refresh import COST_SHARE, CopurchaseRefresh
from tests.helpers import make_client, send_batch, wait_for
from tests.test_copurchase import purchase
from tests.test_identity import identify, uid
from tests.test_products import MIN, hit

SITE = "cpr-shop"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("copurchase-refresh"),
                                    demo_site=False, copurchase_refresh_seconds=0.5)
    with client:
        _, keys = collector.sites.create(SITE)
        yield client, collector, keys["write"]


def send(env, events):
    client, collector, key = env
    send_batch(client, collector, key, events)


def pairs(env, products) -> set[tuple[str, str]]:
    """The stored pairs among ``products``, each in one order (no refresh asked here)."""
    _, collector, _ = env
    return {(row["a"], row["b"]) for row in collector.store.rows(
        "SELECT product_id AS a, other_id AS b FROM tagwerk.copurchase_pairs "
        "WHERE site_id = {site:String} AND product_id IN {p:Array(String)} AND a < b",
        {"site": SITE, "p": products})}


def at(minutes: int) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)).isoformat()


def test_a_new_purchase_is_paired_within_seconds(env):
    _, collector, _ = env
    asked = collector.copurchase.asked
    a, b, phone = uid("pa"), uid("pb"), uid("phone")
    send(env, [purchase(at(30), [a], device=phone), purchase(at(20), [b], device=phone)])
    assert wait_for(lambda: pairs(env, [a, b]), timeout=30) == {tuple(sorted((a, b)))}
    assert collector.copurchase.asked > asked
    metrics = env[0].get("/metrics").text
    assert f"tagwerk_copurchase_refreshes_total {collector.copurchase.asked}" in metrics
    assert "tagwerk_copurchase_refresh_seconds " in metrics


def test_a_login_that_joins_two_buyers_pairs_their_purchases(env):
    """No purchase is new: the identity graph's new links alone change whose the two
    anonymous purchases were, and the refresh follows them."""
    _, collector, _ = env
    a, b, phone, laptop, anna = uid("pa"), uid("pb"), uid("phone"), uid("laptop"), uid("anna")
    asked = collector.copurchase.asked
    send(env, [purchase(at(50), [a], device=phone), purchase(at(40), [b], device=laptop)])
    wait_for(lambda: collector.copurchase.asked > asked, timeout=30)
    collector.store.execute("SYSTEM WAIT VIEW tagwerk.copurchase_pairs_mv")
    assert pairs(env, [a, b]) == set()  # two devices nobody linked: two buyers
    send(env, [identify(anna, phone, at(10)), identify(anna, laptop, at(5))])
    assert wait_for(lambda: pairs(env, [a, b]), timeout=30) == {tuple(sorted((a, b)))}


def test_only_a_purchase_among_new_events_counts(env):
    _, collector, _ = env
    look = CopurchaseRefresh(collector.store, gap=1)
    before = look._state()["events"]
    send(env, [hit("view_item", MIN, [(uid("v"), 5, 1)], device=uid("d")),
               hit("page_view", MIN, [], device=uid("d"))])
    viewed = look._state()["events"]
    assert viewed > before and not look.purchased(before, viewed)
    send(env, [purchase(at(1), [uid("p")], device=uid("d"))])
    bought = look._state()["events"]
    assert look.purchased(viewed, bought) and look.purchased(before, bought)
    assert not look.purchased(bought, bought)


def test_refreshes_take_a_bounded_share_of_a_core():
    look = CopurchaseRefresh(store=None, gap=10)  # type: ignore[arg-type]  # (no statement)
    look._last = 100.0
    assert look.due(0.2) == 110.0  # a small store: the gap
    assert look.due(3.0) == 100.0 + COST_SHARE * 3.0  # 10 million events: a minute



def test_rows_another_collector_stored_are_looked_for(env):
    """The collector hosting the engine refreshes for purchases that others stored through
    it (tagwerk's SQL interface refuses them SYSTEM statements): its looks poll."""
    _, collector, _ = env
    hosting = CopurchaseRefresh(collector.store, gap=0.1, poll=0.2)
    hosting.start()
    try:
        a, b, phone = uid("pa"), uid("pb"), uid("phone")
        send(env, [purchase(at(3), [a], device=phone), purchase(at(2), [b], device=phone)])
        wait_for(lambda: hosting.asked >= 1, timeout=10)
        assert hosting.last_error is None
    finally:
        hosting.stop()
