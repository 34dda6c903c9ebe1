"""Explicit merges and splits under the site's retention (collector/privacy/retention.py):
an operation goes once none of its subjects has a link, a person_hits row or a raw event
left; never while one is active, so that no active person is split or unmerged."""

from __future__ import annotations

import uuid

import orjson
import pytest

from collector import service
from collector.identifiers import person_id
from collector.privacy import retention
from collector.privacy.retention import expire
from tests.helpers import make_client, send_batch, wait_for

ALL = ["analytics", "personalization"]
TABLES = ("identity_merges", "identity_overrides", "identity_operations")


class Background:
    """The retention as the module's collector sees it (``service.retention``). Its own
    pass (Collector._apply_retention), put off while its spool has a backlog, could come in
    the middle of a test and take rows the test's own pass counts (seen once under the
    whole suite's load): it passes only while a test turns it on."""

    EVERY = retention.EVERY
    on = False

    def expire(self, store, site):
        return retention.expire(store, site) if self.on else dict.fromkeys(TABLES, 0)


BACKGROUND = Background()


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service, "retention", BACKGROUND)
        client, collector = make_client(store, tmp_path_factory.mktemp("retention"),
                                        demo_site=False)
        with client:
            yield client, collector


def new_site(env, days):
    """A site keeping ``days``, its keys, and a suffix for names of its own."""
    client, collector = env
    n = uuid.uuid4().hex[:6]
    site, keys = collector.sites.create(f"ret{days}-{n}", retention_days=days)
    return site, keys, n


def login(user, device, consent=ALL):
    return {"event": "login", "type": "identify", "user_id": user, "device_id": device,
            "consent": consent}


def call(env, site, keys, path, body=None, key="admin"):
    client, _ = env
    auth = {"Authorization": f"Bearer {keys[key]}", "Content-Type": "application/json"}
    base = f"/api/v1/sites/{site.site_id}"
    if body is None:
        return client.get(base + path, headers=auth)
    return client.post(base + path, content=orjson.dumps(body), headers=auth)


def operate(env, site, keys, path, body):
    r = call(env, site, keys, f"/identity/{path}", body)
    assert r.status_code == 201, r.text
    return r.json()["op_id"]


def resolved(env, site, keys, ident):
    r = call(env, site, keys, f"/persons/{ident}", key="read")
    assert r.status_code == 200, r.text
    return r.json()


def leave(store, site_id, pairs):
    """What the retention's TTL does once the identifiers were last seen longer ago than the
    site keeps: their links, person_hits rows and raw events go."""
    params = {"s": site_id, "pairs": pairs,
              "persons": [person_id(site_id, "user", p[5:]) for p in pairs
                          if p.startswith("user:")]}
    named = ("hasAny(arrayConcat([concat('user:', user_id), concat('device:', device_id)], "
             "arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers))), "
             "{pairs:Array(String)})")
    for table, where in (
            ("identity_links_by_identifier", "(concat(toString(kind), ':', id) IN "
             "{pairs:Array(String)} OR person_id IN {persons:Array(String)})"),
            ("identity_links_by_person", "(concat(toString(kind), ':', id) IN "
             "{pairs:Array(String)} OR person_id IN {persons:Array(String)})"),
            ("person_hits", "key IN {pairs:Array(String)}"),
            ("events", named)):
        store.execute(f"DELETE FROM tagwerk.{table} WHERE site_id = {{s:String}} AND {where}",
                      params)


def kept(store, site_id):
    return {t: int(store.rows(f"SELECT count() AS n FROM tagwerk.{t}"
                              f"{'' if t == 'identity_operations' else ' FINAL'} "
                              "WHERE site_id = {s:String}", {"s": site_id})[0]["n"])
            for t in TABLES}


def naming(store, site_id, text):
    """Rows of the operations' tables that name ``text`` anywhere."""
    return sum(int(store.rows(
        f"SELECT count() AS n FROM tagwerk.{t} WHERE site_id = {{s:String}} AND "
        "position(formatRow('TSV', *), {w:String}) > 0", {"s": site_id, "w": text})[0]["n"])
        for t in TABLES)


