"""Attacks on the read side (persons, profiles, lists, export, privacy), from an attacker's
review: each test asserts the secure behaviour. The findings it started from: a browser
could claim any user id or loyalty card (now: identity_token, collector/identity/verify.py);
erasure matched audit rows and splits by text (now: exact persons and kind:id); a flooded
identifier made every request read all its links (now: bounded in the engine)."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from urllib.parse import quote

import orjson
import pytest

from collector.api import privacy, recommend
from collector.identifiers import person_id
from collector.identity import graph as graph_module
from collector.web import ratelimit
from tests.helpers import CHROME, drained, make_client, send_batch, served, wait_for

SITE = "atk-shop"
OTHER = "atk-other"
ORIGIN = "https://atk-shop.example"
BASE = f"/api/v1/sites/{SITE}"
ALL = ["analytics", "personalization"]

# (100,000 users linked to one e-mail: tests/conftest.py)
pytestmark = pytest.mark.usefixtures("sites_dropped_after")


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("attack"), demo_site=False)
    with client:
        _, keys = collector.sites.create(SITE, [ORIGIN])
        _, other = collector.sites.create(OTHER, ["https://atk-other.example"])
        recommend.LIMITS[collector] = ratelimit.RateLimit(rate=1000, burst=1000)
        yield client, collector, {SITE: keys, OTHER: other}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def send(env, events, site=SITE) -> int:
    client, collector, keys = env
    return send_batch(client, collector, keys[site]["write"], events)


def call(env, method, path, data=None, key="admin", site=SITE, **headers):
    client, _, keys = env
    auth = {"Authorization": f"Bearer {keys[site][key]}"} if key else {}
    content = data if isinstance(data, bytes) or data is None else orjson.dumps(data)
    return client.request(method, path, content=content, headers={**auth, **headers})


def hit(event, ts, products=(), consent=ALL, **fields):
    return {"event": event, "ts": ts, "consent": consent, "user_agent": CHROME,
            "items": [{"product_id": p, "price": "10.00", "quantity": 1, "category": "c"}
                      for p in products], **fields}


def identify(user, ts, device=None, **identifiers):
    event = {"event": "login", "type": "identify", "user_id": user, "ts": ts,
             "consent": ALL, "user_agent": CHROME}
    if device:
        event["device_id"] = device
    if identifiers:
        event["identifiers"] = identifiers
    return event


def device_cookie() -> str:
    """A tw_id the attacker minted for themselves (22 URL-safe base64 characters)."""
    return uuid.uuid4().hex[:22]


def browser_cookies(collector, device: str) -> str:
    policy = collector.containers.live(SITE).policy
    consent = f"v1.{'a' * 32}.{policy}.analytics,personalization.{int(time.time())}.banner"
    return f"tw_id={device}.20000; tw_consent={consent}"


def collect(env, event: dict, cookie: str):
    """A hit from a browser: no key at all, only the visitor's own cookies."""
    client, collector, _ = env
    client.cookies.clear()
    r = client.post("/collect", content=orjson.dumps({"site": SITE, **event}),
                    headers={"Content-Type": "text/plain", "Origin": ORIGIN,
                             "Cookie": cookie})
    wait_for(lambda: drained(collector))
    return r


def public_top(env, cookie: str = "") -> list[str]:
    client, _, _ = env
    headers = {"Cookie": cookie} if cookie else {}
    r = client.get(f"/t/{SITE}/recommend/top?window=7d&metric=purchases&limit=24", headers=headers)
    assert r.status_code == 200, r.text
    return [i["product_id"] for i in r.json()["items"]]


def now_iso(minutes_ago: int = 0) -> str:
    moment = time.time() - minutes_ago * 60
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))


# -- 1. untrusted (browser) identify decides whose data is whose ----------------------------

