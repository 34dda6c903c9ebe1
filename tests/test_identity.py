"""The identity graph: links from identify/alias events, the rules (one user id per person,
shared devices, junk, overloaded identifiers), merges and splits with undo, and the person
endpoint (collector/identity/, collector/api/persons.py)."""

from __future__ import annotations

import hashlib
import uuid
from urllib.parse import quote

import orjson
import pytest

from collector.identifiers import has_control, person_id
from collector.identity import graph as graphs
from collector.identity.graph import Graph, load_decisions, rows_of
from tests.helpers import drained, flush_all, loaded, make_client, send_batch, wait_for

SITE = "id-shop"
BASE = f"/api/v1/sites/{SITE}"
ALL = ["analytics", "personalization"]
# Who held an identifier when: worked out from its links in Python, or (an identifier with
# more links than LINKS_EACH) in the engine; both must give the same answers.
HOLDERS_IN = pytest.mark.parametrize("links_each", [graphs.LINKS_EACH, 2],
                                     ids=["python", "engine"])


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("identity"), demo_site=False)
    with client:
        _, keys = collector.sites.create(SITE)
        _, other = collector.sites.create("id-other", identifier_kinds=["membership"])
        _, capped = collector.sites.create("id-capped", identity_max_persons=3)
        yield client, collector, {SITE: keys, "id-other": other, "id-capped": capped}


def send(env, events, site=SITE):
    client, collector, keys = env
    send_batch(client, collector, keys[site]["write"], events)


def get(env, path, key="read", site=SITE, **params):
    client, _, keys = env
    auth = {"Authorization": f"Bearer {keys[site][key]}"} if key else {}
    return client.get(path, headers=auth, params=params or None)


def post(env, path, data, key="admin", site=SITE):
    client, _, keys = env
    auth = {"Authorization": f"Bearer {keys[site][key]}"} if key else {}
    content = data if isinstance(data, bytes) else orjson.dumps(data)
    return client.post(path, content=content,
                       headers={**auth, "Content-Type": "application/json"})


def uid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def identify(user, device=None, ts=None, consent=ALL, **identifiers):
    event = {"event": "login", "type": "identify", "user_id": user, "consent": consent}
    if device:
        event["device_id"] = device
    if ts:
        event["ts"] = ts
    if identifiers:
        event["identifiers"] = identifiers
    return event


def person(env, ident, site=SITE):
    r = get(env, f"/api/v1/sites/{site}/persons/{ident}", site=site)
    assert r.status_code == 200, r.text
    same_with_kept_decisions(env, ident, site)
    return r.json()


def same_with_kept_decisions(env, ident, site=SITE):
    """The graph resolves alike reading the site's merges and splits each time and with
    them kept in memory (what profiles and exclusions use: graph.Decisions), and, without
    a listing, from the links held in the engine's memory (identity/link_index.py)."""
    _, collector, _ = env
    kind, _, value = ident.partition(":")
    store, found = collector.store, collector.sites.get(site)
    for listing in (True, False):
        read = Graph(store, found).resolve(kind, value, listing=listing)
        kept = Graph(store, found, load_decisions(store, site)).resolve(kind, value,
                                                                         listing=listing)
        assert kept == read, (ident, listing)
    loaded(collector)
    in_memory = Graph(store, found, load_decisions(store, site), collector.link_index)
    assert in_memory.resolve_many([(kind, value)]) == [read], ident


def test_identify_links_every_identifier_to_one_person(env):
    user, device = uid("c"), uid("dev")
    email = f"{uid('ann')}@Example.com"
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    send(env, [identify(user, device, email=f"  {email} ", loyalty="L-991")])
    expected = person_id(SITE, "user", user)
    for ident in (f"user:{user}", f"device:{device}", f"email:{digest}", f"email:{email}",
                  "loyalty:L-991"):
        found = person(env, ident)
        assert found["person_id"] == expected, ident
    kinds = {(i["kind"], i["id"]) for i in found["identifiers"]}
    assert kinds == {("user", user), ("device", device), ("email", digest),
                     ("loyalty", "L-991")}
    assert all(i["first_seen"] and i["last_seen"] for i in found["identifiers"])
    assert found["merged"] == []
    # The address itself is stored nowhere.
    _, collector, _ = env
    text = collector.store.query(
        "SELECT * FROM tagwerk.events WHERE site_id = {s:String} FORMAT JSONEachRow",
        {"s": SITE}, "JSONEachRow") + collector.store.query(
        "SELECT * FROM tagwerk.identity_links WHERE site_id = {s:String}", {"s": SITE})
    assert email.lower().encode() not in text.lower()


def test_an_email_digest_is_trimmed_and_lower_cased_like_an_address(env):
    """A digest sent with spaces around it (or upper-case) is the same identifier, as an
    address with spaces is: trimmed, not refused with the whole batch."""
    from urllib.parse import quote

    user = uid("c")
    digest = hashlib.sha256(f"{uid('ada')}@example.com".encode()).hexdigest()
    send(env, [identify(user, email=f" {digest.upper()} ")])
    for ident in (f"email:{digest}", f"email: {digest.upper()} "):
        found = get(env, f"{BASE}/persons/{quote(ident)}")
        assert found.status_code == 200, (ident, found.text)
        assert found.json()["person_id"] == person_id(SITE, "user", user)
    assert ("email", digest) in {(i["kind"], i["id"]) for i in person(env, f"user:{user}")[
        "identifiers"]}


def test_unknown_identifiers_are_404_and_anonymous_devices_are_persons(env):
    r = get(env, f"{BASE}/persons/device:{uid('never')}")
    assert r.status_code == 404 and "nobody" in r.json()["error"]
    device = uid("anon")
    send(env, [{"event": "page_view", "device_id": device, "consent": ALL}])
    found = person(env, f"device:{device}")
    assert found["person_id"] == person_id(SITE, "device", device)
    assert [i["kind"] for i in found["identifiers"]] == ["device"]