def test_operations_go_with_their_subjects_and_never_split_active_persons(env):
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    users = {name: f"{name}-{n}" for name in (
        "gone", "into", "c1", "c2", "target", "member", "mate", "root", "server", "owner")}
    events = [login(u, f"{name}-dev-{n}") for name, u in users.items() if name != "server"]
    # A server-side customer: raw events only (no device, so no link; no personalization,
    # so no person_hits row), as a till sends them.
    events.append({"event": "purchase", "user_id": users["server"], "consent": ["analytics"],
                   "order_id": f"o-{n}", "revenue": 5, "currency": "EUR"})
    # An analytics-only device: raw events only too.
    events.append({"event": "page_view", "device_id": f"anon-{n}", "consent": ["analytics"]})
    events.append(login(users["owner"], f"split-gone-{n}"))
    events.append(login(users["owner"], f"split-kept-{n}"))
    send_batch(client, collector, keys["write"], events)

    def user(name):
        return f"user:{users[name]}"

    gone_op = operate(env, site, keys, "merge", {"from": user("gone"), "into": user("into")})
    operate(env, site, keys, "merge", {"from": user("c1"), "into": user("target")})
    operate(env, site, keys, "merge", {"from": user("c2"), "into": user("target")})
    operate(env, site, keys, "merge", {"from": user("member"), "into": user("mate")})
    mates_op = operate(env, site, keys, "merge", {"from": user("mate"), "into": user("root")})
    operate(env, site, keys, "merge", {"from": user("server"),
                                         "into": user("into")})
    operate(env, site, keys, "merge", {"from": f"device:anon-{n}", "into": user("into")})
    split_gone = operate(env, site, keys, "split", {"id": f"device:split-gone-{n}"})
    operate(env, site, keys, "split", {"id": f"device:split-kept-{n}"})
    for pair in (user("server"), f"device:anon-{n}"):
        assert not store.rows(
            "SELECT 1 FROM tagwerk.identity_links_by_identifier WHERE site_id = {s:String} "
            "AND (concat(toString(kind), ':', id) = {p:String} OR concat('user:', user_id) "
            "= {p:String}) UNION ALL SELECT 1 FROM tagwerk.person_hits "
            "WHERE site_id = {s:String} AND key = {p:String}", {"s": site.site_id, "p": pair})
    before = kept(store, site.site_id)
    assert expire(store, site) == dict.fromkeys(TABLES, 0)  # everyone active: all stay
    assert kept(store, site.site_id) == before

    leave(store, site.site_id, [user("gone"), f"device:gone-dev-{n}", user("target"),
                                f"device:target-dev-{n}", user("member"),
                                f"device:member-dev-{n}", f"device:split-gone-{n}"])
    removed = expire(store, site)
    # The merge of the gone person and the split of the gone device go with their audit
    # rows, and the audit row of the member's merge that a later one superseded (its rows
    # are the later one's now); the server-side customer and the analytics-only device,
    # with raw events only, stay.
    assert removed == {"identity_merges": 1, "identity_overrides": 1,
                       "identity_operations": 3}, removed
    assert naming(store, site.site_id, users["gone"]) == 0
    assert naming(store, site.site_id, f"split-gone-{n}") == 0
    into = resolved(env, site, keys, user("into"))
    assert sorted(m["id"] for m in into["merged"]) == [f"anon-{n}", users["server"]], into
    # Members still active stay one person when their target's anchor left.
    c1, c2 = resolved(env, site, keys, user("c1")), resolved(env, site, keys, user("c2"))
    assert c1["person_id"] == c2["person_id"] == person_id(site.site_id, "user",
                                                          users["target"])
    # An operation whose gone member moved with an active one stays whole, and undoes.
    assert resolved(env, site, keys, user("mate"))["person_id"] == person_id(
        site.site_id, "user", users["root"])
    r = call(env, site, keys, f"/identity/operations/{mates_op}/undo", {})
    assert r.status_code == 201, r.text
    assert resolved(env, site, keys, user("mate"))["person_id"] == person_id(
        site.site_id, "user", users["mate"])
    # The split of the active device stays; the gone one's is gone with its audit row.
    assert resolved(env, site, keys, f"device:split-kept-{n}")["person_id"] == person_id(
        site.site_id, "device", f"split-kept-{n}")
    r = call(env, site, keys, f"/identity/operations/{split_gone}/undo", {})
    assert r.status_code == 404, r.text
    r = call(env, site, keys, f"/identity/operations/{gone_op}/undo", {})
    assert r.status_code == 404, r.text
    assert resolved(env, site, keys, user("server"))["person_id"] == person_id(
        site.site_id, "user", users["into"])

    # Once their raw events went too, the server-side customer's and the device's go.
    leave(store, site.site_id, [user("server"), f"device:anon-{n}", user("c1"),
                                f"device:c1-dev-{n}"])
    removed = expire(store, site)
    # The merges of the server-side customer and the device, and c1's into the target:
    # the target's anchor having left, its members go when they do, and only then.
    assert removed == {"identity_merges": 3, "identity_overrides": 0,
                       "identity_operations": 3}, removed
    assert resolved(env, site, keys, user("c2"))["person_id"] == person_id(
        site.site_id, "user", users["target"])
    leave(store, site.site_id, [user("c2"), f"device:c2-dev-{n}"])
    expire(store, site)
    for name in ("gone", "target", "c1", "c2", "server"):
        assert naming(store, site.site_id, users[name]) == 0, name
    assert naming(store, site.site_id, f"anon-{n}") == 0
    # The gone member moved with its active mate stays named as long as the mate is active.
    assert naming(store, site.site_id, users["member"])
    assert expire(store, site) == dict.fromkeys(TABLES, 0)  # nothing more to do