def test_browser_identify_does_not_reveal_another_users_purchases(env):
    """A visitor who claims someone's user id through /collect (no key) must not get lists
    personalised with that customer's purchases."""
    _, collector, _ = env
    victim = uid("victim")
    secret = uid("secret-product")
    # The victim's own purchase, with personalization consent, on their own device.
    # (a second buyer: the public lists show no one person's purchases alone)
    send(env, [identify(victim, now_iso(30), device=uid("victim-phone")),
               hit("purchase", now_iso(20), [secret], user_id=victim),
               hit("purchase", now_iso(20), [secret], user_id=uid("other-buyer"))])
    assert secret in public_top(env)
    # The attacker: a fresh tw_id, then one identify naming the victim's customer id.
    cookie = browser_cookies(collector, device_cookie())
    collect(env, {"event": "login", "type": "identify", "user_id": victim,
                  "consent": ALL}, cookie)
    # The personalised list now leaves out exactly what the victim bought.
    assert secret in public_top(env, cookie), "the victim's purchase leaked by its absence"


def test_browser_identify_cannot_pull_a_loyalty_cards_store_purchases_into_an_access_request(
        env):
    """The till knows only the loyalty card. A visitor who names that card in a browser
    identify of their own account must not receive the card holder's store purchases in
    their GDPR access request."""
    _, collector, _ = env
    card = uid("L")
    send(env, [hit("purchase", now_iso(60), [uid("store-item")], channel="pos",
                   identifiers={"loyalty": card}, order_id=uid("o"))])
    attacker = uid("mallory")
    r = collect(env, {"event": "login", "type": "identify", "user_id": attacker,
                      "identifiers": {"loyalty": card}, "consent": ALL},
                browser_cookies(collector, device_cookie()))
    assert r.status_code == 400 and r.json()["field"] == "event.identifiers"
    r = call(env, "GET", f"{BASE}/privacy/access?id=user:{attacker}")
    assert r.status_code == 404, "the attacker's claim made them someone"
    r = call(env, "GET", f"{BASE}/privacy/access?id=loyalty:{card}")
    assert r.status_code == 200 and r.json()["person"]["identifiers"][0]["id"] == card


def test_erasing_a_browser_claimed_card_does_not_destroy_the_card_holders_data(env):
    """Erasing the attacker (who claimed a card from the browser) must not delete the real
    card holder's store purchases, nor tombstone their card for good."""
    _, collector, _ = env
    card = uid("L")
    send(env, [hit("purchase", now_iso(60), [uid("store-item")], channel="pos",
                   identifiers={"loyalty": card}, order_id=uid("o"))])
    attacker = uid("mallory")
    cookie = browser_cookies(collector, device_cookie())
    collect(env, {"event": "login", "type": "identify", "user_id": attacker,
                  "identifiers": {"loyalty": card}, "consent": ALL}, cookie)
    collect(env, {"event": "login", "type": "identify", "user_id": attacker,
                  "consent": ALL}, cookie)  # unverified: stored, links nothing
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{attacker}"})
    assert r.status_code in (200, 404), r.text
    later = send(env, [hit("purchase", now_iso(1), [uid("store-item")], channel="pos",
                           identifiers={"loyalty": card}, order_id=uid("o"))])
    kept = collector.store.rows(
        "SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} "
        "AND identifiers['loyalty'] = {c:String}", {"s": SITE, "c": card})[0]["n"]
    assert (later, int(kept)) == (1, 2), "the card holder's rows were erased / blocked"


# -- 2. erasure's broad matches delete other persons' identity rows --------------------------

def test_erasure_keeps_other_persons_identity_audit_rows(env):
    """An erased person whose loyalty id is the text "kind" (any customer can name such an
    id from the browser) must not wipe the site's audit trail of merges and splits."""
    _, collector, _ = env
    first, second = uid("u1"), uid("u2")
    send(env, [identify(first, now_iso(50)), identify(second, now_iso(49))])
    r = call(env, "POST", f"{BASE}/identity/merge", {"from": f"user:{first}",
                                                       "into": f"user:{second}"})
    assert r.status_code == 201, r.text
    op_id = r.json()["op_id"]
    prankster = uid("prank")
    send(env, [identify(prankster, now_iso(40), loyalty="kind")])
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{prankster}"})
    assert r.status_code == 200, r.text
    ops = call(env, "GET", f"{BASE}/identity/operations?limit=1000").json()["operations"]
    assert op_id in {o["op_id"] for o in ops}, "another persons' merge vanished from the audit"
    # ... and the merge can no longer be undone.
    r = call(env, "POST", f"{BASE}/identity/operations/{op_id}/undo")
    assert r.status_code == 201, r.text