@HOLDERS_IN
def test_a_shared_device_belongs_to_whoever_logged_in_last(env, links_each, monkeypatch):
    monkeypatch.setattr(graphs, "LINKS_EACH", links_each)
    _, collector, _ = env
    anna, ben, tablet = uid("anna"), uid("ben"), uid("tablet")
    send(env, [
        {"event": "page_view", "device_id": tablet, "ts": "2026-11-01T08:00:00Z",
         "consent": ALL, "props": {"n": "before"}},
        identify(anna, tablet, "2026-11-01T09:00:00Z"),
        {"event": "page_view", "device_id": tablet, "ts": "2026-11-01T09:30:00Z",
         "consent": ALL, "props": {"n": "anna"}},
        identify(ben, tablet, "2026-11-01T10:00:00Z"),
        {"event": "page_view", "device_id": tablet, "ts": "2026-11-01T10:30:00Z",
         "consent": ALL, "props": {"n": "ben"}},
    ])
    assert person(env, f"device:{tablet}")["person_id"] == person_id(SITE, "user", ben)
    site = collector.sites.get(SITE)
    graph = Graph(collector.store, site)

    def pages(user):
        found = graph.resolve("user", user)
        where, params = rows_of(found)
        rows = collector.store.rows(
            f"SELECT props['n'] AS n FROM tagwerk.events WHERE site_id = {{s:String}} "
            f"AND event = 'page_view' AND {where} ORDER BY ts", {"s": SITE, **params})
        return [r["n"] for r in rows]

    # Nobody's history leaks: the earlier hits stay with Anna, without any reset.
    assert pages(anna) == ["before", "anna"]
    assert pages(ben) == ["ben"]
    # Anna logs in again: the tablet is hers from then on, Ben keeps his half hour.
    send(env, [identify(anna, tablet, "2026-11-01T11:00:00Z"),
               {"event": "page_view", "device_id": tablet, "ts": "2026-11-01T11:30:00Z",
                "consent": ALL, "props": {"n": "anna again"}}])
    assert pages(anna) == ["before", "anna", "anna again"]
    assert pages(ben) == ["ben"]
    assert person(env, f"device:{tablet}")["person_id"] == person_id(SITE, "user", anna)


def test_two_user_ids_never_merge_on_their_own(env):
    first, second, email = uid("u1"), uid("u2"), uid("shared") + "@example.com"
    send(env, [identify(first, email=email, ts="2026-11-02T09:00:00Z"),
               identify(second, email=email, ts="2026-11-02T10:00:00Z")])
    one, two = person(env, f"user:{first}"), person(env, f"user:{second}")
    assert one["person_id"] != two["person_id"]
    assert person(env, f"email:{email}")["person_id"] == two["person_id"]
    # An identify cannot carry a second user id.
    client, _, keys = env
    r = client.post("/api/v1/batch", content=orjson.dumps(
        {"events": [{**identify(first), "identifiers": {"user": second}}]}),
        headers={"Authorization": f"Bearer {keys[SITE]['write']}"})
    assert r.status_code == 400 and r.json()["field"] == "event.identifiers.user"


@pytest.mark.parametrize("junk", ["", "null", "undefined", "None", "NaN", "0", "-1",
                                  "anonymous", "[object Object]", " UNDEFINED ",
                                  # Objective-C's and Ruby's nulls, JavaScript's booleans,
                                  # a guest checkout's customer, a zeroed id: an iOS
                                  # advertising id when tracking is not allowed
                                  "(null)", "nil", "<null>", "true", "False", "guest",
                                  "N/A", "00", "00000000-0000-0000-0000-000000000000",
                                  # in other dress: full-width, a zero-width space, braces
                                  "\uff10\uff10\uff10", "null\u200b",
                                  "{00000000-0000-0000-0000-000000000000}",
                                  # Go's nil, GA's "(not set)", quoted, a trailing NUL,
                                  # zeros as numbers, templates left unrendered (re-probe 52)
                                  "<nil>", "(not set)", "unknown", '"null"', "'undefined'",
                                  "null\x00", "-0", "0.0", "Infinity", "{{customer.id}}",
                                  "${user_id}", "*|EMAIL|*", "%USER_ID%",
                                  # re-probe 53: frameworks', spreadsheets' and mailers'
                                  "AnonymousUser", "{user_id}", "#N/A", "-", "Array",
                                  "%!s(<nil>)", "[email]", "undefined undefined",
                                  "\u201cnull\u201d", "(undefined)", "[null]", "<none>",
                                  "{!Contact.Id}", "<%= user.id %>", "$email$", "#{user.id}",
                                  "[object Undefined]", "n.a.", "-NaN", "+0", "0x0",
                                  "not_set"])
def test_junk_values_never_link(env, junk):
    client, collector, keys = env
    device = uid("dev")
    r = client.post("/api/v1/batch", content=orjson.dumps(
        {"events": [identify(junk, device)]}),
        headers={"Authorization": f"Bearer {keys[SITE]['write']}"})
    assert r.status_code == 400 and r.json()["field"] == "event.user_id"
    user = uid("real")
    send(env, [identify(user, device, loyalty=junk, pos=junk),
               {"event": "page_view", "user_id": junk, "device_id": junk, "consent": ALL,
                "props": {"junk": device}}])
    kinds = {i["kind"] for i in person(env, f"user:{user}")["identifiers"]}
    assert kinds == {"user", "device"}
    [row] = collector.store.rows(
        "SELECT user_id, device_id FROM tagwerk.events WHERE site_id = {s:String} "
        "AND props['junk'] = {d:String}", {"s": SITE, "d": device})
    assert row == {"user_id": "", "device_id": ""}
    if junk.strip():
        r = get(env, f"{BASE}/persons/user:{quote(junk.strip())}")
        said = "control characters" if has_control(junk.strip()) else "placeholder"
        assert r.status_code == 400 and said in r.json()["error"]


@pytest.mark.parametrize(("placeholder", "digest"), [
    ("", hashlib.sha256), ("null", hashlib.sha256), ("undefined", hashlib.sha256),
    ("NULL", hashlib.sha256), ("", hashlib.md5), ("", hashlib.sha1), ("null", hashlib.md5)])