def merged_then_gone(env, days):
    """A site keeping ``days``, where one customer was merged into another and then left;
    the site, its keys and the remaining customer (whose profile listed the merge)."""
    client, collector = env
    site, keys, n = new_site(env, days)
    send_batch(client, collector, keys["write"], [login(f"a-{n}", f"da-{n}"),
                                                  login(f"b-{n}", f"db-{n}")])
    operate(env, site, keys, "merge", {"from": f"user:a-{n}", "into": f"user:b-{n}"})
    assert resolved(env, site, keys, f"user:b-{n}")["merged"]
    leave(collector.store, site.site_id, [f"user:a-{n}", f"device:da-{n}"])
    return site, keys, f"user:b-{n}"


def test_a_site_keeping_everything_keeps_its_operations(env):
    store = env[1].store
    site, _, _ = merged_then_gone(env, 0)
    assert expire(store, site) == {}
    assert kept(store, site.site_id)["identity_merges"] == 1


def test_the_collector_applies_the_retention_in_the_background(env, monkeypatch):
    """Its pass (hourly; here at its next look, every 2 s), and answers about persons kept
    in memory follow it."""
    store = env[1].store
    site, keys, into = merged_then_gone(env, 3)
    monkeypatch.setattr(BACKGROUND, "EVERY", 0.0)
    monkeypatch.setattr(BACKGROUND, "on", True)
    wait_for(lambda: kept(store, site.site_id)["identity_merges"] == 0, timeout=15)
    wait_for(lambda: not resolved(env, site, keys, into)["merged"], timeout=5)


def test_a_merge_into_a_device_stays_while_the_device_is_active(env):
    """An old device merged into a new device's person makes the new one "claimed": its
    hits before a login stay with the merged persons. The old device leaving must not hand
    them to the customer who logged in on the new one later."""
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    old, new = f"old-{n}", f"new-{n}"
    send_batch(client, collector, keys["write"], [
        {"event": "page_view", "device_id": d, "consent": ALL} for d in (old, new)])
    operate(env, site, keys, "merge", {"from": f"device:{old}", "into": f"device:{new}"})
    send_batch(client, collector, keys["write"], [login(f"u-{n}", new)])
    leave(store, site.site_id, [f"device:{old}"])
    assert expire(store, site) == dict.fromkeys(TABLES, 0)
    assert kept(store, site.site_id)["identity_merges"] == 1
    leave(store, site.site_id, [f"device:{new}"])
    assert expire(store, site)["identity_merges"] == 1


