"""Profiles kept in memory (collector/identity/cache.py) until a row they depend on changes,
as the change feed (collector/identity/changes.py) reports it: rows this collector flushed,
rows another writer stored, consent decisions, merges and erasures."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from collector.identity import cache, changes
from collector.identity import profile as profiles
from collector.identity.graph import Graph
from collector.storage import StorageError
from collector.web.batches import Batcher
from tests.helpers import client_with_site, send_batch, wait_for

SITE = "kept-shop"
BASE = f"/api/v1/sites/{SITE}"
ALL = ["analytics", "personalization"]


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    yield from client_with_site(store, tmp_path_factory.mktemp("kept"), SITE)


def send(env, events):
    client, collector, keys = env
    send_batch(client, collector, keys["write"], events)


def get(env, path, key="read"):
    client, _, keys = env
    return client.get(f"{BASE}{path}", headers={"Authorization": f"Bearer {keys[key]}"})


def view(product, **fields):
    return {"event": "view_item", "ts": "2026-11-20T10:00:00Z", "consent": ALL,
            "items": [{"product_id": product, "price": "10.00", "quantity": 1}], **fields}


def viewed(env, ident):
    r = get(env, f"/persons/{ident}/profile")
    return [v["product_id"] for v in r.json()["viewed"]] if r.status_code == 200 else None


@pytest.fixture
def resolves(monkeypatch):
    """How many times a person was resolved (read from ClickHouse)."""
    calls = []
    person = Graph._person  # once per identifier resolved, alone or in a batch
    monkeypatch.setattr(Graph, "_person",
                        lambda self, *a, **kw: calls.append(a) or person(self, *a, **kw))
    return calls


def test_a_kept_profile_is_served_without_reading_until_the_person_has_a_new_hit(env, resolves):
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"a-{n}", device_id=f"d-{n}")])
    assert viewed(env, f"device:d-{n}") == [f"a-{n}"]
    assert viewed(env, f"device:d-{n}") == [f"a-{n}"]
    assert len(resolves) == 1
    send(env, [view(f"b-{n}", device_id=f"d-{n}", ts="2026-11-20T11:00:00Z")])
    # Flushed means refreshed: no wait needed. A hit changes no link: who they are is kept
    # (collector/identity/resolutions.py), only their rows are read again.
    assert viewed(env, f"device:d-{n}") == [f"b-{n}", f"a-{n}"]
    assert len(resolves) == 1


def test_another_persons_hits_leave_a_kept_profile_alone(env, resolves):
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"a-{n}", device_id=f"d-{n}")])
    assert viewed(env, f"device:d-{n}") == [f"a-{n}"]
    send(env, [view(f"b-{n}", device_id=f"other-{n}"),
               view(f"c-{n}", user_id=f"u-other-{n}")])
    assert viewed(env, f"device:d-{n}") == [f"a-{n}"]
    assert len(resolves) == 1


def test_a_login_refreshes_the_profiles_of_both_sides(env, resolves):
    """The user's profile gains the device's history; the device's now shows the user's:
    both are resolved again (a new link), not only their rows read."""
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"phone-{n}", device_id=f"d-{n}"),
               view(f"desk-{n}", user_id=f"u-{n}", device_id=f"desk-{n}",
                    ts="2026-11-20T09:00:00Z")])
    assert viewed(env, f"user:u-{n}") == [f"desk-{n}"]
    assert viewed(env, f"device:d-{n}") == [f"phone-{n}"]
    send(env, [{"type": "identify", "event": "login", "user_id": f"u-{n}",
                "device_id": f"d-{n}", "ts": "2026-11-20T12:00:00Z", "consent": ALL}])
    assert len(resolves) == 2
    assert sorted(viewed(env, f"user:u-{n}")) == [f"desk-{n}", f"phone-{n}"]
    assert sorted(viewed(env, f"device:d-{n}")) == [f"desk-{n}", f"phone-{n}"]
    assert len(resolves) == 4


def test_a_shared_device_changing_hands_refreshes_the_kept_resolution(env, resolves):
    """A's profile, kept with who A is, must lose the family tablet's hits from the moment B
    logs in on it: B's login is a new link of a device A holds (the tablet's key), so A is
    resolved again, and B's later hits on the tablet never show in A's profile."""
    n = uuid.uuid4().hex[:8]
    login = {"type": "identify", "event": "login", "device_id": f"tab-{n}", "consent": ALL}
    send(env, [{**login, "user_id": f"a-{n}", "ts": "2026-11-20T08:00:00Z"},
               view(f"a-view-{n}", device_id=f"tab-{n}", ts="2026-11-20T09:00:00Z")])
    assert viewed(env, f"user:a-{n}") == [f"a-view-{n}"]
    send(env, [view(f"a-again-{n}", device_id=f"tab-{n}", ts="2026-11-20T10:00:00Z")])
    assert viewed(env, f"user:a-{n}") == [f"a-again-{n}", f"a-view-{n}"]
    assert len(resolves) == 1  # a hit: rows read again, A kept
    send(env, [{**login, "user_id": f"b-{n}", "ts": "2026-11-20T11:00:00Z"},
               view(f"b-view-{n}", device_id=f"tab-{n}", ts="2026-11-20T12:00:00Z")])
    assert viewed(env, f"user:a-{n}") == [f"a-again-{n}", f"a-view-{n}"]
    assert len(resolves) == 2  # B's login named the tablet: A resolved again
    assert viewed(env, f"user:b-{n}") == [f"b-view-{n}"]
    assert viewed(env, f"device:tab-{n}") == [f"b-view-{n}"]


def test_nobody_becomes_somebody_at_their_first_hit(env):
    n = uuid.uuid4().hex[:8]
    assert get(env, f"/persons/device:d-{n}/profile").status_code == 404
    assert get(env, f"/persons/device:d-{n}/profile").status_code == 404  # kept too
    send(env, [view(f"a-{n}", device_id=f"d-{n}")])
    assert viewed(env, f"device:d-{n}") == [f"a-{n}"]


def test_rows_another_writer_stored_show_within_a_second_or_so(env):
    """Rows inserted into ClickHouse by someone else (another collector on the same server)
    reach the kept profile through the change feed, not through this flusher."""
    _, collector, _ = env
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"a-{n}", device_id=f"d-{n}")])
    assert viewed(env, f"device:d-{n}") == [f"a-{n}"]
    now = dt.datetime.now(dt.UTC).isoformat(" ", "milliseconds")[:23]
    collector.store.insert(
        "tagwerk.events (event_id, site_id, event, type, ts, received_at, device_id, consent, "
        "items)", orjson.dumps({
            "event_id": str(uuid.uuid4()), "site_id": SITE, "event": "view_item",
            "type": "track", "ts": now, "received_at": now, "device_id": f"d-{n}",
            "consent": ALL,
            "items": [{"product_id": f"b-{n}", "price": "10", "quantity": 1}]}), "JSONEachRow")
    wait_for(lambda: viewed(env, f"device:d-{n}") == [f"b-{n}", f"a-{n}"], timeout=10)


def test_a_new_decision_under_a_listed_consent_id_shows(env):
    client, _, _ = env
    n = uuid.uuid4().hex[:8]
    consent_id = uuid.uuid4().hex

    def decide(granted, denied):
        r = client.post("/consent", content=orjson.dumps(
            {"site": SITE, "consent_id": consent_id, "granted": granted, "denied": denied,
             "policy": "0123456789abcdef", "how": "banner"}),
            headers={"Content-Type": "application/json"})
        assert r.status_code in (200, 202, 204), r.text

    def decisions():
        return get(env, f"/persons/device:d-{n}/profile").json()["consent"]

    decide(ALL, ["marketing"])
    send(env, [view(f"a-{n}", device_id=f"d-{n}", consent_id=consent_id)])
    wait_for(decisions)
    decide(["analytics"], ["marketing", "personalization"])
    wait_for(lambda: decisions()[0]["denied"] == ["marketing", "personalization"])


def test_merges_and_erasures_show_at_once(env):
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"a-{n}", user_id=f"u-{n}"), view(f"b-{n}", user_id=f"v-{n}")])
    assert viewed(env, f"user:u-{n}") == [f"a-{n}"]
    client, _, keys = env
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    r = client.post(f"{BASE}/identity/merge", headers=admin,
                    content=orjson.dumps({"from": f"user:v-{n}", "into": f"user:u-{n}"}))
    assert r.status_code == 201, r.text
    assert sorted(viewed(env, f"user:u-{n}")) == [f"a-{n}", f"b-{n}"]
    r = client.post(f"{BASE}/privacy/erase", headers=admin,
                    content=orjson.dumps({"id": f"user:u-{n}"}))
    assert r.status_code == 200, r.text
    assert get(env, f"/persons/user:u-{n}/profile").status_code == 404
    assert get(env, f"/persons/user:v-{n}/profile").status_code == 404


# -- the pieces alone ---------------------------------------------------------------------------


class Feed:
    """A change feed that is always usable and never reads (for the cache alone)."""

    usable = True

    def __init__(self):
        self.listeners = []
        self.watching = False

    def watch(self):
        self.watching = True

    def idle(self):
        self.watching = False


def test_an_answer_computed_while_its_keys_changed_is_not_kept():
    feed = Feed()
    kept = cache.PersonAnswers(feed)
    since = kept.begin()
    kept.changed({"s": {"device:d"}})  # the rows it read may predate this
    kept.put("s", "a", {"x": 1}, {"device:d"}, since)
    assert kept.get("s", "a") == (False, None)
    since = kept.begin()
    kept.changed({"s": {"device:other"}, "t": {"device:d"}})  # someone else's, another site's
    kept.put("s", "a", {"x": 1}, {"device:d"}, since)
    assert kept.get("s", "a") == (True, {"x": 1})
    since = kept.begin()
    for i in range(cache.RECENT + 1):  # more changes than remembered: unknown, not kept
        kept.changed({"s": {f"device:{i}"}})
    kept.put("s", "b", {"x": 2}, {"device:d"}, since)
    assert kept.get("s", "b") == (False, None)


def test_kept_answers_are_bounded_and_dropped_by_key():
    kept = cache.PersonAnswers(Feed(), max_entries=3)
    for i in range(5):
        kept.put("s", i, i, {f"device:{i}", "user:shared"}, kept.begin())
    assert [kept.get("s", i)[0] for i in range(5)] == [False, False, True, True, True]
    kept.changed({"s": {"device:3"}})
    assert [kept.get("s", i)[0] for i in (2, 3, 4)] == [True, False, True]
    kept.changed({"s": {"user:shared"}})
    assert not any(kept.get("s", i)[0] for i in range(5))
    assert not kept._by_key  # noqa: SLF001 - nothing left behind in the index


def test_the_feed_reports_a_burst_and_a_mutation_as_everything(store, monkeypatch):
    feed = changes.ChangeFeed(store)
    assert feed._followable()  # noqa: SLF001 - the embedded engine's tables are plain
    heard = []
    feed.listeners.append(heard.append)
    feed.watch()

    def insert(n):  # hits with personalization consent: person_hits has them too
        rows = b"\n".join(orjson.dumps({"event_id": str(uuid.uuid4()), "site_id": "feed-site",
                                        "event": "page_view", "device_id": f"fd-{i}",
                                        "consent": ALL})
                          for i in range(n))
        store.insert("tagwerk.events (event_id, site_id, event, device_id, consent)", rows,
                     "JSONEachRow")

    insert(2)
    feed.look()
    assert heard[-1] == {"feed-site": {"device:fd-0", "device:fd-1"}}
    insert(1)
    insert(1)
    # Merged before the look (or between its statements): the rows are still found.
    store.execute("OPTIMIZE TABLE tagwerk.person_hits FINAL")
    feed.look()
    assert heard[-1] == {"feed-site": {"device:fd-0"}}
    monkeypatch.setattr(changes, "MOST_ROWS", 3)
    insert(3)
    feed.look()
    assert heard[-1] is None
    store.execute("ALTER TABLE tagwerk.events UPDATE url = url WHERE site_id = 'feed-site' "
                  "SETTINGS mutations_sync = 1")
    feed.look()
    assert heard[-1] is None
    count = len(heard)
    feed.look()  # nothing new: nobody is told anything
    assert len(heard) == count
    # An erasure by another collector deletes with patch parts (privacy/erase.py), which
    # no mutation records: everything changed all the same.
    store.execute("DELETE FROM tagwerk.person_hits WHERE site_id = 'feed-site' AND "
                  "key = 'device:fd-0' SETTINGS lightweight_delete_mode = 'lightweight_update'")
    feed.look()
    assert len(heard) == count + 1 and heard[-1] is None


class OwnWrites:
    """The test's store with a write count of its own: the collectors of other test modules
    write to the same engine, whenever their threads do."""

    sole_writer = True
    writes = 0

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    def wrote(self):
        self.writes += 1


def test_where_every_write_passes_here_the_feed_looks_after_one_not_on_the_clock(
        store, monkeypatch):
    own = OwnWrites(store)
    feed = changes.ChangeFeed(own, interval=0.01)
    looks = []
    state = feed._state  # noqa: SLF001 - counting the looks' reads
    monkeypatch.setattr(feed, "_state", lambda: looks.append(1) or state())
    heard = []
    feed.listeners.append(heard.append)
    feed.start()
    try:
        feed.watch()
        threading.Event().wait(0.3)  # ~30 turns of the background's loop
        assert len(looks) == 1  # watch's own, and no look since
        row = {"event_id": str(uuid.uuid4()), "site_id": "feed-quiet", "event": "page_view",
               "device_id": "fq-1", "consent": ALL}
        store.insert("tagwerk.events (event_id, site_id, event, device_id, consent)",
                     orjson.dumps(row), "JSONEachRow")
        threading.Event().wait(0.3)
        assert len(looks) == 1  # a write this store was not told of waits for the clock...
        own.wrote()  # ...one it was told of (every write through the embedded store)
        wait_for(lambda: {"feed-quiet": {"device:fq-1"}} in heard, timeout=5)
        assert len(looks) == 2
        monkeypatch.setattr(changes, "QUIET_LOOK_SECONDS", 0.05)  # at the latest, on the clock
        wait_for(lambda: len(looks) >= 4, timeout=5)
        monkeypatch.setattr(changes, "QUIET_LOOK_SECONDS", 60.0)
        own.sole_writer = False  # where other processes may write: every interval
        count = len(looks)
        wait_for(lambda: len(looks) >= count + 5, timeout=5)
    finally:
        feed.stop()


def test_the_embedded_stores_writes_count_and_its_reads_do_not(store, monkeypatch):
    mine = []  # (other collectors' threads write through the same store meanwhile)
    wrote = store.wrote
    monkeypatch.setattr(store, "wrote", lambda: (mine.append(threading.get_ident()), wrote()))
    store.rows("SELECT count() AS n FROM tagwerk.events WHERE site_id = 'nobody'")
    assert threading.get_ident() not in mine
    before = store.writes
    store.execute("DROP TABLE IF EXISTS default.never_made")
    assert mine.count(threading.get_ident()) == 1 and store.writes != before
    before = store.writes
    with pytest.raises(StorageError):  # a failed write may have stored part of its rows
        store.insert("tagwerk.events (event_id, site_id)", b'{"event_id": "not a uuid"}',
                     "JSONEachRow")
    assert mine.count(threading.get_ident()) == 2 and store.writes != before


def test_concurrent_cold_profiles_are_read_together_and_answer_as_alone(env, monkeypatch):
    """Profiles asked while another batch is being read wait and are read in one batch
    (collector/web/batches.py): each answers as if asked alone, a 404 among them too."""
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"p{i}-{n}", device_id=f"d{i}-{n}") for i in range(8)]
              + [{"type": "identify", "event": "login", "user_id": f"u-{n}",
                  "device_id": f"d0-{n}", "ts": "2026-11-20T08:00:00Z", "consent": ALL},
                 view(f"q-{n}", user_id=f"u-{n}", ts="2026-11-20T09:00:00Z")])
    idents = [f"device:d{i}-{n}" for i in range(8)] + [f"user:u-{n}", f"device:nobody-{n}"]
    sizes, asked = [], []
    fill, read, ask = Graph._fill_all, profiles.profiles_and_keys, Batcher.ask

    async def counted(self, *args):  # counted as it joins the waiting asks (no await between)
        asked.append(args)
        return await ask(self, *args)

    def held(*args):  # the first batch is read once every ask waits: the others come together
        wait_for(lambda: len(asked) >= len(idents))
        return read(*args)

    monkeypatch.setattr(Batcher, "ask", counted)
    monkeypatch.setattr(Graph, "_fill_all", lambda self, persons, listing:
                        sizes.append(len(persons)) or fill(self, persons, listing))
    monkeypatch.setattr(profiles, "profiles_and_keys", held)
    with ThreadPoolExecutor(len(idents)) as pool:
        together = list(pool.map(lambda ident: viewed(env, ident), idents))
    assert sum(sizes) == len(idents)
    assert max(sizes) > 1, sizes
    assert together == [[f"p0-{n}", f"q-{n}"]] + [[f"p{i}-{n}"] for i in range(1, 8)] + [
        [f"p0-{n}", f"q-{n}"], None]
    alone = [viewed(env, ident) for ident in idents]  # kept now: the answers read together
    monkeypatch.setattr(Graph, "_fill_all", fill)
    env[1].person_answers.clear()
    assert [viewed(env, ident) for ident in idents] == alone == together


def test_profiles_past_the_waiting_bound_answer_503_and_the_rest_200(env, monkeypatch):
    """Cold profiles waiting for a batch are bounded per site (collector/web/batches.py):
    past the bound a clear 503 with Retry-After, not an unbounded queue; the process keeps
    answering, and the waiting ones are read once the batch before them is done."""
    from collector.web.batches import Batcher

    n = uuid.uuid4().hex[:8]
    send(env, [view(f"p{i}-{n}", device_id=f"d{i}-{n}") for i in range(6)])
    read, release = profiles.profiles_and_keys, threading.Event()

    def held(*args):  # the first batch holds until the refused asks have their answer
        release.wait(30)
        return read(*args)

    monkeypatch.setattr(profiles, "profiles_and_keys", held)
    monkeypatch.setattr(env[1], "batches", Batcher(most=1, max_waiting=2))
    env[1].person_answers.clear()
    with ThreadPoolExecutor(6) as pool:
        asked = [pool.submit(get, env, f"/persons/device:d{i}-{n}/profile") for i in range(6)]
        wait_for(lambda: sum(f.done() for f in asked) == 3)  # one read, two wait, three not
        release.set()
        answers = [f.result() for f in asked]
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 503, 503, 503]
    for r in answers:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"
            assert "too many profiles" in r.json()["error"]
        else:
            assert r.json()["viewed"][0]["product_id"].endswith(n)


def test_a_login_on_a_second_device_refreshes_the_first_devices_kept_resolution(env, resolves):
    """The phone's person is the user's: when the user logs in on a desktop, the phone's
    profile gains the desktop's history. The new link names the desktop and the user, not
    the phone: the phone's resolution is kept under the person's user ids too."""
    n = uuid.uuid4().hex[:8]
    login = {"type": "identify", "event": "login", "user_id": f"u-{n}", "consent": ALL}
    send(env, [{**login, "device_id": f"phone-{n}", "ts": "2026-11-20T08:00:00Z"},
               view(f"on-phone-{n}", device_id=f"phone-{n}", ts="2026-11-20T09:00:00Z"),
               view(f"on-desk-{n}", device_id=f"desk-{n}", ts="2026-11-20T09:30:00Z")])
    assert viewed(env, f"device:phone-{n}") == [f"on-phone-{n}"]
    send(env, [{**login, "device_id": f"desk-{n}", "ts": "2026-11-20T10:00:00Z"}])
    assert viewed(env, f"device:phone-{n}") == [f"on-desk-{n}", f"on-phone-{n}"]
    assert len(resolves) == 2


def test_a_batch_past_the_row_cut_is_read_again_in_halves(env, monkeypatch):
    """MAX_ROWS bounds one person's rows; a batch of ordinary persons passing it together
    is read again in halves (three statements for eight persons here, not nine), and a
    person past it alone still gets their newest rows. Answers equal those read alone."""
    _, collector, _ = env
    n = uuid.uuid4().hex[:8]
    send(env, [view(f"p{i}-{j}-{n}", device_id=f"d{i}-{n}", ts=f"2026-11-20T10:0{j}:00Z")
               for i in range(8) for j in range(6)])
    send(env, [view(f"heavy{j:02d}-{n}", device_id=f"heavy-{n}", ts=f"2026-11-20T11:{j:02d}:00Z")
               for j in range(50)])
    site = collector.sites.get(SITE)
    persons = Graph(collector.store, site).resolve_many(
        [("device", f"d{i}-{n}") for i in range(8)])
    reads = []
    query = collector.store.query
    monkeypatch.setattr(collector.store, "query", lambda sql, params=None, fmt="JSONEachRow": (
        reads.append(sql) if "person_hits" in sql else None) or query(sql, params, fmt))
    monkeypatch.setattr(profiles, "MAX_ROWS", 40)  # 8 x 6 = 48 rows pass it together
    together = profiles.profiles_and_keys(collector.store, SITE, persons)
    assert len(reads) == 3
    alone = [profiles.profiles_and_keys(collector.store, SITE, [p])[0] for p in persons]
    assert together == alone
    [heavy] = Graph(collector.store, site).resolve_many([("device", f"heavy-{n}")])
    answer, _ = profiles.profiles_and_keys(collector.store, SITE, [heavy, persons[0]])[0]
    assert answer["viewed"][0]["product_id"] == f"heavy49-{n}"  # the newest of the cut