def test_the_digest_of_a_placeholder_email_never_links(env, placeholder, digest):
    """A page hashing a missing address sends the SHA-256 of "" (or of "null", or another
    digest of it): kept as an identifier, it linked everyone who sent it (re-probes 51,
    52)."""
    digest = digest(placeholder.encode()).hexdigest()
    if len(digest) != 64:  # only SHA-256 is an e-mail identifier's form: a loyalty id then
        first, second = uid("u"), uid("u")
        send(env, [identify(first, loyalty=digest), identify(second, loyalty=digest)])
        for user in (first, second):
            assert {i["kind"] for i in person(env, f"user:{user}")["identifiers"]} == {"user"}
        return
    first, second = uid("u"), uid("u")
    send(env, [identify(first, email=digest), identify(second, email=digest.upper())])
    for user in (first, second):
        assert {i["kind"] for i in person(env, f"user:{user}")["identifiers"]} == {"user"}
    r = get(env, f"{BASE}/persons/email:{digest}")
    assert r.status_code == 400 and "placeholder" in r.json()["error"]


def test_links_need_analytics_consent(env):
    user, device = uid("c"), uid("dev")
    send(env, [identify(user, device, consent=["necessary"], loyalty="L-nc")])
    assert get(env, f"{BASE}/persons/device:{device}").status_code == 404
    assert get(env, f"{BASE}/persons/user:{user}").status_code == 404


@HOLDERS_IN
def test_an_overloaded_identifier_stops_linking_and_is_reported(env, links_each, monkeypatch):
    monkeypatch.setattr(graphs, "LINKS_EACH", links_each)
    qa_device = uid("qa")
    users = [uid(f"tester{i}") for i in range(5)]
    send(env, [identify(u, qa_device, f"2026-11-03T0{i}:00:00Z")
               for i, u in enumerate(users)], site="id-capped")
    # Only the first three users count, and past them the device is nobody's (9621a5e).
    r = get(env, f"/api/v1/sites/id-capped/persons/device:{qa_device}", site="id-capped")
    assert r.status_code == 404, r.text
    third = person(env, f"user:{users[2]}", site="id-capped")
    assert ("device", qa_device) in {(i["kind"], i["id"]) for i in third["identifiers"]}
    later = person(env, f"user:{users[4]}", site="id-capped")
    assert {i["kind"] for i in later["identifiers"]} == {"user"}
    r = get(env, "/api/v1/sites/id-capped/identity/overloaded", key="admin", site="id-capped")
    assert r.status_code == 200
    assert r.json()["max_persons"] == 3
    # (the site's QA devices of both parametrisations: each run adds one)
    reported = [(i["kind"], i["id"], i["persons"]) for i in r.json()["identifiers"]]
    assert ("device", qa_device, 5) in reported
    assert all(kind == "device" and persons == 5 for kind, _, persons in reported)


def test_an_overloaded_identifier_can_be_split_off(env):
    """The fix for a kiosk past the limit is to give it a person of its own: the split is
    made (from nobody: past the limit it is nobody's) and undone like any other (probe 42:
    a 404 "nobody is known by" it, though it is listed as overloaded)."""
    kiosk = uid("kiosk")
    send(env, [identify(uid(f"u{i}"), kiosk, f"2026-11-03T0{i}:00:00Z") for i in range(5)],
         site="id-capped")
    path = f"/api/v1/sites/id-capped/persons/device:{kiosk}"
    assert get(env, path, site="id-capped").status_code == 404
    r = post(env, "/api/v1/sites/id-capped/identity/split", {"id": f"device:{kiosk}"},
             site="id-capped")
    assert r.status_code == 201, r.text
    own = person_id("id-capped", "device", kiosk)
    assert r.json()["person_id"] == own and r.json()["from"] is None
    split = r.json()["op_id"]
    r = get(env, path, site="id-capped")
    assert r.status_code == 200 and r.json()["person_id"] == own
    same_with_kept_decisions(env, f"device:{kiosk}", site="id-capped")
    op = post(env, "/api/v1/sites/id-capped/identity/split", {"id": f"device:{kiosk}"},
              site="id-capped")
    assert op.status_code == 409  # its own person already
    undo = post(env, f"/api/v1/sites/id-capped/identity/operations/{split}/undo", {},
                site="id-capped")
    assert undo.status_code == 201, undo.text
    assert get(env, path, site="id-capped").status_code == 404
    # An identifier nobody ever linked nor saw is still unknown.
    r = post(env, "/api/v1/sites/id-capped/identity/split", {"id": f"device:{uid('none')}"},
             site="id-capped")
    assert r.status_code == 404



@HOLDERS_IN
def test_an_overloaded_identifier_gives_nobody_the_hits_after_it_stopped_linking(
        env, links_each, monkeypatch):
    """Over the cap (3 here), a kiosk stops linking from the 4th user's login on: that
    user's later kiosk hits are nobody's, never the last allowed user's (their history
    must not leak into another's); each allowed user keeps their own turn."""
    monkeypatch.setattr(graphs, "LINKS_EACH", links_each)
    kiosk = uid("kiosk")
    users = [uid(f"u{i}") for i in range(4)]
    events = []
    for i, user in enumerate(users):
        events.append(identify(user, kiosk, f"2026-11-05T0{i + 1}:00:00Z"))
        events.append({"event": "view_item", "ts": f"2026-11-05T0{i + 1}:30:00Z",
                       "device_id": kiosk, "consent": ALL,
                       "items": [{"product_id": f"p-{user}"}]})
    send(env, events, site="id-capped")

    def viewed(user):
        r = get(env, f"/api/v1/sites/id-capped/persons/user:{user}/profile", site="id-capped")
        return [] if r.status_code == 404 else [v["product_id"] for v in r.json()["viewed"]]

    for user in users[:3]:
        assert wait_for(lambda user=user: viewed(user)) == [f"p-{user}"], user
    assert viewed(users[3]) == []
    # Nor is the kiosk itself anyone's now: asked for by it, nobody's profile is shown to
    # whoever stands at it (the third user's was, their whole history).
    for path in ("", "/profile"):
        r = get(env, f"/api/v1/sites/id-capped/persons/device:{kiosk}{path}", site="id-capped")
        assert r.status_code == 404, r.text


