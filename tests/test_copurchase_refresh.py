"""collector/identity/copurchase_refresh.py: co-purchase pairs follow purchases and identity
changes within seconds, without waiting for the view's 10-minute schedule; a flush without
purchases asks for nothing, and one without purchases or identity links does not even look;
a view stopped or a user refused SYSTEM gets no request."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from collector.identity.changes import tops
from collector.identity.copurchase_refresh import TABLES, VIEW, CopurchaseRefresh, may_pair
from collector.ingest.accept import events_record, server_context
from tests.helpers import make_client, send_batch, wait_for
from tests.test_copurchase import purchase
from tests.test_identity import identify, uid
from tests.test_products import MIN, hit

SITE = "cpr-shop"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("copurchase-refresh"),
                                    demo_site=False, copurchase_refresh_seconds=0.5)
    # A refresh of the session's store (every module's rows) takes seconds: the default
    # share would space two refreshes a minute or more apart.
    collector.copurchase.cost_share = 1
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


def a_purchase() -> dict:
    return purchase(at(1), [uid("p")], device=uid("d"))


def test_a_new_purchase_is_paired_within_seconds(env):
    client, collector, _ = env
    asked = collector.copurchase.asked
    a, b, phone = uid("pa"), uid("pb"), uid("phone")
    send(env, [purchase(at(30), [a], device=phone), purchase(at(20), [b], device=phone)])
    assert wait_for(lambda: pairs(env, [a, b]), timeout=30) == {tuple(sorted((a, b)))}
    assert collector.copurchase.asked > asked
    metrics = client.get("/metrics").text
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
    collector.store.execute(f"SYSTEM WAIT VIEW {VIEW}")
    assert pairs(env, [a, b]) == set()  # two devices nobody linked: two buyers
    send(env, [identify(anna, phone, at(10)), identify(anna, laptop, at(5))])
    assert wait_for(lambda: pairs(env, [a, b]), timeout=30) == {tuple(sorted((a, b)))}


def test_only_a_purchase_among_new_events_counts(env):
    _, collector, _ = env
    look = CopurchaseRefresh(collector.store, gap=1)
    before = tops(collector.store, TABLES)["events"]
    send(env, [hit("view_item", MIN, [(uid("v"), 5, 1)], device=uid("d")),
               hit("page_view", MIN, [], device=uid("d"))])
    viewed = tops(collector.store, TABLES)["events"]
    assert viewed > before and not look.purchased(before, viewed)
    send(env, [a_purchase()])
    bought = tops(collector.store, TABLES)["events"]
    assert look.purchased(viewed, bought) and look.purchased(before, bought)
    assert not look.purchased(bought, bought)


def stored_rows(env, events: list[dict]) -> bytes:
    """The rows the flusher inserts for ``events``, as the spool holds them."""
    _, collector, _ = env
    site = collector.sites.get(SITE)
    ctx = server_context(collector, site, {}, dt.datetime.now(dt.UTC))
    record, _ = events_record(collector, site, events, ctx)
    return record[record.index(b"\n") + 1:]


def test_a_batch_without_purchases_or_links_is_not_looked_at(env):
    """Under a load of views, each flush's look cost 3 statements (a pixel load: 4% of the
    collector's CPU in its Python thread alone); the flusher's rows say when one is needed.
    A false positive (the word in a URL) only costs the look every batch cost before."""
    d = uid("d")
    assert not may_pair(stored_rows(env, [hit("view_item", MIN, [(uid("v"), 5, 1)], device=d),
                                          hit("page_view", MIN, [], device=d)]))
    assert not may_pair(b"")
    assert may_pair(stored_rows(env, [a_purchase()]))
    assert may_pair(stored_rows(env, [identify(uid("anna"), d, at(1))]))
    assert may_pair(stored_rows(env, [{**identify(uid("anna"), d, at(1)), "type": "alias"}]))


def test_only_batches_that_may_pair_wake_the_look(env):
    _, collector, _ = env
    look = CopurchaseRefresh(collector.store, gap=0, poll=3600)  # (no thread: no race)
    look.stored(stored_rows(env, [hit("page_view", MIN, [], device=uid("d"))]))
    assert not look._wake.is_set()
    look.stored(stored_rows(env, [a_purchase()]))
    assert look._wake.is_set()


def test_an_admins_operation_wakes_the_look(env, monkeypatch):
    """A merge, split, undo or erasure changes whose purchases are whose: looked at soon,
    as a stored purchase is, not at the next poll."""
    client, collector, _ = env
    site = uid("cpr-admin")
    _, keys = collector.sites.create(site)
    base = f"/api/v1/sites/{site}"
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    phone, laptop, anna = uid("phone"), uid("laptop"), uid("anna")
    send_batch(client, collector, keys["write"],
               [identify(anna, phone, at(3)), hit("page_view", MIN, [], device=laptop)])
    woken: list[bool] = []  # (from here: the batch above woke it as a link)
    monkeypatch.setattr(collector.copurchase, "changed", lambda: woken.append(True))
    r = client.post(f"{base}/identity/merge", headers=admin,
                    json={"from": f"device:{laptop}", "into": f"user:{anna}"})
    assert r.status_code == 201, r.text
    assert len(woken) == 1
    r = client.post(f"{base}/identity/split", headers=admin, json={"id": f"device:{laptop}"})
    assert r.status_code == 201, r.text
    assert len(woken) == 2
    r = client.post(f"{base}/identity/operations/{r.json()['op_id']}/undo", headers=admin,
                    json={})
    assert r.status_code == 201, r.text
    assert len(woken) == 3
    r = client.post(f"{base}/privacy/erase", headers=admin, json={"id": f"user:{anna}"})
    assert r.status_code == 200, r.text
    assert len(woken) == 4


def test_rows_another_collector_stored_are_looked_for(env):
    """The collector hosting the engine refreshes for purchases that others stored through
    it (tagwerk's SQL interface refuses them SYSTEM statements): its looks poll."""
    _, collector, _ = env
    hosting = CopurchaseRefresh(collector.store, gap=0.1, poll=0.2, cost_share=1,
                                last_look=False)
    hosting.start()
    try:
        send(env, [a_purchase()])
        wait_for(lambda: hosting.asked >= 1, timeout=30)
        assert hosting.last_error is None
    finally:
        hosting.stop()


def test_the_flushers_last_batch_gets_a_look_at_stop(env):
    """Stopped after the flusher, a look asks for what its last batch stored, whatever the
    gap (a ClickHouse server does not refresh when the collector starts again)."""
    _, collector, _ = env
    look = CopurchaseRefresh(collector.store, gap=3600, poll=3600)
    look.start()
    send(env, [a_purchase()])
    look.stored(stored_rows(env, [a_purchase()]))
    look.stop()
    assert look.asked == 1 and look.last_error is None


def manual_look(store) -> CopurchaseRefresh:
    """A look without its thread (stopped at once): the test looks itself."""
    look = CopurchaseRefresh(store, gap=0, cost_share=0, last_look=False)
    look.start()
    look.stop()
    return look


def asked_once_started(look: CopurchaseRefresh, store, change: Callable[[], Any]) -> None:
    """What ``change`` made while the view was stopped (as a migration does) gets no
    request, and one once the view is started again."""
    store.execute(f"SYSTEM STOP VIEW {VIEW}")
    try:
        change()
        look._look(any_time=False)
        assert look.asked == 0
    finally:
        store.execute(f"SYSTEM START VIEW {VIEW}")

    def asked() -> int:
        look._look(any_time=False)
        return look.asked
    assert wait_for(asked, timeout=30) == 1


def test_a_stopped_view_gets_no_request_and_the_change_waits(env):
    _, collector, _ = env
    look = manual_look(collector.store)
    asked_once_started(look, collector.store, lambda: send(env, [a_purchase()]))


def test_without_block_numbers_to_follow_a_stored_batch_is_the_change(env):
    """Replicated or shared tables: every batch this collector stored counts, and one the
    view could not be refreshed for (stopped) still counts at the next look."""
    _, collector, _ = env
    store = collector.store
    look = manual_look(store)
    look._follow = False
    look._look(any_time=False)
    assert look.asked == 0  # nothing stored
    # (as the thread notes a batch)
    asked_once_started(look, store, lambda: setattr(look, "_stored_since", True))
    store.execute(f"SYSTEM WAIT VIEW {VIEW}")
    look._look(any_time=False)
    assert look.asked == 1  # asked for once


def test_a_user_refused_system_statements_stops_asking(server_store, env):
    look = CopurchaseRefresh(server_store, gap=0, poll=0.1, cost_share=0, last_look=False)
    look.start()
    try:
        send(env, [a_purchase()])
        look.stored(stored_rows(env, [a_purchase()]))
        wait_for(lambda: look.refused, timeout=30)
        look._thread.join(5)
        assert not look._thread.is_alive() and look.asked == 0
    finally:
        look.stop()


def test_refreshes_take_a_bounded_share_of_a_core():
    look = CopurchaseRefresh(store=None, gap=10)  # type: ignore[arg-type]  # (no statement)
    assert look.due(0.2, ago=3) == 7  # a small store: the gap
    assert look.due(3.0, ago=3) == 57  # 10 million events: 20 times the refresh
    look._asked_at = time.monotonic() - 1  # asked here since
    assert 8.9 < look.due(0.2, ago=100) <= 9