def test_erasure_keeps_another_persons_split_of_an_identifier_with_the_same_text(env):
    """identity_overrides are deleted by ``id IN ids`` whatever the kind: erasing someone
    with loyalty card X undoes an admin's split of device X belonging to someone else."""
    _, collector, _ = env
    shared_text = uid("X")
    owner = uid("owner")
    send(env, [identify(owner, now_iso(50), device=shared_text)])
    r = call(env, "POST", f"{BASE}/identity/split", {"id": f"device:{shared_text}"})
    assert r.status_code == 201, r.text
    other = uid("other")
    send(env, [identify(other, now_iso(40), loyalty=shared_text)])
    assert call(env, "POST", f"{BASE}/privacy/erase",
                {"id": f"user:{other}"}).status_code == 200
    r = call(env, "GET", f"{BASE}/persons/device:{shared_text}", key="read")
    assert r.json()["person_id"] == person_id(SITE, "device", shared_text), \
        "the split of another person's device was silently undone"


# -- 3. link flooding: anybody can link junk users to a known identifier ------------------

def flood(store, kind: str, ident: str, n: int) -> None:
    """What n identify hits from browsers, each naming ``kind:ident`` with a new user id,
    leave in the links (written directly: the same rows, faster)."""
    store.execute(
        "INSERT INTO tagwerk.identity_links_by_identifier (site_id, kind, id, user_id, "
        "person_id, ts, source, event_id, retention_days) SELECT {site:String}, {kind:String}, "
        "{id:String}, concat('junk-', toString(number)) AS u, "
        "concat('p_', substring(lower(hex(SHA256(concat({site:String}, '\\0user\\0', u)))), "
        "1, 32)), now64(3) - toIntervalSecond(number % 1000), 'identify', generateUUIDv4(), 0 "
        "FROM numbers({n:UInt64})", {"site": SITE, "kind": kind, "id": ident, "n": n})


def test_a_flooded_email_does_not_hide_the_victims_other_identifiers_from_erasure(env):
    """HOLDINGS reads at most MAX_LINKS link rows, without an order: flooding one of the
    victim's identifiers (their e-mail is enough) pushes their other identifiers out, and
    the erasure then leaves their loyalty card's store purchases and no tombstone."""
    _, collector, _ = env
    store = collector.store
    victim, card = uid("victim"), uid("L")
    email = f"{uid('v')}@example.com"
    send(env, [identify(victim, now_iso(300), email=email)])
    flood(store, "email", hashlib.sha256(email.encode()).hexdigest(),
          graph_module.MAX_LINKS + 10)
    # Later, the victim joins the loyalty programme and buys in the store.
    send(env, [identify(victim, now_iso(250), loyalty=card),
               hit("purchase", now_iso(200), [uid("p")], channel="pos",
                   identifiers={"loyalty": card}, order_id=uid("o"))])
    # Background merges sort the links by (kind, id): the e-mail's now come first.
    store.execute("OPTIMIZE TABLE tagwerk.identity_links_by_identifier FINAL")
    started = time.monotonic()
    r = call(env, "GET", f"{BASE}/persons/user:{victim}", key="read")
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    kinds = {i["kind"] for i in r.json()["identifiers"]}
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{victim}"})
    assert r.status_code == 200, r.text
    left = store.rows("SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} "
                      "AND identifiers['loyalty'] = {c:String}", {"s": SITE, "c": card})
    tombstoned = collector.tombstones.blocks(
        SITE, {"ts": "2026-11-30 10:00:00.000", "user_id": "", "device_id": "",
               "identifiers": {"loyalty": card}})
    assert (int(left[0]["n"]), tombstoned) == (0, True), \
        "the erasure left the victim's store purchase, and their card is not tombstoned"
    assert "loyalty" in kinds, f"the card fell out of the person ({elapsed:.2f}s)"