def test_an_admin_merge_of_a_device_keeps_its_earlier_hits_after_a_later_login(env):
    """An admin merged an anonymous tablet into A: its hits so far are A's. When B logs in
    on it later, the tablet is B's from that moment on; what it did before stays A's (the
    merge decided it), not B's as the first user of a device nobody merged."""
    a, b, tablet = uid("a"), uid("b"), uid("tab")

    def view(ts, product):
        return {"event": "view_item", "ts": ts, "device_id": tablet, "consent": ALL,
                "items": [{"product_id": f"{product}-{tablet}"}]}

    def viewed(user):
        r = get(env, f"{BASE}/persons/user:{user}/profile")
        return [] if r.status_code == 404 else sorted(v["product_id"] for v in r.json()["viewed"])

    send(env, [identify(a, uid("phone"), "2026-11-06T06:00:00Z"),
               view("2026-11-06T07:00:00Z", "early")])
    r = post(env, f"{BASE}/identity/merge", {"from": f"device:{tablet}", "into": f"user:{a}"})
    assert r.status_code == 201, r.text
    assert wait_for(lambda: viewed(a)) == [f"early-{tablet}"]
    send(env, [identify(b, tablet, "2026-11-06T12:00:00Z"), view("2026-11-06T13:00:00Z", "later")])
    assert wait_for(lambda: viewed(b)) == [f"later-{tablet}"]
    assert viewed(a) == [f"early-{tablet}"]
    for user in (a, b):  # alike with the decisions read each time, kept, and in memory
        person(env, f"user:{user}")


def test_a_person_merged_into_an_anonymous_device_keeps_its_earlier_hits(env):
    """The other direction of the admin's decision: A merged into the tablet's own person
    (the tablet anchors them now). When B logs in on it later, its earlier hits stay with
    that person, A's; B gets only theirs."""
    a, b, tablet = uid("a"), uid("b"), uid("tab")

    def viewed(ident):
        r = get(env, f"{BASE}/persons/{ident}/profile")
        return [] if r.status_code == 404 else sorted(v["product_id"] for v in r.json()["viewed"])

    send(env, [identify(a, uid("phone"), "2026-11-06T06:00:00Z"),
               {"event": "view_item", "ts": "2026-11-06T07:00:00Z", "device_id": tablet,
                "consent": ALL, "items": [{"product_id": f"early-{tablet}"}]}])
    r = post(env, f"{BASE}/identity/merge", {"from": f"user:{a}", "into": f"device:{tablet}"})
    assert r.status_code == 201, r.text
    assert wait_for(lambda: viewed(f"user:{a}")) == [f"early-{tablet}"]
    send(env, [identify(b, tablet, "2026-11-06T12:00:00Z"),
               {"event": "view_item", "ts": "2026-11-06T13:00:00Z", "device_id": tablet,
                "consent": ALL, "items": [{"product_id": f"later-{tablet}"}]}])
    assert wait_for(lambda: viewed(f"user:{b}")) == [f"later-{tablet}"]
    assert viewed(f"user:{a}") == [f"early-{tablet}"]
    for user in (a, b):
        person(env, f"user:{user}")


def test_merge_and_undo(env):
    web, shop, phone = uid("web"), uid("shop"), uid("phone")
    send(env, [identify(web, phone), identify(shop, loyalty=uid("L"))])

    def profile_owner():
        r = get(env, f"{BASE}/persons/device:{phone}/profile")
        assert r.status_code == 200, r.text
        return r.json()["person_id"]

    assert profile_owner() == person_id(SITE, "user", web)  # the site's decisions now kept
    r = post(env, f"{BASE}/identity/merge", {"from": f"user:{web}", "into": f"user:{shop}"})
    assert r.status_code == 201, r.text
    op = r.json()["op_id"]
    assert profile_owner() == person_id(SITE, "user", shop)  # at once: not a kept answer
    merged = person(env, f"device:{phone}")
    assert merged["person_id"] == person_id(SITE, "user", shop)
    assert merged["merged"] == [{"person_id": person_id(SITE, "user", web), "kind": "user",
                                 "id": web, "op_id": op}]
    assert {i["kind"] for i in merged["identifiers"]} == {"user", "device", "loyalty"}
    assert post(env, f"{BASE}/identity/merge",
                {"from": f"device:{phone}", "into": f"user:{shop}"}).status_code == 409
    # Undone: two persons again; undone twice: refused.
    r = post(env, f"{BASE}/identity/operations/{op}/undo", b"")
    assert r.status_code == 201, r.text
    assert profile_owner() == person_id(SITE, "user", web)
    assert person(env, f"device:{phone}")["person_id"] == person_id(SITE, "user", web)
    assert person(env, f"user:{shop}")["merged"] == []
    r = post(env, f"{BASE}/identity/operations/{op}/undo", b"")
    assert r.status_code == 409 and "already" in r.json()["error"]
    history = get(env, f"{BASE}/identity/operations", key="admin").json()["operations"]
    assert [h["op"] for h in history[:2]] == ["undo", "merge"]
    assert history[0]["target"] == {"undoes": op} and history[0]["actor"].startswith("admin:")
    # The persons an undo names are the two, not the operation it undid.
    [row] = env[1].store.rows("SELECT persons FROM tagwerk.identity_operations WHERE "
                              "site_id = {s:String} AND op_id = {op:UUID}",
                              {"s": SITE, "op": history[0]["op_id"]})
    assert row["persons"] == sorted([person_id(SITE, "user", web),
                                     person_id(SITE, "user", shop)])


def test_merges_stay_flat_and_undo_in_order(env):
    a, b, c = uid("a"), uid("b"), uid("c")
    send(env, [identify(a), identify(b), identify(c)])
    first = post(env, f"{BASE}/identity/merge", {"from": f"user:{a}", "into": f"user:{b}"})
    second = post(env, f"{BASE}/identity/merge", {"from": f"user:{b}", "into": f"user:{c}"})
    assert first.status_code == second.status_code == 201
    found = person(env, f"user:{a}")
    assert found["person_id"] == person_id(SITE, "user", c)
    assert {m["id"] for m in found["merged"]} == {a, b}
    # The first merge's rows were changed by the second: undo the second first.
    r = post(env, f"{BASE}/identity/operations/{first.json()['op_id']}/undo", b"")
    assert r.status_code == 409 and "later operation" in r.json()["error"]
    assert post(env, f"{BASE}/identity/operations/{second.json()['op_id']}/undo",
                b"").status_code == 201
    assert post(env, f"{BASE}/identity/operations/{first.json()['op_id']}/undo",
                b"").status_code == 201
    assert {person(env, f"user:{u}")["person_id"] for u in (a, b, c)} == {
        person_id(SITE, "user", u) for u in (a, b, c)}