def test_each_kind_of_trace_keeps_an_operation_alone(env):
    """Any one thing still naming a subject keeps its operation: a person_hits row alone (a
    device browsing with consent, never logged in, whose raw events went first), or a raw
    event naming it under a kind of the site's own (a till's loyalty card) alone."""
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    device, card, owner = f"browser-{n}", f"L-{n}", f"owner-{n}"
    send_batch(client, collector, keys["write"], [
        login(owner, f"owner-dev-{n}"),
        {"event": "view_item", "device_id": device, "consent": ALL,
         "items": [{"product_id": f"p-{n}"}]},
        {"event": "purchase", "identifiers": {"loyalty": card}, "consent": ["analytics"],
         "order_id": f"o-{n}", "revenue": 5, "currency": "EUR"}])
    by_device = operate(env, site, keys, "merge", {"from": f"device:{device}",
                                                   "into": f"user:{owner}"})
    by_card = operate(env, site, keys, "merge", {"from": f"loyalty:{card}",
                                                 "into": f"user:{owner}"})
    for pair in (f"device:{device}", f"loyalty:{card}"):
        assert not store.rows(
            "SELECT 1 FROM tagwerk.identity_links_by_identifier WHERE site_id = {s:String} "
            "AND concat(toString(kind), ':', id) = {p:String}", {"s": site.site_id, "p": pair})
    assert store.rows("SELECT 1 FROM tagwerk.person_hits WHERE site_id = {s:String} "
                      "AND key = {p:String}", {"s": site.site_id, "p": f"device:{device}"})
    assert not store.rows("SELECT 1 FROM tagwerk.person_hits WHERE site_id = {s:String} "
                          "AND key = {p:String}", {"s": site.site_id, "p": f"loyalty:{card}"})
    # The device's raw events leave before its person_hits rows do.
    store.execute("DELETE FROM tagwerk.events WHERE site_id = {s:String} "
                  "AND device_id = {d:String}", {"s": site.site_id, "d": device})
    assert expire(store, site) == dict.fromkeys(TABLES, 0)
    for op in (by_device, by_card):
        assert naming(store, site.site_id, op)
    leave(store, site.site_id, [f"device:{device}"])
    assert expire(store, site) == {"identity_merges": 1, "identity_overrides": 0,
                                   "identity_operations": 1}
    assert naming(store, site.site_id, by_device) == 0
    assert resolved(env, site, keys, f"loyalty:{card}")["person_id"] == person_id(
        site.site_id, "user", owner)
    leave(store, site.site_id, [f"loyalty:{card}"])
    assert expire(store, site)["identity_merges"] == 1
    assert naming(store, site.site_id, card) == 0


def test_a_split_that_cleared_a_merge_goes_with_the_merge(env):
    """A split of a device merged into a customer clears that merge (a row of the split's
    own): while the device is active both operations stay, and the split undoes; once it
    left, the split's rows, the merge's and both audit rows go."""
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    device, owner = f"tablet-{n}", f"owner-{n}"
    send_batch(client, collector, keys["write"], [
        login(owner, f"owner-dev-{n}"),
        {"event": "page_view", "device_id": device, "consent": ALL}])
    merged = operate(env, site, keys, "merge", {"from": f"device:{device}",
                                                "into": f"user:{owner}"})
    split = operate(env, site, keys, "split", {"id": f"device:{device}"})
    assert expire(store, site) == dict.fromkeys(TABLES, 0)
    assert call(env, site, keys, f"/identity/operations/{split}/undo", {}).status_code == 201
    assert resolved(env, site, keys, f"device:{device}")["person_id"] == person_id(
        site.site_id, "user", owner)
    split = operate(env, site, keys, "split", {"id": f"device:{device}"})
    leave(store, site.site_id, [f"device:{device}"])
    # The merge row (cleared by the split, restored by its undo, cleared again: versions
    # a background merge may have joined), the override's, and the audit rows of the
    # merge, the split, its undo and the second split.
    assert expire(store, site)["identity_operations"] == 4
    assert kept(store, site.site_id) == dict.fromkeys(TABLES, 0)
    assert naming(store, site.site_id, device) == 0
    for op in (merged, split):
        assert call(env, site, keys, f"/identity/operations/{op}/undo", {}).status_code == 404


