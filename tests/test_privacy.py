"""Privacy operations: erasure through every linked identifier, from every table, with late
hits dropped; the access request; keys and bad input (collector/privacy/)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import orjson
import pytest

from collector.privacy import erase as erasure
from collector.privacy.tombstones import ALWAYS, plain_subject
from tests.helpers import (
    CHROME,
    TEST_PRIVACY_KEY,
    drained,
    flush_all,
    found_anywhere,
    make_client,
    send_batch,
    wait_for,
)
from tests.test_profile import ALL, hit, item, journey

SITE = "priv-shop"
BASE = f"/api/v1/sites/{SITE}"


# (a device's 9,000 owners and 40,000 views: tests/conftest.py)
pytestmark = pytest.mark.usefixtures("sites_dropped_after")


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("privacy"), demo_site=False)
    with client:
        _, keys = collector.sites.create(SITE)
        _, other = collector.sites.create("priv-other")
        yield client, collector, {SITE: keys, "priv-other": other}


def send(env, events, site=SITE):
    client, collector, keys = env
    return send_batch(client, collector, keys[site]["write"], events)


def call(env, method, path, data=None, key="admin", site=SITE):
    client, _, keys = env
    headers = {"Authorization": f"Bearer {keys[site][key]}"} if key else {}
    content = data if isinstance(data, bytes) or data is None else orjson.dumps(data)
    return client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize("deletes", ["patch parts", "mutations"])
def test_erase_removes_the_person_everywhere_and_keeps_others(env, monkeypatch, deletes):
    """With patch parts (the engine's lightweight updates), and with mutations as on a
    server older than ClickHouse 25.7, which does not know the setting."""
    client, collector, keys = env
    store = collector.store
    assert erasure.delete_settings(store) == erasure.PATCH_DELETES  # this engine has them
    if deletes == "mutations":
        monkeypatch.setitem(erasure._delete_settings, store, "")  # noqa: SLF001
    user, phone, desk, card, (shoes, _, _), events = journey()
    # A sister uses the phone later, logged in as herself: her part stays.
    sister = f"sis-{uuid.uuid4().hex[:8]}"
    consent_id = uuid.uuid4().hex
    assert client.post("/consent", content=orjson.dumps(
        {"site": SITE, "consent_id": consent_id, "granted": ALL, "denied": [],
         "policy": "0123456789abcdef", "how": "banner"})).status_code in (200, 202, 204)
    events = [{**e, "consent_id": consent_id, "session_id": f"s-{user}"} for e in events]
    events += [
        {**hit("login", "2026-11-12T09:00:00Z", device_id=phone), "type": "identify",
         "user_id": sister},
        hit("view_item", "2026-11-12T09:05:00Z", [shoes], device_id=phone,
            session_id=f"s-{sister}"),
    ]
    send(env, events)
    wait_for(lambda: store.rows(
        "SELECT count() AS n FROM tagwerk.session_items WHERE session_id = {s:String}",
        {"s": f"s-{user}"})[0]["n"])
    mine = [user, desk, card, f"s-{user}"]
    assert found_anywhere(store, mine)

    patches = "SELECT count() AS n FROM system.parts WHERE database = 'tagwerk' AND active " \
              "AND table = 'events' AND startsWith(name, 'patch-')"
    before = store.rows(patches)[0]["n"]
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"loyalty:{card}"})
    assert r.status_code == 200, r.text
    done = r.json()
    assert (store.rows(patches)[0]["n"] > before) == (deletes == "patch parts")
    assert done["removed"]["events"] >= 6 and done["removed"]["person_hits"] >= 5
    assert done["removed"]["identity_links"] >= 4 and done["identifiers"] == 4
    assert done["spool_flushed"] is True
    # Nothing of them anywhere, the audit trail included; the consent decision remains,
    # linked to nobody.
    assert found_anywhere(store, mine) == {}
    assert store.rows("SELECT count() AS n FROM tagwerk.consent_log WHERE consent_id = "
                      "{c:String}", {"c": consent_id})[0]["n"] == 1
    assert store.rows("SELECT count() AS n FROM tagwerk.events WHERE consent_id = "
                      "{c:String}", {"c": consent_id})[0]["n"] == 0
    for ident in (f"user:{user}", f"loyalty:{card}", f"device:{desk}"):
        assert call(env, "GET", f"{BASE}/persons/{ident}", key="read").status_code == 404
    # The phone was shared: the sister's hits stay hers; the phone's hits of the erased
    # person's time went with them and are handed to nobody.
    profile = call(env, "GET", f"{BASE}/persons/user:{sister}/profile", key="read").json()
    assert [v["product_id"] for v in profile["viewed"]] == [shoes["product_id"]]
    assert profile["purchased"] == []
    phone_rows = store.rows("SELECT ts FROM tagwerk.events WHERE site_id = {s:String} AND "
                            "device_id = {d:String} ORDER BY ts", {"s": SITE, "d": phone})
    assert [r["ts"][:10] for r in phone_rows] == ["2026-11-12", "2026-11-12"]
    # Late hits naming them are dropped, also through another path.
    accepted = send(env, [hit("view_item", "2026-11-13T10:00:00Z", [shoes], user_id=user),
                          hit("purchase", "2026-11-13T10:00:00Z", [shoes], channel="pos",
                              identifiers={"loyalty": card}),
                          hit("page_view", "2026-11-13T10:00:00Z", device_id=desk,
                              agent=CHROME)])
    assert accepted == 0
    assert found_anywhere(store, mine) == {}
    # The phone stays in use by the sister: a late hit of the erased person's time on it (a
    # replay, an old timestamp) is dropped too; hers, and the phone's new hits, are kept.
    late = hit("view_item", "2026-11-10T08:00:00Z", [shoes], device_id=phone,
               session_id=f"late-{user}")
    assert send(env, [late]) == 0
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert send(env, [hit("view_item", "2026-11-12T10:00:00Z", [shoes], device_id=phone),
                      hit("view_item", now, [shoes], device_id=phone)]) == 2
    assert found_anywhere(store, [f"late-{user}"]) == {}
    # The audit row: who and what, counted, no identifier.
    [audit] = store.rows("SELECT op, subject, keyed, identifiers, removed, actor FROM "
                         "tagwerk.privacy_requests WHERE request_id = {r:UUID}",
                         {"r": done["request_id"]})
    assert audit["op"] == "erase" and audit["identifiers"] == 4
    assert orjson.loads(audit["removed"]) == done["removed"]
    assert audit["actor"].startswith("admin:") and len(audit["subject"]) == 64
    # Keyed with the installation's privacy key: not a digest anyone can recompute.
    tombstones = env[1].tombstones
    assert audit["subject"] == tombstones.subject(SITE, "loyalty", card) and audit["keyed"]
    assert audit["subject"] != plain_subject(SITE, "loyalty", card)


def test_access_gives_everything_stored(env):
    user, phone, desk, card, _, events = journey()
    send(env, events)
    r = call(env, "GET", f"{BASE}/privacy/access?id=device:{phone}")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["person"]["person_id"] == call(
        env, "GET", f"{BASE}/persons/user:{user}", key="read").json()["person_id"]
    # Every row of theirs: the bot's and the unconsented ones too (they are stored).
    assert len(data["events"]) == len(events)
    assert {e["event"] for e in data["events"]} == {"view_item", "login", "add_to_cart",
                                                    "purchase"}
    assert data["truncated"] is False and data["profile"]["purchased"]
    assert call(env, "GET", f"{BASE}/privacy/access?id=device:nobody-{uuid.uuid4()}"
                ).status_code == 404


def test_a_head_request_for_access_runs_nothing(env):
    """HEAD is answered as GET without the body: on the access request it ran the whole
    query (up to hundreds of MB of rows) and recorded an access in the audit trail, for an
    answer nobody receives. It is refused (405, Allow: GET) before anything runs."""
    user, phone, desk, card, _, events = journey()
    send(env, events)
    store = env[1].store
    audited = ("SELECT count() AS n FROM tagwerk.privacy_requests WHERE op = 'access' "
               "AND site_id = {s:String}")
    before = store.rows(audited, {"s": SITE})
    r = call(env, "HEAD", f"{BASE}/privacy/access?id=device:{phone}")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert store.rows(audited, {"s": SITE}) == before
    assert call(env, "GET", f"{BASE}/privacy/access?id=device:{phone}").status_code == 200


def test_the_parts_of_a_persons_rows_are_disjoint_and_make_up_rows_of(env):
    """An erasure (and an access request) reads a person's rows as parts, each narrowed by
    its index (erase._person_rows, graph.row_parts): together they must match exactly the
    rows of ``rows_of``, none twice, in every person table. With a device shared with a
    sister, a till hit naming the desktop and the card, and a browser's unverified claim
    of the customer's user id from a device of someone else's (person_hits files it under
    that device, not the customer's keys)."""
    from collector.identity.graph import Graph, row_parts, rows_of

    client, collector, _ = env
    store = collector.store
    user, phone, desk, card, (shoes, _, _), events = journey()
    sister, stranger = f"sis-{uuid.uuid4().hex[:8]}", f"str-{uuid.uuid4().hex[:8]}"
    events += [
        {**hit("login", "2026-11-12T09:00:00Z", device_id=phone), "type": "identify",
         "user_id": sister},
        hit("view_item", "2026-11-12T09:05:00Z", [shoes], device_id=phone),
        hit("purchase", "2026-11-12T18:00:00Z", [shoes], channel="pos", device_id=desk,
            identifiers={"loyalty": card}, agent="tagwerk-pos/1.0"),
    ]
    send(env, [{**e, "session_id": f"s-{user}"} for e in events])
    claim(env, user, stranger, shoes)
    person = Graph(store, collector.sites.get(SITE)).resolve("user", user)
    for table, ts, has_identifiers in erasure.PERSON_TABLES:
        if table == "person_hits":  # by the copies of their events (below)
            continue
        claims = table == "events"
        where, params = rows_of(person, ts, has_identifiers, claims)
        parts, part_params = row_parts(person, ts, has_identifiers, claims)
        params = {"site": SITE, **params, **part_params}
        count = f"SELECT count() AS n FROM tagwerk.{table} WHERE site_id = {{site:String}} AND "
        whole = int(store.rows(count + where, params)[0]["n"])
        each = [int(store.rows(count + part, params)[0]["n"]) for part in parts]
        either = int(store.rows(count + "(" + " OR ".join(parts) + ")", params)[0]["n"])
        assert sum(each) == either == whole, (table, each, either, whole)
        assert whole or table != "events", table
    # person_hits: every copy of their events, the claim's under the stranger's device too.
    copies = erasure._copies(store, SITE, person)  # noqa: SLF001
    assert f"device:{stranger}" in copies["h_keys"]
    [row] = store.rows("SELECT count() AS n, countIf(key = {k:String}) AS claim FROM "
                       "tagwerk.person_hits WHERE site_id = {site:String} AND "
                       + erasure.COPIES, {"site": SITE, "k": f"device:{stranger}", **copies})
    assert int(row["claim"]) == 1 and int(row["n"]) >= 5


def claim(env, user, device, item):
    """A browser's view naming someone else's user id (unverified: no identity token)."""
    client, collector, _ = env
    client.cookies.clear()
    body = {"site": SITE, "events": [{"event": "view_item", "user_id": user,
                                      "device_id": device, "consent": ALL, "items": [item]}]}
    assert client.post("/collect", content=orjson.dumps(body), headers={
        "Content-Type": "text/plain", "User-Agent": CHROME}).status_code == 202
    wait_for(lambda: drained(collector))


def test_erase_and_access_with_hostile_identifiers(env):
    """Identifiers that look like SQL, like the statements' own parameter syntax, or hold
    quotes, backslashes, LIKE wildcards and newlines reach the erasure's parts (and the
    access request's) as bound values only: the person's rows go, a bystander whose ids
    differ by those characters keeps hers."""
    n = uuid.uuid4().hex[:6]
    user = f"u'{n}\\\" OR 1=1 --"
    device = f"d-{{p_users:Array(String)}}-%_{n}"
    card = f"L'{n}');DROP TABLE tagwerk.events;--\n"
    other_user, other_device = f"u%{n}", f"d-%_{n}"
    send(env, [
        {**hit("login", "2026-11-10T08:00:00Z", device_id=device), "type": "identify",
         "user_id": user, "identifiers": {"loyalty": card}},
        hit("view_item", "2026-11-10T08:01:00Z", [{"product_id": f"p-{n}"}], device_id=device),
        hit("purchase", "2026-11-10T18:00:00Z", [{"product_id": f"p-{n}"}], channel="pos",
            identifiers={"loyalty": card}),
        {**hit("login", "2026-11-10T09:00:00Z", device_id=other_device), "type": "identify",
         "user_id": other_user},
        hit("view_item", "2026-11-10T09:01:00Z", [{"product_id": f"q-{n}"}],
            device_id=other_device),
    ])
    access = call(env, "GET", f"{BASE}/privacy/access?id=loyalty:{quote(card)}")
    assert access.status_code == 200, access.text
    assert {e["device_id"] for e in access.json()["events"]} == {device, ""}
    store = env[1].store

    def her_links() -> int:
        return int(store.rows(
            "SELECT count() AS n FROM tagwerk.identity_links_by_identifier "
            "WHERE site_id = {s:String} AND user_id = {u:String}",
            {"s": SITE, "u": other_user})[0]["n"])

    before = her_links()
    assert before
    done = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
    assert done.status_code == 200, done.text
    assert done.json()["removed"]["events"] == 3
    assert found_anywhere(store, [device, card]) == {}
    kept = store.rows("SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} "
                      "AND device_id = {d:String}", {"s": SITE, "d": other_device})
    assert kept[0]["n"] == 2
    assert her_links() == before


@pytest.mark.parametrize(("method", "path", "data", "status", "field"), [
    ("POST", "/privacy/erase", b"", 400, ""),
    ("POST", "/privacy/erase", b"{}", 400, "id"),
    ("POST", "/privacy/erase", {"id": 5}, 400, "id"),
    ("POST", "/privacy/erase", {"id": "user:undefined"}, 400, "id"),
    ("POST", "/privacy/erase", {"id": "planet:earth"}, 400, "id"),
    ("POST", "/privacy/erase", {"id": "user:x", "also": 1}, 400, "also"),
    ("POST", "/privacy/erase", b'{"id": "user:\xff"}', 400, ""),
    ("POST", "/privacy/erase", b"x" * 70000, 413, ""),
    ("POST", "/privacy/erase", {"id": f"user:nobody-{uuid.uuid4()}"}, 404, "id"),
    ("GET", "/privacy/access", None, 400, "id"),
    ("GET", "/privacy/access?id=user:a&id=user:b", None, 400, "id"),
    ("GET", "/privacy/access?id=%ff", None, 400, "id"),
    ("GET", "/privacy/access?id=user:a&format=csv", None, 400, "format"),
])
def test_privacy_bad_input(env, method, path, data, status, field):
    r = call(env, method, BASE + path, data)
    assert r.status_code == status, r.text
    assert r.json().get("field", "") == field


def test_privacy_needs_the_sites_admin_key(env):
    client, _, keys = env
    user = f"c-{uuid.uuid4().hex[:8]}"
    send(env, [{**hit("login", "2026-11-12T09:00:00Z"), "type": "identify", "user_id": user}])
    body = orjson.dumps({"id": f"user:{user}"})
    path = f"{BASE}/privacy/erase"
    assert client.post(path, content=body).status_code == 401
    for key in (keys[SITE]["read"], keys[SITE]["write"], keys["priv-other"]["admin"]):
        r = client.post(path, content=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403 and "admin key" in r.json()["error"]
        r = client.get(f"{BASE}/privacy/access?id=user:{user}",
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403
    # Another site's admin key on its own site finds nobody of ours.
    r = call(env, "POST", "/api/v1/sites/priv-other/privacy/erase", {"id": f"user:{user}"},
             site="priv-other")
    assert r.status_code == 404
    assert call(env, "GET", f"{BASE}/persons/user:{user}", key="read").status_code == 200


def test_site_retention_applies_to_links_and_person_level_tables(env):
    """A site keeping 3 days: rows of a person 10 days old go from events, the identity
    links and every person-level table alike (ClickHouse applies the TTLs at insert and
    at merges); a site keeping everything keeps them."""

    client, collector, _ = env
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).isoformat()
    n = uuid.uuid4().hex[:8]
    events = [
        {**hit("login", old, device_id=f"d-{n}"), "type": "identify", "user_id": f"u-{n}"},
        hit("page_view", old, device_id=f"d-{n}", session_id=f"s-{n}"),
        hit("view_item", old, [{"product_id": "p", "quantity": 1}], device_id=f"d-{n}",
            session_id=f"s-{n}"),
        hit("purchase", old, [{"product_id": "p", "quantity": 1}], device_id=f"d-{n}"),
    ]
    store = collector.store
    tables = ("events", "identity_links_by_identifier", "identity_links_by_person",
              "person_hits", "session_items", "purchased_items", "session_entries")

    def counts(site_id):
        return {t: int(store.rows(f"SELECT count() AS n FROM tagwerk.{t} WHERE site_id = "
                                  "{s:String}", {"s": site_id})[0]["n"]) for t in tables}

    sites = {}
    for days in (3, 0):
        site, keys = collector.sites.create(f"priv-ret{days}-{n}", retention_days=days)
        r = client.post("/api/v1/batch", content=orjson.dumps({"events": events}),
                        headers={"Authorization": f"Bearer {keys['write']}"})
        assert r.status_code == 202, r.text
        sites[days] = site.site_id
    wait_for(lambda: drained(collector))
    for table in tables:
        store.execute(f"OPTIMIZE TABLE tagwerk.{table} FINAL")
    assert all(counts(sites[0]).values()), counts(sites[0])
    assert counts(sites[3]) == dict.fromkeys(tables, 0)


def test_rows_acknowledged_before_an_erasure_was_known_are_dropped_by_the_flusher(store,
                                                                                   tmp_path):
    """Another collector's spool holds hits of the person, acknowledged before it learnt of
    the erasure: its flusher checks them against the tombstones it now has."""

    from collector.enrich.useragent import parse_agent
    from collector.ingest.events import Context, normalize
    from collector.metrics import Metrics
    from collector.privacy.tombstones import Tombstones
    from collector.spool.disk import Spool
    from collector.spool.flusher import Flusher
    from collector.spool.record import encode_record
    from tests.test_spool import append_all

    site = f"priv-spool-{uuid.uuid4().hex[:6]}"
    ctx = Context(site, dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    hits = [{"event": "e", "user_id": "erased-1", "consent": ["analytics"]},
            {"event": "e", "device_id": "kept", "consent": ["analytics"]},
            {"event": "e", "consent": ["analytics"], "identifiers": {"loyalty": "L-erased"}}]
    lines = [orjson.dumps(list(normalize(h, ctx)[0].values())) for h in hits]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [encode_record(lines, site, [])])
    tombstones = Tombstones(store, TEST_PRIVACY_KEY.encode())
    tombstones.add(site, {tombstones.subject(site, "user", "erased-1"): ALWAYS,
                          tombstones.subject(site, "loyalty", "L-erased"): ALWAYS},
                   str(uuid.uuid4()))
    flusher = Flusher(spool, store, Metrics(), interval=0.01)
    flusher.blocked = tombstones.blocks
    flusher.recheck(spool.durable)
    flush_all(flusher, spool)
    stored = store.rows("SELECT user_id, device_id FROM tagwerk.events WHERE site_id = "
                        "{s:String}", {"s": site})
    assert stored == [{"user_id": "", "device_id": "kept"}]
    assert flusher.recheck_until is None  # checked once, then no more parsing


def test_bodies_as_curl_sends_them_and_other_media_types(env):
    client, _, keys = env
    headers = {"Authorization": f"Bearer {keys[SITE]['admin']}"}
    body = orjson.dumps({"id": f"user:nobody-{uuid.uuid4()}"})
    for media, status in [("application/x-www-form-urlencoded", 404), ("text/plain", 404),
                          ("image/png", 415), ("multipart/form-data; boundary=x", 415)]:
        r = client.post(f"{BASE}/privacy/erase", content=body,
                        headers={**headers, "Content-Type": media})
        assert r.status_code == status, (media, r.text)
    r = client.post(f"{BASE}/privacy/erase", content=body,
                    headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 415 and "compressed" in r.json()["error"]


def test_an_erasure_finds_the_person_after_flushing_what_was_acknowledged(env, monkeypatch):
    """Hits acknowledged just before the erasure, still in the spool: a login on a new
    device among them. The person is looked up once they are stored, so that the new
    device is theirs too: its rows go and it gets a tombstone."""
    client, collector, keys = env
    n = uuid.uuid4().hex[:8]
    user, old_device, new_device = f"u-{n}", f"d1-{n}", f"d2-{n}"
    send(env, [{**hit("login", "2026-11-10T08:00:00Z", device_id=old_device),
                "type": "identify", "user_id": user}])
    monkeypatch.setattr(collector.flusher, "interval", 1.5)  # the next ones wait in the spool
    r = client.post("/api/v1/batch", content=orjson.dumps({"events": [
        hit("page_view", "2026-11-10T09:00:00Z", device_id=new_device),
        {**hit("login", "2026-11-10T09:01:00Z", device_id=new_device), "type": "identify",
         "user_id": user},
        hit("page_view", "2026-11-10T09:02:00Z", device_id=new_device)]}),
        headers={"Authorization": f"Bearer {keys[SITE]['write']}"})
    assert r.status_code == 202, r.text
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
    assert r.status_code == 200, r.text
    assert r.json()["identifiers"] == 3 and r.json()["spool_flushed"] is True
    wait_for(lambda: drained(collector))
    assert found_anywhere(collector.store, [user, old_device, new_device]) == {}
    assert send(env, [hit("page_view", "2026-11-10T09:03:00Z", device_id=new_device)]) == 0


def test_an_erasure_takes_every_copy_of_the_persons_hits(env):
    """person_hits files a hit under each identifier it names: the person's hit naming also
    an identifier nobody linked, and one naming someone else's loyalty card, are gone under
    those keys too (not only under the person's own), with their device ids."""
    client, collector, _ = env
    n = uuid.uuid4().hex[:8]
    user, phone, stray, other, card = (f"u-{n}", f"ph-{n}", f"anon-{n}", f"o-{n}",
                                       f"L-{n}")
    item = {"product_id": f"p-{n}", "quantity": 1}
    send(env, [{**hit("login", "2026-11-10T08:00:00Z", device_id=phone), "type": "identify",
                "user_id": user},
               {**hit("login", "2026-11-10T08:00:00Z", identifiers={"loyalty": card}),
                "type": "identify", "user_id": other},
               hit("view_item", "2026-11-10T09:00:00Z", [item], device_id=phone,
                   identifiers={"anon": stray}),
               hit("purchase", "2026-11-10T10:00:00Z", [item], device_id=phone,
                   identifiers={"loyalty": card})])
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
    assert r.status_code == 200, r.text
    assert found_anywhere(collector.store, [user, phone]) == {}
    assert call(env, "GET", f"{BASE}/persons/anon:{stray}/profile", key="read"
                ).status_code == 404
    kept = call(env, "GET", f"{BASE}/persons/user:{other}/profile", key="read")
    assert kept.status_code in (200, 404) and not (kept.status_code == 200
                                                   and kept.json()["purchased"])


def test_erasing_a_device_takes_its_hits_that_claimed_someone_elses_user_id(env):
    """A browser's unverified user id is a claim: the hit is the device's (person_hits files
    it there), so erasing the device erases it, and the person it claimed is unchanged."""
    client, collector, _ = env
    n = uuid.uuid4().hex[:8]
    victim, stranger = f"vic-{n}", f"str-{n}"
    item = {"product_id": f"p-{n}", "quantity": 1}
    send(env, [{**hit("login", "2026-11-10T08:00:00Z", device_id=f"vd-{n}"),
                "type": "identify", "user_id": victim}])
    claim(env, victim, stranger, item)
    assert call(env, "GET", f"{BASE}/persons/device:{stranger}/profile", key="read"
                ).status_code == 200
    accessed = call(env, "GET", f"{BASE}/privacy/access?id=device:{stranger}").json()
    assert [e["event"] for e in accessed["events"]] == ["view_item"]
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"device:{stranger}"})
    assert r.status_code == 200, r.text
    assert found_anywhere(collector.store, [stranger]) == {}
    assert call(env, "GET", f"{BASE}/persons/user:{victim}", key="read").status_code == 200


def test_a_shared_browsers_later_decision_is_not_in_the_earlier_persons_access(env):
    """A family tablet keeps one consent id: A decides and browses, later B decides again
    under the same id and browses. Each person's access lists the decisions their own hits
    were collected under, not the other's with its page (found by a privacy probe). (A
    profile lists each id's last decision: the browser's current one, so that a withdrawal
    after the last hit is seen.)"""
    client, collector, _ = env
    n = uuid.uuid4().hex[:8]
    a, b, tablet, consent_id = f"a-{n}", f"b-{n}", f"tab-{n}", uuid.uuid4().hex

    def decide(granted, url):
        r = client.post("/consent", content=orjson.dumps(
            {"site": SITE, "consent_id": consent_id, "granted": granted, "denied": [],
             "policy": "0123456789abcdef", "how": "banner", "url": url}))
        assert r.status_code == 202, r.text
        wait_for(lambda: drained(collector))

    def browse(user):
        send(env, [{"event": "login", "type": "identify", "user_id": user,
                    "device_id": tablet, "consent": ALL, "consent_id": consent_id},
                   {"event": "view_item", "device_id": tablet, "consent": ALL,
                    "consent_id": consent_id, "items": [{"product_id": f"p-{user}"}]}])

    decide(ALL, f"https://a.example/{a}")
    browse(a)
    decide([*ALL, "marketing"], f"https://b.example/{b}")
    browse(b)
    for user, granted in ((a, sorted(ALL)), (b, sorted([*ALL, "marketing"]))):
        access = call(env, "GET", f"{BASE}/privacy/access?id=user:{user}").json()
        urls = [d["url"] for d in access["consent"]]
        other = b if user == a else a
        assert urls and not any(other in url for url in urls), (user, urls)
        assert [sorted(d["granted"]) for d in access["consent"]] == [granted], user


def kiosk_past_the_limit(env, prefix):
    """A site allowing 3 users an identifier, and a kiosk four users u1..u4-{n} logged in
    on, then viewed late-{n} with: (n, kiosk, the site's API base, admin auth, write auth)."""
    client, collector, _ = env
    n = uuid.uuid4().hex[:8]
    site, keys = collector.sites.create(f"{prefix}-{n}", identity_max_persons=3)
    kiosk = f"kiosk-{n}"
    events = [{"event": "login", "type": "identify", "user_id": f"u{i}-{n}",
               "device_id": kiosk, "consent": ALL, "ts": f"2026-11-10T0{i}:00:00Z"}
              for i in range(1, 5)]
    events.append({"event": "view_item", "device_id": kiosk, "consent": ALL,
                   "ts": "2026-11-10T04:30:00Z", "items": [{"product_id": f"late-{n}"}]})
    write = {"Authorization": f"Bearer {keys['write']}"}
    r = client.post("/api/v1/batch", content=orjson.dumps({"events": events}), headers=write)
    assert r.status_code == 202, r.text
    wait_for(lambda: drained(collector))
    return (n, kiosk, f"/api/v1/sites/{site.site_id}",
            {"Authorization": f"Bearer {keys['admin']}"}, write)


def test_erasing_the_user_past_an_identifiers_limit_gives_nobody_their_hits(env):
    """A kiosk linked to more users than the site allows (3): its hits from the fourth
    user's login on are nobody's. Erasing that fourth user must not bring the kiosk back
    under the limit, which handed their view there to the third (found by a probe)."""
    client, collector, _ = env
    n, _, base, auth, _ = kiosk_past_the_limit(env, "priv-cap")

    def viewed(user):
        r = client.get(f"{base}/persons/user:{user}/profile", headers=auth)
        return [] if r.status_code == 404 else [v["product_id"] for v in r.json()["viewed"]]

    assert viewed(f"u3-{n}") == []
    r = client.post(f"{base}/privacy/erase", content=orjson.dumps({"id": f"user:u4-{n}"}),
                    headers=auth)
    assert r.status_code == 200, r.text
    assert viewed(f"u3-{n}") == []
    assert found_anywhere(collector.store, [f"u4-{n}"]) == {}


def test_a_kiosk_split_off_stays_past_the_limit_through_an_erasure_and_the_undo(env):
    """A kiosk past the limit (3 users, 4 logged in) split off by an admin, then one user
    erased, then the split undone: the kiosk must still be past the limit, its late view
    nobody's. The erasure skipped a split identifier's links, so it fell back under the
    limit and the undo gave the view to the third user (re-probe 43)."""
    client, collector, _ = env
    n, kiosk, base, auth, _ = kiosk_past_the_limit(env, "priv-split")

    def post(path, body):
        r = client.post(f"{base}{path}", content=orjson.dumps(body), headers=auth)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def viewed(user):
        r = client.get(f"{base}/persons/user:{user}/profile", headers=auth)
        return [] if r.status_code == 404 else [v["product_id"] for v in r.json()["viewed"]]

    split = post("/identity/split", {"id": f"device:{kiosk}"})["op_id"]
    post("/privacy/erase", {"id": f"user:u1-{n}"})
    post(f"/identity/operations/{split}/undo", {})
    assert viewed(f"u3-{n}") == []
    r = client.get(f"{base}/persons/device:{kiosk}", headers=auth)
    assert r.status_code == 404, r.text  # nobody's, as before the split
    assert found_anywhere(collector.store, [f"u1-{n}"]) == {}


def test_erasing_merged_users_keeps_a_kiosk_past_the_limit(env):
    """Two users of a kiosk past the limit (3 allowed, 4 logged in) merged into one person,
    then erased: each keeps an erased anchor of their own on the kiosk. One anchor for both
    took it back to 3 users, under the limit, and gave its late view to the fourth
    (re-probe 45)."""
    client, collector, _ = env
    n, kiosk, base, auth, _ = kiosk_past_the_limit(env, "priv-merged")

    def post(path, body):
        r = client.post(f"{base}{path}", content=orjson.dumps(body), headers=auth)
        assert r.status_code in (200, 201), r.text

    post("/identity/merge", {"from": f"user:u1-{n}", "into": f"user:u2-{n}"})
    post("/privacy/erase", {"id": f"user:u2-{n}"})
    r = client.get(f"{base}/persons/device:{kiosk}", headers=auth)
    assert r.status_code == 404, r.text  # still past the limit: nobody's
    r = client.get(f"{base}/persons/user:u4-{n}/profile", headers=auth)
    assert r.status_code == 404 or r.json()["viewed"] == [], r.text
    assert found_anywhere(collector.store, [f"u1-{n}", f"u2-{n}"]) == {}


def test_erasing_the_last_user_of_an_identifier_past_the_limit_erases_it_whole(env):
    """A kiosk past the site's limit (3) is nobody's from the fourth login on; once every
    user who logged in on it is erased, nobody is left whom it identifies: its rows (the
    view after the last login) and its links go, as a shared device's do when its last
    owner is erased (they stayed, and erasing the kiosk itself was a 404: found by an
    attacker's probe)."""
    client, collector, _ = env
    n, kiosk, base, auth, write = kiosk_past_the_limit(env, "priv-last")
    for i in range(1, 5):
        r = client.post(f"{base}/privacy/erase", content=orjson.dumps({"id": f"user:u{i}-{n}"}),
                        headers=auth)
        assert r.status_code == 200, r.text
        if i < 4:  # users who logged in on it are left: its anonymous view stays
            assert "events" in found_anywhere(collector.store, [f"late-{n}"])
    assert found_anywhere(collector.store, [kiosk]) == {}
    # The product's counts keep no identifier (unique counts are hash sketches).
    assert found_anywhere(collector.store, [f"late-{n}"]) == {"product_hourly": 1}
    # Its hits from now on are a new anonymous device's.
    r = client.post("/api/v1/batch", content=orjson.dumps({"events": [
        {"event": "view_item", "device_id": kiosk, "consent": ALL,
         "items": [{"product_id": f"new-{n}"}]}]}), headers=write)
    assert r.status_code == 202, r.text
    wait_for(lambda: drained(collector))
    assert found_anywhere(collector.store, [f"new-{n}"])


def test_access_says_when_the_persons_identifiers_were_cut(env, monkeypatch):
    """A person whose identifiers changed hands more often than one resolution reads
    (graph.MAX_LINKS) has incomplete spans: the access answer must say it is truncated,
    not list part of their rows as all (found by a probe)."""
    from collector.identity import graph as graphs

    n = uuid.uuid4().hex[:8]
    send(env, [{"event": "login", "type": "identify", "user_id": f"many-{n}",
                "device_id": f"d{i}-{n}", "consent": ALL} for i in range(6)])
    monkeypatch.setattr(graphs, "MAX_LINKS", 3)
    r = call(env, "GET", f"{BASE}/privacy/access?id=user:many-{n}")
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] is True


def test_an_erasure_takes_the_persons_sessions_from_the_settled_co_views(env):
    """The daily co-view tier marks each session it counted (its id, product ''): an
    erased person's session ids went nowhere (found by a probe). Both tiers' pairs also
    keep the ids of the sessions they count (clickhouse/0043): those go too."""
    from tests.test_aggregates import refresh_minute, refresh_settled

    n = uuid.uuid4().hex[:8]
    user, session = f"u-{n}", f"sess-{n}"
    send(env, [{"event": "login", "type": "identify", "user_id": user,
                "device_id": f"d-{n}", "consent": ALL, "ts": "2026-11-10T08:00:00Z"}] + [
        hit("view_item", f"2026-11-10T08:0{i}:00Z", [{"product_id": f"{p}-{n}"}],
            device_id=f"d-{n}", session_id=session) for i, p in enumerate(("a", "b"), 1)])
    refresh_settled(env[1].store)
    refresh_minute(env[1].store, (SITE,), ("coview_pairs",))
    assert found_anywhere(env[1].store, [session]) == {
        "coview_pairs": 2, "coview_pairs_settled": 3, "session_items": 1,
        "events": 2}  # (a, b), (b, a) and the session's mark
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["coview_pairs_settled"] == 3
    assert r.json()["removed"]["coview_pairs"] == 2
    assert found_anywhere(env[1].store, [session]) == {}


def test_a_device_whose_every_holder_was_erased_is_kept_nowhere(env):
    """A family tablet: A logs in, later B. Erasing A hands A's time on it to an erased
    anchor, so that B does not inherit it; erasing B too must leave the tablet's id
    nowhere, the anchors' links included: nobody is left whom it could identify. Its
    hits of both persons' time stay dropped, and its new hits belong to a new nobody."""
    client, collector, _ = env
    n = uuid.uuid4().hex[:8]
    a, b, tablet = f"ta-{n}", f"tb-{n}", f"tab2-{n}"
    product = {"product_id": f"tp-{n}", "quantity": 1}
    send(env, [{**hit("login", "2026-11-10T08:00:00Z", device_id=tablet),
                "type": "identify", "user_id": a},
               hit("view_item", "2026-11-10T08:05:00Z", [product], device_id=tablet),
               {**hit("login", "2026-11-11T08:00:00Z", device_id=tablet),
                "type": "identify", "user_id": b},
               hit("view_item", "2026-11-11T08:05:00Z", [product], device_id=tablet)])
    for user in (a, b):
        r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
        assert r.status_code == 200, r.text
    assert found_anywhere(collector.store, [tablet, a, b]) == {}
    assert send(env, [hit("view_item", "2026-11-10T09:00:00Z", [product], device_id=tablet),
                      hit("view_item", "2026-11-11T09:00:00Z", [product], device_id=tablet)]
                ) == 0
    # (a second on: the erasure's second is still B's)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert send(env, [hit("view_item", later, [product], device_id=tablet)]) == 1
    person = call(env, "GET", f"{BASE}/persons/device:{tablet}", key="read").json()
    assert [i["kind"] for i in person["identifiers"]] == ["device"]
    profile = call(env, "GET", f"{BASE}/persons/device:{tablet}/profile", key="read").json()
    assert [v["views"] for v in profile["viewed"]] == [1]


def test_a_device_erased_of_its_last_holder_leaves_no_hit_of_anyone_s_time(env):
    """A family tablet: C, then A log in; A is erased, which leaves the tablet's time from
    A's login on to nobody (an erased anchor); an anonymous visit then; then B logs in.
    Once B and C are erased too, nobody holds the tablet: its whole history so far goes,
    the anonymous visit of nobody's time included, and is dropped if replayed, rather than
    reappearing as the tablet's own profile (found by a reviewer)."""
    client, collector, _ = env
    n = uuid.uuid4().hex[:8]
    a, b, c, tablet = f"ga-{n}", f"gb-{n}", f"gc-{n}", f"tab3-{n}"

    def at(seconds):
        moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def view(ts, product):
        return hit("view_item", ts, [{"product_id": f"{product}-{n}", "quantity": 1}],
                   device_id=tablet)

    def login(ts, user):
        return {**hit("login", ts, device_id=tablet), "type": "identify", "user_id": user}

    def erase(user):
        r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
        assert r.status_code == 200, r.text

    send(env, [login("2026-11-09T08:00:00Z", c), view("2026-11-09T08:05:00Z", "c"),
               login("2026-11-10T08:00:00Z", a), view("2026-11-10T08:05:00Z", "a")])
    erase(a)
    gap = view(at(1), "gap")
    send(env, [gap, login(at(2), b), view(at(3), "b")])
    time.sleep(3.5)  # B's hits are in the past when B is erased
    erase(b)
    erase(c)
    assert found_anywhere(collector.store, [tablet]) == {}
    assert call(env, "GET", f"{BASE}/persons/device:{tablet}/profile", key="read"
                ).status_code == 404
    assert send(env, [gap]) == 0
    assert send(env, [view(at(1), "new")]) == 1


def test_an_erasure_keeps_the_operations_audit_rows_without_the_person(env):
    """Merges and splits that named the erased person stay on record (what, who ran it,
    when, the other persons it named) with their identifiers and person ids blanked; such
    an operation can no longer be undone (409)."""
    from collector.identifiers import person_id

    store = env[1].store
    n = uuid.uuid4().hex[:8]
    gone, kept, dev, kiosk, other = f"gone-{n}", f"kept-{n}", f"gdev-{n}", f"kiosk-{n}", \
        f"kdev-{n}"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    send(env, [{**hit("login", now, device_id=d), "type": "identify", "user_id": u}
               for u, d in ((gone, dev), (gone, kiosk), (kept, other))])

    def operate(path, body):
        r = call(env, "POST", f"{BASE}/identity/{path}", body)
        assert r.status_code == 201, r.text
        return r.json()["op_id"]

    merged = operate("merge", {"from": f"user:{gone}", "into": f"user:{kept}"})
    undone = operate(f"operations/{merged}/undo", {})
    split = operate("split", {"id": f"device:{kiosk}"})
    # A split of their device, undone: its rows name the device's own person id, which
    # anyone knowing the device id could compute again.
    operate(f"operations/{operate('split', {'id': f'device:{dev}'})}/undo", {})
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{gone}"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["identity_operations_redacted"] == 5
    theirs = [gone, dev, person_id(SITE, "user", gone), person_id(SITE, "device", dev)]
    assert found_anywhere(store, theirs) == {}
    history = {op["op_id"]: op for op in call(
        env, "GET", f"{BASE}/identity/operations?limit=1000").json()["operations"]}
    assert {history[op]["op"] for op in (merged, undone, split)} == {"merge", "undo", "split"}
    assert history[merged]["target"] == {"from": "", "into": person_id(SITE, "user", kept)}
    assert history[split]["target"]["from"] == ""
    assert all(history[op]["actor"].startswith("admin:") for op in (merged, undone, split))
    [row] = store.rows("SELECT identifiers, persons FROM tagwerk.identity_operations "
                       "WHERE site_id = {s:String} AND op_id = {op:UUID}",
                       {"s": SITE, "op": merged})
    assert row["identifiers"] == [f"user:{kept}"]
    assert row["persons"] == [person_id(SITE, "user", kept)]
    r = call(env, "POST", f"{BASE}/identity/operations/{split}/undo", {})
    assert r.status_code == 409 and "erased" in r.json()["error"], r.text
    # The other person is untouched.
    assert call(env, "GET", f"{BASE}/persons/user:{kept}", key="read").status_code == 200


def test_an_erasure_leaves_the_operations_on_a_device_someone_else_holds_as_they_were(env):
    """A split of a family tablet (and its undo) made while the other customer held it names
    the tablet and them only: erasing the earlier user keeps both rows whole, and the
    split can be made and undone as before."""
    n = uuid.uuid4().hex[:8]
    gone, kept, tablet = f"gone-{n}", f"kept-{n}", f"tablet-{n}"
    send(env, [{**hit("login", ts, device_id=tablet), "type": "identify", "user_id": u}
               for u, ts in ((gone, "2026-11-20T08:00:00Z"), (kept, "2026-11-20T20:00:00Z"))])
    r = call(env, "POST", f"{BASE}/identity/split", {"id": f"device:{tablet}"})
    assert r.status_code == 201, r.text
    split = r.json()["op_id"]
    r = call(env, "POST", f"{BASE}/identity/operations/{split}/undo", {})
    assert r.status_code == 201, r.text
    store = env[1].store
    before = store.rows("SELECT * FROM tagwerk.identity_operations WHERE site_id = {s:String} "
                        "AND has(identifiers, {d:String}) ORDER BY at",
                        {"s": SITE, "d": f"device:{tablet}"})
    assert len(before) == 2
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{gone}"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["identity_operations_redacted"] == 0
    assert store.rows("SELECT * FROM tagwerk.identity_operations WHERE site_id = {s:String} "
                      "AND has(identifiers, {d:String}) ORDER BY at",
                      {"s": SITE, "d": f"device:{tablet}"}) == before
    r = call(env, "POST", f"{BASE}/identity/split", {"id": f"device:{tablet}"})
    assert r.status_code == 201, r.text
    r = call(env, "POST", f"{BASE}/identity/operations/{r.json()['op_id']}/undo", {})
    assert r.status_code == 201, r.text


def test_an_operation_that_named_the_erased_person_before_it_is_not_undone(env):
    """A tablet merged into a customer, then used by another who logged in on it, then split
    off: the split's audit row names the first customer as whom the tablet had been merged
    into. Once they are erased, undoing the split would write that merge back half blank:
    409."""
    n = uuid.uuid4().hex[:8]
    gone, other, tablet = f"gone-{n}", f"other-{n}", f"tab-{n}"
    send(env, [{**hit("login", "2026-11-20T07:00:00Z", device_id=f"gdev-{n}"),
                "type": "identify", "user_id": gone},
               hit("page_view", "2026-11-20T07:30:00Z", device_id=tablet)])
    r = call(env, "POST", f"{BASE}/identity/merge", {"from": f"device:{tablet}",
                                                      "into": f"user:{gone}"})
    assert r.status_code == 201, r.text
    send(env, [{**hit("login", "2026-11-20T20:00:00Z", device_id=tablet),
                "type": "identify", "user_id": other}])
    r = call(env, "POST", f"{BASE}/identity/split", {"id": f"device:{tablet}"})
    assert r.status_code == 201, r.text
    split = r.json()["op_id"]
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{gone}"})
    assert r.status_code == 200, r.text
    r = call(env, "POST", f"{BASE}/identity/operations/{split}/undo", {})
    assert r.status_code == 409 and "erased" in r.json()["error"], r.text


def test_an_erasure_changes_identity_rows_under_the_sites_operations_lock(env, monkeypatch):
    """No undo runs between the deletes of their merges and the rewrite of the audit rows
    (it could write a merge into them back): the identity step holds the lock operations
    take."""
    from collector.identity.operations import serialised

    n = uuid.uuid4().hex[:8]
    send(env, [{**hit("login", "2026-11-20T07:00:00Z", device_id=f"ldev-{n}"),
                "type": "identify", "user_id": f"locked-{n}"}])
    held = []
    real = erasure._forget_identifiers  # noqa: SLF001

    def forget(*args, **kwargs):
        held.append(serialised(SITE).locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(erasure, "_forget_identifiers", forget)
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:locked-{n}"})
    assert r.status_code == 200, r.text
    assert held == [True]


def test_an_erasure_takes_the_persons_part_of_a_shared_devices_aggregates(env):
    """A shared device's anonymous purchases and a shared session's views are one row of
    purchased_items and session_items, whoever's they were: the erasure removed the row
    only when its last hit was the person's, so the erased person's purchase stayed filed
    under the device (and paired with the next owner's in co-purchases). An attacker's
    probe: now the rows of the person's shared identifiers are made again from the hits
    that remain."""
    n = uuid.uuid4().hex[:8]
    first, second, device, session = f"ra-{n}", f"rb-{n}", f"rd-{n}", f"sd-{n}"
    theirs, others = item(f"rx-{n}", "shoes", "Acme", "3.00"), \
        item(f"ry-{n}", "shoes", "Acme", "4.00")
    viewed, seen = item(f"rxv-{n}", "shoes", "Acme", "1.00"), \
        item(f"ryv-{n}", "shoes", "Acme", "1.00")
    send(env, [
        {**hit("login", "2026-11-20T09:00:00Z", device_id=device), "type": "identify",
         "user_id": first},
        hit("purchase", "2026-11-20T09:01:00Z", [theirs], device_id=device,
            order_id=f"o1-{n}", currency="EUR"),
        hit("view_item", "2026-11-20T09:02:00Z", [viewed], device_id=device,
            session_id=session),
        {**hit("login", "2026-11-20T09:10:00Z", device_id=device), "type": "identify",
         "user_id": second},
        hit("view_item", "2026-11-20T09:11:00Z", [seen], device_id=device, session_id=session),
        hit("purchase", "2026-11-20T09:12:00Z", [others], device_id=device,
            order_id=f"o2-{n}", currency="EUR"),
    ])
    store = env[1].store

    def products(table: str) -> list[str]:
        rows = store.rows(f"SELECT arraySort(groupUniqArrayArray(products)) AS p FROM "
                          f"tagwerk.{table} WHERE site_id = {{s:String}} AND device_id = "
                          "{d:String}", {"s": SITE, "d": device})
        return rows[0]["p"]

    wait_for(lambda: len(products("purchased_items")) == 2
             and len(products("session_items")) == 2)
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{first}"})
    assert r.status_code == 200, r.text
    assert products("purchased_items") == [others["product_id"]]
    assert products("session_items") == [seen["product_id"]]
    assert found_anywhere(store, [first]) == {}
    # Only the product counts (persons' hash sketches) still hold the products: no person.
    assert set(found_anywhere(store, [theirs["product_id"], viewed["product_id"]])) == \
        {"product_hourly"}


def test_a_hit_whose_user_id_decides_is_kept_in_an_erased_persons_time(env):
    """A hit on a shared device in the erased person's time is theirs, and dropped, unless
    a user id decides whose it is (the batch API's, or a verified identify): the other
    owner's purchase was dropped at ingestion, as it would not have been deleted (an
    attacker's probe)."""
    n = uuid.uuid4().hex[:8]
    kept, erased, device = f"ua-{n}", f"ub-{n}", f"dz-{n}"
    send(env, [
        {**hit("login", "2026-11-21T10:00:00Z", device_id=device), "type": "identify",
         "user_id": kept},
        {**hit("login", "2026-11-21T11:00:00Z", device_id=device), "type": "identify",
         "user_id": erased},
    ])
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{erased}"})
    assert r.status_code == 200, r.text
    assert send(env, [hit("purchase", "2026-11-21T11:30:00Z", [item(f"p-{n}", "c", "b")],
                          device_id=device, user_id=kept, order_id=f"o-{n}")]) == 1
    # Without a user id, the hit of that time was the erased person's: dropped.
    assert send(env, [hit("view_item", "2026-11-21T11:40:00Z", device_id=device)]) == 0
    store = env[1].store
    rows = store.rows("SELECT user_id FROM tagwerk.events WHERE site_id = {s:String} AND "
                      "device_id = {d:String} AND event = 'purchase'", {"s": SITE, "d": device})
    assert rows == [{"user_id": kept}]


def test_an_identifier_split_off_the_erased_person_stays_its_own(env):
    """A loyalty card the customer linked, then split off by an admin (a family's card): it
    is its own person, not theirs, as profiles and access say. Erasing the customer takes
    their link to it and blanks them in the split's audit row, but leaves the card's split,
    its hits and its person as they were (probe 42: the split was deleted and the person
    blanked in the audit row, the card's hits erased, yet a later hit made it a person again
    under the same id)."""
    n = uuid.uuid4().hex[:8]
    user, card = f"c-{n}", f"L-{n}"
    send(env, [{**hit("login", "2026-11-21T08:00:00Z"), "type": "identify", "user_id": user,
                "identifiers": {"loyalty": card}},
               hit("purchase", "2026-11-21T18:00:00Z", [item(f"bread-{n}", "food", "B", "3")],
                   identifiers={"loyalty": card})])
    r = call(env, "POST", f"{BASE}/identity/split", {"id": f"loyalty:{card}"})
    assert r.status_code == 201, r.text
    split = r.json()["op_id"]
    own = call(env, "GET", f"{BASE}/persons/loyalty:{card}", key="read").json()["person_id"]
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{user}"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["identity_overrides"] == 0
    store = env[1].store
    assert found_anywhere(store, [user]) == {}
    r = call(env, "GET", f"{BASE}/persons/loyalty:{card}", key="read")
    assert r.status_code == 200 and r.json()["person_id"] == own
    [audit] = store.rows("SELECT target FROM tagwerk.identity_operations "
                         "WHERE op_id = {op:UUID}", {"op": split})
    assert orjson.loads(audit["target"])["person"] == own
    assert store.rows("SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} "
                      "AND identifiers['loyalty'] = {c:String}", {"s": SITE, "c": card}) == \
        [{"n": 1}]


def test_one_access_request_of_a_site_at_a_time(env, monkeypatch):
    """An answer holds up to 50,000 rows of every column in memory (66 MB of JSON, 400 MB
    of the process for one customer with 55,000 hits); six at once took the process from
    0.9 to 2.7 GB (probe 42). A second request of the site while one runs is a 429 with
    Retry-After; another site's is not held up; the next one after it goes through."""
    from collector.api import privacy as privacy_api

    n = uuid.uuid4().hex[:8]
    user = f"c-{n}"
    send(env, [{**hit("login", "2026-11-22T08:00:00Z"), "type": "identify", "user_id": user}])
    send(env, [{**hit("login", "2026-11-22T08:00:00Z"), "type": "identify", "user_id": user}],
         site="priv-other")
    began, release = threading.Event(), threading.Event()
    real = privacy_api.access_request

    def slow(*args):
        began.set()
        assert release.wait(10)
        return real(*args)

    monkeypatch.setattr(privacy_api, "access_request", slow)
    path = f"privacy/access?id=user:{user}"
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(call, env, "GET", f"{BASE}/{path}")
        assert began.wait(10)
        second = call(env, "GET", f"{BASE}/{path}")
        assert second.status_code == 429, second.text
        assert "at most 1 access request" in second.json()["error"]
        assert "Retry-After" in second.headers
        began.clear()
        other = pool.submit(call, env, "GET", f"/api/v1/sites/priv-other/{path}",
                            site="priv-other")
        release.set()
        assert first.result().status_code == 200
        assert other.result().status_code == 200
    assert call(env, "GET", f"{BASE}/{path}").status_code == 200


def test_a_person_whose_device_changed_hands_often_can_be_erased(env):
    """Probe 70: a device that went back and forth between two customers 9,000 times is
    4,500 spans of each, and the engine tested each of its 40,000 rows against every span
    with a copy of the span arrays per row: the access request and the erasure of that
    customer failed past the memory limit (503 after 51 s). Spans are tested in chunks,
    each behind the range of times it covers (graph._at_spans)."""
    _, collector, _ = env
    device, x, y = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("flip", "x", "y"))
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    events = [{"event": "login", "type": "identify", "user_id": x if n % 2 == 0 else y,
               "device_id": device, "consent": ALL,
               "ts": (start + dt.timedelta(seconds=10 * n)).isoformat()} for n in range(9_000)]
    seconds = [n * 9 // 4 for n in range(40_000)]  # a view every 2.25 s, x's every other 10 s
    events += [{"event": "view_item", "device_id": device, "consent": ALL,
                "ts": (start + dt.timedelta(seconds=t, milliseconds=500)).isoformat(),
                "items": [{"product_id": f"f{t % 7}", "price": 1}]} for t in seconds]
    xs = sum(1 for t in seconds if t // 10 % 2 == 0)
    send(env, events)
    r = call(env, "GET", f"{BASE}/privacy/access?id=user:{x}")
    assert r.status_code == 200, r.text[:300]
    views = [e for e in r.json()["events"] if e["event"] == "view_item"]
    assert len(views) == xs
    r = call(env, "POST", f"{BASE}/privacy/erase", {"id": f"user:{x}"})
    assert r.status_code == 200, r.text[:300]
    left = collector.store.rows(
        "SELECT count() AS n FROM tagwerk.events WHERE site_id = {s:String} "
        "AND device_id = {d:String} AND event = 'view_item'", {"s": SITE, "d": device})
    assert left == [{"n": 40_000 - xs}]  # y's turns