def test_public_lists_do_bounded_work_for_a_flooded_person(env, monkeypatch):
    """Without a key: a visitor whose own person holds an identifier with 100,000 links
    (one browser identify per link) makes every personalised list read all of them."""
    client, collector, _ = env
    store = collector.store
    device, attacker = device_cookie(), uid("mallory")
    email = f"{uid('m')}@example.com"
    cookie = browser_cookies(collector, device)
    # (Links need the shop's signature or its write key now; the flood goes in directly.)
    send(env, [identify(attacker, now_iso(5), device=device, email=email)])
    flood(store, "email", hashlib.sha256(email.encode()).hexdigest(), 100_000)
    largest = []
    query = store.query

    def counted(sql, params=None, fmt="JSONEachRow"):  # every read: rows() calls query()
        found = query(sql, params, fmt)
        largest.append(found.count(b"\n"))  # a line a row in the formats read here
        return found

    monkeypatch.setattr(store, "query", counted)
    started = time.monotonic()
    public_top(env, cookie)
    elapsed = time.monotonic() - started
    assert max(largest) < 10_000, f"one request read {max(largest)} rows in {elapsed:.2f} s"


# -- defences that hold ---------------------------------------------------------------------

WEIRD = ["o'brien\\", "tab\there\nnew\rline", "\\N", "{site:String}'); DROP TABLE x --",
         "\u00fcn\u00ef\U0001f642 emb\0edded", "x" * 240]


def test_odd_identifier_values_round_trip_through_access_and_erasure(env):
    _, collector, _ = env
    users = [f"{value}-{uuid.uuid4().hex[:6]}" for value in WEIRD]
    send(env, [event for user in users for event in (
        identify(user, now_iso(10), loyalty="L" + user),
        hit("view_item", now_iso(9), [uid("p")], user_id=user))])
    for user in users:
        r = call(env, "GET", f"{BASE}/privacy/access?id={quote('loyalty:L' + user, safe='')}")
        assert r.status_code == 200, r.text
        assert {e["user_id"] for e in r.json()["events"]} == {user}
    for user in users[:2]:
        r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
        assert r.status_code == 200, r.text
        left = collector.store.rows(
            "SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} AND "
            "user_id = {u:String}", {"s": SITE, "u": user})
        assert int(left[0]["n"]) == 0


@pytest.mark.parametrize("body", [
    b'{"id": "user:\\u0000erased:00000000-0000-0000-0000-000000000000"}',
    b'{"id": "user:\\ud800"}', b'{"id": ["user:x"]}', b'{"id": {"a": 1}}',
    b'{"id": "user:' + b"x" * 257 + b'"}', b'{"id": "user:\\u00a0undefined\\t"}',
])
def test_crafted_bodies_are_400_not_500(env, body):
    for path in ("/privacy/erase", "/identity/split"):
        r = call(env, "POST", BASE + path, body)
        assert r.status_code == 400, (path, r.text)


def test_the_erased_anchor_cannot_be_named_by_a_client(env):
    _, collector, _ = env
    anchor = "\0erased:" + str(uuid.uuid4())
    r = call(env, "GET", f"{BASE}/persons/user:{quote(anchor, safe='')}", key="read")
    assert r.status_code == 400
    r = call(env, "GET", f"{BASE}/privacy/access?id={quote('user:' + anchor, safe='')}")
    assert r.status_code == 400
    client, _, keys = env
    r = client.post("/api/v1/batch", content=orjson.dumps(
        {"events": [identify(anchor, now_iso(1), device=uid("d"))]}),
        headers={"Authorization": f"Bearer {keys[SITE]['write']}"})
    assert r.status_code == 400
    r = collect(env, {"event": "page_view", "consent": ALL,
                      "identifiers": {"loyalty": anchor}},
                browser_cookies(collector, device_cookie()))
    assert r.status_code == 400
    stored = collector.store.rows(
        "SELECT count() AS n FROM tagwerk.identity_links WHERE startsWith(id, '\\0') "
        "OR (startsWith(user_id, '\\0') AND source != 'erased')")
    assert int(stored[0]["n"]) == 0