def test_a_merge_is_not_undone_under_a_later_merge_into_its_person(env):
    """A is merged into B, then D into A (the admin named A, who is B's person now): undoing
    the first would leave D with B, whom the admin never named. Refused (409) until the
    later merge is undone; a later merge that named B itself does not hold it."""
    a, b, d, e = uid("a"), uid("b"), uid("d"), uid("e")
    send(env, [identify(a), identify(b), identify(d), identify(e)])
    first = post(env, f"{BASE}/identity/merge", {"from": f"user:{a}", "into": f"user:{b}"})
    into_a = post(env, f"{BASE}/identity/merge", {"from": f"user:{d}", "into": f"user:{a}"})
    into_b = post(env, f"{BASE}/identity/merge", {"from": f"user:{e}", "into": f"user:{b}"})
    assert first.status_code == into_a.status_code == into_b.status_code == 201
    assert into_a.json()["person_id"] == person_id(SITE, "user", b)
    r = post(env, f"{BASE}/identity/operations/{first.json()['op_id']}/undo", b"")
    assert r.status_code == 409 and "later operation" in r.json()["error"], r.text
    assert {m["id"] for m in person(env, f"user:{b}")["merged"]} == {a, d, e}
    assert post(env, f"{BASE}/identity/operations/{into_a.json()['op_id']}/undo",
                b"").status_code == 201
    assert post(env, f"{BASE}/identity/operations/{first.json()['op_id']}/undo",
                b"").status_code == 201
    assert {m["id"] for m in person(env, f"user:{b}")["merged"]} == {e}
    for user in (a, d):
        assert person(env, f"user:{user}")["person_id"] == person_id(SITE, "user", user)


def test_split_and_undo(env):
    user, kiosk = uid("c"), uid("kiosk")
    send(env, [identify(user, kiosk)])
    r = post(env, f"{BASE}/identity/split", {"id": f"device:{kiosk}"})
    assert r.status_code == 201, r.text
    assert r.json()["person_id"] == person_id(SITE, "device", kiosk)
    assert person(env, f"device:{kiosk}")["person_id"] == person_id(SITE, "device", kiosk)
    assert {i["kind"] for i in person(env, f"user:{user}")["identifiers"]} == {"user"}
    assert post(env, f"{BASE}/identity/split", {"id": f"device:{kiosk}"}).status_code == 409
    r = post(env, f"{BASE}/identity/split", {"id": f"user:{user}"})
    assert r.status_code == 400 and "undo the merge" in r.json()["error"]
    assert post(env, f"{BASE}/identity/operations/{r.json().get('op_id', uuid.uuid4())}/undo",
                b"").status_code == 404
    undo = post(env, f"{BASE}/identity/operations/{person_op(env, 'split')}/undo", b"")
    assert undo.status_code == 201
    assert person(env, f"device:{kiosk}")["person_id"] == person_id(SITE, "user", user)


@pytest.mark.parametrize("later", ["merge_out", "merge_in"])
def test_a_split_is_not_undone_under_a_later_merge_of_its_person(env, later):
    """A later merge that moved the split-off person into another (or another into it)
    depends on the split: undoing the split first is refused (409), as for the rows a
    merge changed, so that no merge is left pointing at a person nobody resolves to; once
    the merge is undone, the split is."""
    alice, bob, kiosk = uid("alice"), uid("bob"), uid("kiosk")
    send(env, [identify(alice, kiosk), identify(bob)])
    split = post(env, f"{BASE}/identity/split", {"id": f"device:{kiosk}"})
    assert split.status_code == 201, split.text
    pair = ({"from": f"device:{kiosk}", "into": f"user:{bob}"} if later == "merge_out"
            else {"from": f"user:{bob}", "into": f"device:{kiosk}"})
    merge = post(env, f"{BASE}/identity/merge", pair)
    assert merge.status_code == 201, merge.text
    before = person(env, f"device:{kiosk}"), person(env, f"user:{bob}")
    r = post(env, f"{BASE}/identity/operations/{split.json()['op_id']}/undo", b"")
    assert r.status_code == 409 and "later operation" in r.json()["error"], r.text
    assert (person(env, f"device:{kiosk}"), person(env, f"user:{bob}")) == before
    assert post(env, f"{BASE}/identity/operations/{merge.json()['op_id']}/undo",
                b"").status_code == 201
    assert post(env, f"{BASE}/identity/operations/{split.json()['op_id']}/undo",
                b"").status_code == 201
    assert person(env, f"device:{kiosk}")["person_id"] == person_id(SITE, "user", alice)
    assert person(env, f"user:{bob}")["person_id"] == person_id(SITE, "user", bob)
    assert person(env, f"user:{bob}")["merged"] == []


def test_a_split_is_not_undone_under_a_later_merge_of_the_person_it_took_the_device_from(
        env):
    """A device an admin had merged into A is split off, then A is merged into B: undoing
    the split would put the device back into A, whom A's own user id no longer resolves to.
    Refused (409) until the later merge is undone."""
    a, b, tablet = uid("a"), uid("b"), uid("tab")
    send(env, [identify(a), identify(b), {"event": "page_view", "device_id": tablet,
                                          "consent": ALL}])
    assert post(env, f"{BASE}/identity/merge",
                {"from": f"device:{tablet}", "into": f"user:{a}"}).status_code == 201
    split = post(env, f"{BASE}/identity/split", {"id": f"device:{tablet}"})
    assert split.status_code == 201, split.text
    later = post(env, f"{BASE}/identity/merge", {"from": f"user:{a}", "into": f"user:{b}"})
    assert later.status_code == 201, later.text
    r = post(env, f"{BASE}/identity/operations/{split.json()['op_id']}/undo", b"")
    assert r.status_code == 409 and "later operation" in r.json()["error"], r.text
    assert post(env, f"{BASE}/identity/operations/{later.json()['op_id']}/undo",
                b"").status_code == 201
    assert post(env, f"{BASE}/identity/operations/{split.json()['op_id']}/undo",
                b"").status_code == 201
    assert person(env, f"device:{tablet}")["person_id"] == person_id(SITE, "user", a)
    assert person(env, f"user:{b}")["merged"] == []