def test_a_row_written_during_a_pass_stays(env, monkeypatch):
    """Only the row versions the pass read go, bounded per person: a merge of a gone person
    written (by another collector, its clock behind) between the pass's read and its delete
    stays, even when another gone person's row the pass read is newer."""
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    send_batch(client, collector, keys["write"], [
        login(f"{who}-{n}", f"{who}-dev-{n}") for who in ("a", "b", "into")])
    operate(env, site, keys, "merge", {"from": f"user:a-{n}", "into": f"user:into-{n}"})
    operate(env, site, keys, "merge", {"from": f"user:b-{n}", "into": f"user:into-{n}"})
    rows = {r["id"]: r for r in store.rows(
        "SELECT id, person_id, version FROM tagwerk.identity_merges FINAL "
        "WHERE site_id = {s:String}", {"s": site.site_id})}
    a, b = rows[f"a-{n}"], rows[f"b-{n}"]
    assert int(a["version"]) < int(b["version"])
    leave(store, site.site_id, [f"user:a-{n}", f"device:a-dev-{n}", f"user:b-{n}",
                                f"device:b-dev-{n}"])
    late = str(uuid.uuid4())
    real = retention.delete_settings

    def meanwhile(store_):
        # Another collector's merge of a's person, versioned between a's row and b's.
        store.insert("tagwerk.identity_merges", orjson.dumps({
            "site_id": site.site_id, "person_id": a["person_id"], "kind": "user",
            "id": f"a-{n}", "into_person": person_id(site.site_id, "user", f"b-{n}"),
            "into_kind": "user", "into_id": f"b-{n}", "op_id": late,
            "version": int(a["version"]) + 1}), "JSONEachRow")
        return real(store_)

    monkeypatch.setattr(retention, "delete_settings", meanwhile)
    # b's row, and a's row as read, unless a background merge folded that one into the
    # late row first (then it was gone before the pass deleted).
    assert expire(store, site)["identity_merges"] in (1, 2)
    # Without FINAL: every version the pass read is gone, the late one stays.
    assert [r["op_id"] for r in store.rows(
        "SELECT toString(op_id) AS op_id FROM tagwerk.identity_merges "
        "WHERE site_id = {s:String}", {"s": site.site_id})] == [late]


def test_an_operation_an_erasure_blanked_lasts_as_long_as_the_others_it_names(env):
    """A merge of a customer into another, and its undo, stay on record once the first is
    erased (privacy/erase.py), without them: until the other customer leaves too. What
    was blanked names nobody, so an anonymous visit does not keep them."""
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    gone, stays = f"gone-{n}", f"stays-{n}"
    send_batch(client, collector, keys["write"], [
        login(gone, f"gdev-{n}"), login(stays, f"kdev-{n}"),
        {"event": "page_view", "device_id": f"anon-{n}", "consent": ALL}])
    merged = operate(env, site, keys, "merge", {"from": f"user:{gone}", "into": f"user:{stays}"})
    operate(env, site, keys, f"operations/{merged}/undo", {})
    r = call(env, site, keys, "/privacy/erase", {"id": f"user:{gone}"})
    assert r.status_code == 200, r.text
    assert expire(store, site) == dict.fromkeys(TABLES, 0)
    assert kept(store, site.site_id)["identity_operations"] == 2
    leave(store, site.site_id, [f"user:{stays}", f"device:kdev-{n}"])
    assert expire(store, site)["identity_operations"] == 2
    assert naming(store, site.site_id, stays) == 0


def test_an_operation_an_erasure_blanked_whole_goes_at_the_next_pass(env):
    """A split of a customer's device, and its undo, name nobody else: once the customer is
    erased, the next pass removes them, on a site with no other operation too."""
    client, collector = env
    store = collector.store
    site, keys, n = new_site(env, 3)
    send_batch(client, collector, keys["write"], [login(f"gone-{n}", f"gdev-{n}")])
    split = operate(env, site, keys, "split", {"id": f"device:gdev-{n}"})
    operate(env, site, keys, f"operations/{split}/undo", {})
    r = call(env, site, keys, "/privacy/erase", {"id": f"user:gone-{n}"})
    assert r.status_code == 200, r.text
    assert kept(store, site.site_id)["identity_operations"] == 2
    assert expire(store, site)["identity_operations"] == 2