def test_keys_and_sites_never_cross(env):
    client, collector, keys = env
    first, second = uid("u1"), uid("u2")
    send(env, [identify(first, now_iso(5)), identify(second, now_iso(5))])
    op = call(env, "POST", f"{BASE}/identity/merge",
              {"from": f"user:{first}", "into": f"user:{second}"}).json()["op_id"]
    # Another site's admin key on its own path cannot see or undo our operation.
    other = f"/api/v1/sites/{OTHER}"
    assert call(env, "POST", f"{other}/identity/operations/{op}/undo",
                site=OTHER).status_code == 404
    assert op not in {o["op_id"] for o in call(
        env, "GET", f"{other}/identity/operations", site=OTHER).json()["operations"]}
    assert call(env, "GET", f"{other}/persons/user:{first}", key="read",
                site=OTHER).status_code == 404
    # Our path with the other site's keys, the read key or the write key on admin things.
    for key in (keys[OTHER]["admin"], keys[SITE]["read"], keys[SITE]["write"]):
        auth = {"Authorization": f"Bearer {key}"}
        assert client.post(f"{BASE}/identity/operations/{op}/undo",
                           headers=auth).status_code == 403
        assert client.get(f"{BASE}/privacy/access?id=user:{first}",
                          headers=auth).status_code == 403
    assert client.get(f"{BASE}/persons/user:{first}", headers={
        "Authorization": f"Bearer {keys[SITE]['write']}"}).status_code == 403
    # An export cursor of one site is refused by the other.
    r = call(env, "GET", f"{BASE}/export?limit=1", key="read")
    cursor = r.headers["tagwerk-cursor"]
    r = call(env, "GET", f"{other}/export?since={cursor}", key="read", site=OTHER)
    assert r.status_code == 400 and r.json()["field"] == "since"


def test_public_lists_cors_and_cache(env):
    client, collector, _ = env
    r = client.get(f"/t/{SITE}/recommend/top", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = client.get(f"/t/{SITE}/recommend/top", headers={"Origin": "null"})
    assert r.status_code == 403
    cookie = browser_cookies(collector, device_cookie())
    r = client.get(f"/t/{SITE}/recommend/top", headers={"Cookie": cookie, "Origin": ORIGIN})
    assert r.headers["cache-control"].startswith("private")
    assert r.headers["vary"] == "Cookie, Origin"
    # No person= and no keyed parameters on the public lists.
    r = client.get(f"/t/{SITE}/recommend/top?person=user:x")
    assert r.status_code == 400 and r.json()["field"] == "person"
    r = client.get(f"/t/{SITE}/recommend/related/..%2F..%2Fexport")
    assert r.status_code == 200 and r.json()["items"] == []


def test_an_alias_event_cannot_join_two_user_ids(env):
    first, second, device = uid("u1"), uid("u2"), uid("d")
    send(env, [identify(first, now_iso(8), device=device),
               {**identify(second, now_iso(7), device=device), "type": "alias"}])
    one = call(env, "GET", f"{BASE}/persons/user:{first}", key="read").json()
    two = call(env, "GET", f"{BASE}/persons/user:{second}", key="read").json()
    assert one["person_id"] != two["person_id"]
    assert not one["merged"] and not two["merged"]


def test_an_access_answer_holds_its_sites_slot_until_it_is_sent(store, tmp_path, monkeypatch):
    """Probe 62: the slot went back once the answer was built, before it was sent, and 20
    clients that did not read took the process from 2.45 to 3.69 GB of memory. The one
    access request of a site now holds it until its client has read it whole, or left, or
    is cut (here past a deadline of 2 s)."""
    monkeypatch.setattr(privacy, "ACCESS_SEND_SECONDS", 2)
    with served(store, tmp_path, demo_site=False) as (client, collector):
        _, keys = collector.sites.create("atk-slow")
        device = uid("slow")
        padding = {f"p{i}": "x" * 2000 for i in range(10)}  # an answer of about 20 MB
        for start in range(0, 1000, 40):
            events = [hit("view_item", now_iso(1), device_id=device, props=padding,
                          event_id=str(uuid.uuid4())) for _ in range(start, start + 40)]
            response = client.post("/api/v1/batch", content=orjson.dumps({"events": events}),
                                   headers={"Authorization": f"Bearer {keys['write']}"})
            assert response.status_code == 202, response.text
        wait_for(lambda: drained(collector))
        path = f"/api/v1/sites/atk-slow/privacy/access?id=device:{device}"
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        host, port = str(client.base_url).removeprefix("http://").rstrip("/").split(":")
        with socket.create_connection((host, int(port))) as slow:
            slow.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                         f"{admin['Authorization']}\r\n\r\n".encode())
            assert slow.recv(12) == b"HTTP/1.1 200"  # then it reads nothing
            busy = client.get(path, headers=admin)
            assert busy.status_code == 429, busy.status_code
            # Past the deadline its answer is cut, and the slot is free again.
            wait_for(lambda: client.get(path, headers=admin).status_code == 200, timeout=20)