def test_a_split_of_a_device_merged_into_one_person_and_logged_into_by_another(env):
    """A tablet an admin merged into A, on which B logged in later (it is B's since), split
    off: it becomes a person of its own, its merge into A goes too (as for a device merged
    and never logged into), and neither A nor B lists it; undone, all is as before."""
    a, b, tablet = uid("a"), uid("b"), uid("tab")
    send(env, [identify(a), {"event": "page_view", "device_id": tablet, "consent": ALL,
                             "ts": "2026-11-06T07:00:00Z"}])
    assert post(env, f"{BASE}/identity/merge",
                {"from": f"device:{tablet}", "into": f"user:{a}"}).status_code == 201
    send(env, [identify(b, tablet, "2026-11-06T12:00:00Z")])
    assert wait_for(lambda: person(env, f"device:{tablet}")["person_id"]
                    == person_id(SITE, "user", b))
    def state():  # (a merge row restored by an undo carries the undo's op_id)
        return [{**found, "merged": [{**m, "op_id": ""} for m in found["merged"]]}
                for found in (person(env, ident) for ident in (f"device:{tablet}",
                                                                f"user:{a}", f"user:{b}"))]

    before = state()
    split = post(env, f"{BASE}/identity/split", {"id": f"device:{tablet}"})
    assert split.status_code == 201, split.text
    assert split.json()["from"] == person_id(SITE, "user", b)
    own = person(env, f"device:{tablet}")
    assert own["person_id"] == person_id(SITE, "device", tablet)
    assert own["merged"] == []
    for user in (a, b):
        found = person(env, f"user:{user}")
        assert found["merged"] == [], user
        assert tablet not in {i["id"] for i in found["identifiers"]}, user
    assert post(env, f"{BASE}/identity/split", {"id": f"device:{tablet}"}).status_code == 409
    undo = post(env, f"{BASE}/identity/operations/{split.json()['op_id']}/undo", b"")
    assert undo.status_code == 201, undo.text
    assert state() == before


def person_op(env, op):
    history = get(env, f"{BASE}/identity/operations", key="admin").json()["operations"]
    return next(h["op_id"] for h in history if h["op"] == op)


def test_split_of_a_merged_anonymous_device(env):
    user, device = uid("c"), uid("anon")
    send(env, [identify(user), {"event": "page_view", "device_id": device, "consent": ALL}])
    assert post(env, f"{BASE}/identity/merge",
                {"from": f"device:{device}", "into": f"user:{user}"}).status_code == 201
    assert person(env, f"device:{device}")["person_id"] == person_id(SITE, "user", user)
    assert post(env, f"{BASE}/identity/split", {"id": f"device:{device}"}).status_code == 201
    assert person(env, f"device:{device}")["person_id"] == person_id(SITE, "device", device)
    assert person(env, f"user:{user}")["merged"] == []


def test_a_device_anchoring_merged_persons_is_not_split(env):
    """A user merged into a device's own person: the device anchors them, and overriding it
    to that same person would change nothing while answering 201. Refused (409), nothing
    written; undoing the merge is the way."""
    user, device = uid("c"), uid("anon")
    send(env, [identify(user), {"event": "page_view", "device_id": device, "consent": ALL}])
    assert post(env, f"{BASE}/identity/merge",
                {"from": f"user:{user}", "into": f"device:{device}"}).status_code == 201
    count = person_op_count(env)
    r = post(env, f"{BASE}/identity/split", {"id": f"device:{device}"})
    assert r.status_code == 409 and "undo those merges" in r.json()["error"], r.text
    assert person_op_count(env) == count
    assert person(env, f"user:{user}")["person_id"] == person_id(SITE, "device", device)


def test_site_kinds_and_identifier_validation(env):
    client, _, keys = env

    def batch(site, event):
        return client.post("/api/v1/batch", content=orjson.dumps({"events": [event]}),
                           headers={"Authorization": f"Bearer {keys[site]['write']}"})

    member = uid("M")
    assert batch("id-other", identify(uid("c"), membership=member)).status_code == 202
    r = batch(SITE, identify(uid("c"), membership=member))
    assert r.status_code == 400 and "unknown identifier kind" in r.json()["error"]
    for identifiers, field in [
        ([1], "event.identifiers"), ({"email": "not an address"}, "event.identifiers.email"),
        ({"loyalty": {"a": 1}}, "event.identifiers.loyalty"),
        ({"loyalty": "x" * 257}, "event.identifiers.loyalty"),
        ({"device": "d"}, "event.identifiers.device"),
        ({f"k{i}": "v" for i in range(9)}, "event.identifiers"),
    ]:
        r = batch(SITE, {"event": "e", "identifiers": identifiers})
        assert r.status_code == 400 and r.json()["field"] == field, (identifiers, r.text)
    assert batch(SITE, {"event": "e", "consent_id": "zz"}).json()["field"] == "event.consent_id"
    assert batch(SITE, identify(uid("c"), loyalty=991)).status_code == 202


KEYS = [
    (None, 401, "read key"),
    ("write", 403, "may not"),
    ("other-read", 403, "may not"),
    ("other-admin", 403, "may not"),
]


@pytest.mark.parametrize(("key", "status", "message"), KEYS)
def test_person_needs_the_sites_read_key(env, key, status, message):
    client, _, keys = env
    token = {"write": keys[SITE]["write"], "other-read": keys["id-other"]["read"],
             "other-admin": keys["id-other"]["admin"]}.get(key)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = client.get(f"{BASE}/persons/user:someone", headers=headers)
    assert r.status_code == status and message in r.json()["error"]
    for path in ("/identity/merge", "/identity/split"):
        r = client.post(BASE + path, content=b"{}", headers=headers)
        assert r.status_code == status
    # The read key reads, but does not merge.
    r = post(env, f"{BASE}/identity/merge", {"from": "user:a", "into": "user:b"}, key="read")
    assert r.status_code == 403 and "admin key" in r.json()["error"]


def test_other_sites_persons_are_invisible(env):
    user, device = uid("c"), uid("dev")
    send(env, [identify(user, device)], site="id-other")
    assert person(env, f"device:{device}", site="id-other")["person_id"]
    assert get(env, f"{BASE}/persons/device:{device}").status_code == 404
    r = post(env, f"{BASE}/identity/merge", {"from": f"user:{user}", "into": "user:x"})
    assert r.status_code == 404


def test_an_id_holding_a_replacement_character_is_found(env):
    """U+FFFD sent as such (%EF%BF%BD) is a character of the id, not invalid UTF-8 (which
    the server also decodes to U+FFFD: the raw path tells them apart)."""
    device = uid("dev\ufffd")
    send(env, [identify(uid("u"), device)])
    assert person(env, "device:" + quote(device))["person_id"]
    r = get(env, f"{BASE}/persons/device:" + quote(device).replace("%EF%BF%BD", "%FF"))
    assert r.status_code == 400 and r.json()["field"] == "ident"


@pytest.mark.parametrize(("path", "field"), [
    ("/persons/nocolon", "ident"),
    ("/persons/bogus:1", "ident"),
    ("/persons/user:", "ident"),
    ("/persons/user:" + "x" * 300, "ident"),
    ("/persons/user:%01x", "ident"),
    ("/persons/user:%ff%fe", "ident"),
    ("/persons/user:a?extra=1", "extra"),
    ("/persons/user:a?x=%ff", "x"),
])
def test_person_bad_input(env, path, field):
    r = get(env, BASE + path)
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert get(env, f"{BASE}/persons/user:nobody-{uuid.uuid4()}").status_code == 404


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/identity/merge", b"not json", 400, ""),
    ("/identity/merge", b"[]", 400, ""),
    ("/identity/merge", b'{"from": "user:a"}', 400, "into"),
    ("/identity/merge", b'{"from": 1, "into": "user:b"}', 400, "from"),
    ("/identity/merge", b'{"from": "user:a", "into": "user:b", "x": 1}', 400, "x"),
    ("/identity/merge", b'{"from": "\xff", "into": "user:b"}', 400, ""),
    ("/identity/merge", b'{"from": "user:a", "into": "user:' + b"b" * 20000 + b'"}', 413, ""),
    ("/identity/merge", b'{"from": [[[[[["user:a"]]]]]], "into": "user:b"}', 400, "from"),
    ("/identity/split", b'{"id": "mystery:1"}', 400, "id"),
    ("/identity/split", b'{"id": "user:null"}', 400, "id"),
    ("/identity/operations/not-a-uuid/undo", b"", 400, "op_id"),
    ("/identity/operations/0b9f3c5e-6d1a-4e8b-9c2f-7a4d5e6f8a1b/undo", b"", 404, "op_id"),
])
def test_operation_bad_input(env, path, body, status, field):
    before = person_op_count(env)
    r = post(env, BASE + path, body)
    assert r.status_code == status, r.text
    assert r.json().get("field", "") == field
    assert person_op_count(env) == before  # nothing half-written
    assert get(env, f"{BASE}/identity/operations?limit=0", key="admin").status_code == 400


def person_op_count(env):
    _, collector, _ = env
    return collector.store.rows(
        "SELECT count() AS n FROM tagwerk.identity_operations WHERE site_id = {s:String}",
        {"s": SITE})[0]["n"]


def test_rows_spooled_before_the_identity_columns_still_flush(backend, store, tmp_path):
    """A spool written by the previous version has rows without the last two columns."""
    import datetime as dt

    from collector.enrich.useragent import parse_agent
    from collector.ingest.events import Context, normalize
    from collector.metrics import Metrics
    from collector.spool.disk import Spool
    from collector.spool.flusher import Flusher
    from collector.spool.record import encode_record
    from tests.test_spool import append_all

    site = "id-old-" + uuid.uuid4().hex[:8]
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    row, _ = normalize({"event": "old", "user_id": "c-1", "consent": ["analytics"]}, ctx)
    old = list(row.values())[:-2]  # what the previous version spooled
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [encode_record([orjson.dumps(old)], site, [])])
    flush_all(Flusher(spool, backend, Metrics(), interval=0.01), spool)
    [stored] = store.rows("SELECT user_id, identifiers, consent_id FROM tagwerk.events "
                          "WHERE site_id = {s:String}", {"s": site})
    assert stored == {"user_id": "c-1", "identifiers": {}, "consent_id": ""}


def test_ids_with_slashes_and_colons(env):
    user = f"shop/eu:{uuid.uuid4().hex[:6]}"
    send(env, [identify(user, loyalty="L/1:2")])
    from urllib.parse import quote
    found = person(env, f"user:{quote(user, safe='')}")
    assert found["person_id"] == person_id(SITE, "user", user)
    assert person(env, "loyalty:L%2F1:2")["person_id"] == found["person_id"]
    # An id ending in "/profile" is the person's (its slash sent as %2F), not a profile of
    # an id without it; a literal "/profile" (an encoded letter too) is the profile route.
    odd = f"o-{uuid.uuid4().hex[:6]}/profile"
    send(env, [identify(odd, loyalty=f"L-{odd}")])
    listed = person(env, f"user:{quote(odd, safe='')}")
    assert listed["person_id"] == person_id(SITE, "user", odd) and "identifiers" in listed
    assert person(env, f"user:{quote(odd, safe='').replace('%2F', '%2f')}") == listed
    profile = get(env, f"{BASE}/persons/user:{quote(odd, safe='')}/profil%65")
    assert profile.status_code == 200 and "viewed" in profile.json()


def test_a_browsers_identify_links_only_with_the_shops_identity_token(env):
    """A page can claim any user id: from a browser, an identify links only with an
    identity_token made by the shop's server with the write key (as Intercom does)."""
    from collector.identity.verify import token_for_key

    client, collector, keys = env
    user, attacker, card = uid("victim"), uid("attacker-device"), uid("L")

    def collect(event, device):
        client.cookies.clear()  # each call a browser of its own (no tw_id from earlier ones)
        body = {"site": SITE, "events": [{"consent": ALL, "device_id": device, **event}]}
        return client.post("/collect", content=orjson.dumps(body),
                           headers={"Content-Type": "text/plain"})

    send(env, [identify(user, uid("own-device"))])
    # No token: stored as a plain event, links nothing; identifiers are refused.
    assert collect({"event": "login", "type": "identify", "user_id": user},
                   attacker).status_code == 202
    r = collect({"event": "login", "type": "identify", "user_id": user,
                 "identifiers": {"loyalty": card}}, attacker)
    assert r.status_code == 400 and r.json()["field"] == "event.identifiers"
    r = collect({"event": "page_view", "identifiers": {"loyalty": card}}, attacker)
    assert r.status_code == 400
    # A wrong token (another user's, another site's key) is a 400 naming it.
    for bad in (token_for_key(keys[SITE]["write"], SITE, "someone-else"),
                token_for_key(keys["id-other"]["write"], SITE, user), "x" * 64, 5):
        r = collect({"event": "login", "type": "identify", "user_id": user,
                     "identity_token": bad}, attacker)
        assert r.status_code == 400 and r.json()["field"] == "event.identity_token", bad
    wait_for(lambda: drained(collector))
    assert get(env, f"{BASE}/persons/device:{attacker}").json()["person_id"] == person_id(
        SITE, "device", attacker)
    [row] = collector.store.rows(
        "SELECT type FROM tagwerk.events WHERE site_id = {s:String} AND device_id = {d:String}",
        {"s": SITE, "d": attacker})
    assert row["type"] == "track"
    # The shop's server signed it: the device and the card link; the token is not stored.
    good = token_for_key(keys[SITE]["write"], SITE, user)
    phone = uid("phone")
    assert collect({"event": "login", "type": "identify", "user_id": user,
                    "identifiers": {"loyalty": card},
                    "props": {"identity_token": good, "via": "tag"}}, phone).status_code == 202
    wait_for(lambda: drained(collector))
    assert person(env, f"device:{phone}")["person_id"] == person_id(SITE, "user", user)
    assert person(env, f"loyalty:{card}")["person_id"] == person_id(SITE, "user", user)
    stored = collector.store.query(
        "SELECT * FROM tagwerk.events WHERE site_id = {s:String} AND device_id = {d:String}",
        {"s": SITE, "d": phone})
    assert good.encode() not in stored and b'"via":"tag"' in stored.replace(b" ", b"")
    # Nor on any other hit that carries one.
    page = uid("page")
    assert collect({"event": "page_view", "props": {"identity_token": good, "n": page}},
                   uid("d")).status_code == 202
    wait_for(lambda: drained(collector))
    [row] = collector.store.rows("SELECT props FROM tagwerk.events WHERE site_id = {s:String} "
                                 "AND props['n'] = {n:String}", {"s": SITE, "n": page})
    assert row["props"] == {"n": page}


def test_the_demo_signs_its_customers_ids(store, tmp_path):
    from collector.identity.verify import token

    client, collector = make_client(store, tmp_path)
    with client:
        r = client.get("/demo/api/identity-token?user_id=C-0123456789AB")
        site = collector.sites.get("demo")
        assert r.status_code == 200
        assert r.json()["identity_token"] == token(site.write_key_hash, "demo", "C-0123456789AB")
        for bad in ("", "c-1", "C-0123456789AB%0A", "C-0123456789ABC"):
            assert client.get(f"/demo/api/identity-token?user_id={bad}").status_code == 400


@HOLDERS_IN
def test_identifiers_resolved_together_resolve_as_alone(env, monkeypatch, links_each):
    """resolve_many (concurrent profiles read in one batch) gives each identifier the person
    resolve gives it alone: shared devices, merges, splits, nobody; who held what when
    worked out in Python, and by the engine for identifiers with many links."""
    monkeypatch.setattr(graphs, "LINKS_EACH", links_each)
    _, collector, _ = env
    anna, ben, cara, tablet, kiosk = (uid(p) for p in ("anna", "ben", "cara", "tab", "kiosk"))
    card = uid("L")
    send(env, [identify(anna, tablet, "2026-11-01T09:00:00Z", loyalty=card),
               identify(ben, tablet, "2026-11-01T10:00:00Z"),
               identify(cara, kiosk, "2026-11-01T11:00:00Z")])
    assert post(env, f"{BASE}/identity/merge",
                {"from": f"user:{ben}", "into": f"user:{cara}"}).status_code == 201
    assert post(env, f"{BASE}/identity/split", {"id": f"device:{kiosk}"}).status_code == 201
    asks = [("device", tablet), ("user", anna), ("loyalty", card), ("user", ben),
            ("user", cara), ("device", kiosk), ("device", uid("nobody")), ("device", tablet)]
    store, site = collector.store, collector.sites.get(SITE)
    alone = [Graph(store, site).resolve(kind, ident, listing=False) for kind, ident in asks]
    assert alone[0].person_id == alone[4].person_id == person_id(SITE, "user", cara)
    for decisions in (load_decisions(store, SITE), None):
        assert Graph(store, site, decisions).resolve_many(asks) == alone
    loaded(collector)  # the links held in memory: alike
    assert Graph(store, site, load_decisions(store, SITE),
                 collector.link_index).resolve_many(asks) == alone


def test_a_batch_past_the_link_cut_resolves_in_halves_as_alone(env, monkeypatch):
    """MAX_LINKS bounds one person's owner changes; a batch passing it together is worked
    out again in halves, and each person still resolves as alone (a person past it alone
    is marked truncated, as alone)."""
    _, collector, _ = env
    users = [uid(f"h{i}") for i in range(6)]
    devices = [uid(f"hd{i}") for i in range(6)]
    send(env, [identify(user, device, f"2026-11-0{1 + i}T09:00:00Z")
               for i, (user, device) in enumerate(zip(users, devices, strict=True))])
    store, site = collector.store, collector.sites.get(SITE)
    asks = [("device", device) for device in devices] + [("user", users[0])]
    monkeypatch.setattr(graphs, "MAX_LINKS", 4)  # 6 persons' links pass it together
    fills = []
    fill = Graph._fill_all
    monkeypatch.setattr(Graph, "_fill_all", lambda self, persons, listing:
                        fills.append(len(persons)) or fill(self, persons, listing))
    together = Graph(store, site, load_decisions(store, SITE)).resolve_many(asks)
    assert fills[0] == len(asks) and len(fills) < 1 + len(asks)  # not one by one
    alone = [Graph(store, site).resolve(kind, ident, listing=False) for kind, ident in asks]
    assert together == alone
