"""The identity links held in the engine's memory (collector/identity/link_index.py): they
resolve as the tables do (tests/test_identity.py checks every scenario there both ways),
and a link newer than the copy, a feed that stopped watching or an erasure make the tables
answer instead, until the copy is loaded again."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import orjson
import pytest

from collector.identifiers import person_id
from collector.identity import link_index, profile
from collector.identity.changes import ChangeFeed
from collector.identity.graph import Graph, load_decisions
from collector.identity.link_index import DICTIONARIES, LOAD_SHARE, MOST_STALE, LinkIndex
from collector.identity.resolutions import _resolve
from collector.privacy import erase as erasure
from collector.storage import StorageError
from tests.helpers import (
    client_with_site,
    drained,
    found_anywhere,
    loaded,
    make_client,
    send_batch,
    wait_for,
)

SITE = "links-shop"
NAMES = [name.split(".")[1] for name in DICTIONARIES]  # the copy's, links and decisions
ALL = ["analytics", "personalization"]


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    yield from client_with_site(store, tmp_path_factory.mktemp("links"), SITE)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def login(env, user: str, device: str, ts: str) -> None:
    client, collector, keys = env
    send_batch(client, collector, keys["write"], [
        {"event": "login", "type": "identify", "user_id": user, "device_id": device,
         "ts": ts, "consent": ALL}])


def resolve(env, *ask: str):
    """As a profile resolves (PersonAnswers.begin first: the feed watches)."""
    _, collector, _ = env
    collector.person_answers.begin()
    site = collector.sites.get(SITE)
    graph = Graph(collector.store, site, load_decisions(collector.store, SITE))
    return _resolve(graph, [ask], collector.link_index)[0]


@contextlib.contextmanager
def own_index(collector, start: bool = False, **intervals: float):
    """An index of its own with a feed of its own (``start``: their threads running), the
    module's index stopped meanwhile: its thread would load or drop the copy under the
    test."""
    collector.link_index.stop()
    feed = ChangeFeed(collector.store, interval=0.05)
    index = LinkIndex(collector.store, feed, **intervals)
    if start:
        feed.start()
        index.start()
    try:
        yield index
    finally:
        index.stop()
        feed.stop()
        feed.listeners.clear()
        collector.link_index.start()


def built(index: LinkIndex) -> None:
    """An index of its own (``own_index``) asked for, its links loaded and its hits' copy
    built, as its thread would do them."""
    index.feed.watch()
    index.begin()
    index.reload_now()
    index.refresh_hits()


def test_a_link_newer_than_the_copy_is_read_from_the_tables(env):
    _, collector, _ = env
    index = collector.link_index
    anna, ben, tablet = uid("anna"), uid("ben"), uid("tablet")
    login(env, anna, tablet, "2026-11-01T09:00:00Z")
    token = loaded(collector)
    assert index.links(SITE, [("device", tablet)])[("device", tablet)][0] == 1
    assert resolve(env, "device", tablet).person_id == person_id(SITE, "user", anna)

    login(env, ben, tablet, "2026-11-01T10:00:00Z")  # flushed: the feed has looked
    assert not index.fresh(SITE, [f"link:device:{tablet}"], token)
    assert index.links(SITE, [("device", tablet)])[("device", tablet)][0] == 1  # the old copy
    assert resolve(env, "device", tablet).person_id == person_id(SITE, "user", ben)
    # Anna's own key is not stale, but who she is depended on the tablet: the tables again.
    assert [span.id for span in resolve(env, "user", anna).spans] == [tablet]
    assert resolve(env, "user", anna).spans[0].end.startswith("2026-11-01 10:00:00")

    token = loaded(collector)
    assert index.fresh(SITE, [f"link:device:{tablet}"], token)
    assert index.links(SITE, [("device", tablet)])[("device", tablet)][0] == 2
    assert resolve(env, "device", tablet).person_id == person_id(SITE, "user", ben)


def test_a_copy_in_use_keeps_the_feed_watching(env, monkeypatch):
    """Changes stored while nobody watched go unseen: a copy in use keeps the feed watching;
    one nobody used for ``max_age`` lets it rest, and is loaded again before it serves."""
    _, collector, _ = env
    index = collector.link_index
    loaded(collector)
    collector.changes.idle()  # as the kept answers do when they hold nothing
    assert collector.changes.watching
    assert index.begin() is not None
    monkeypatch.setattr(index, "max_age", 0.0)
    collector.changes.idle()
    assert not collector.changes.watching
    collector.changes.watch()
    assert index.begin() is None


def test_everything_changed_makes_the_whole_copy_stale(env):
    _, collector, _ = env
    index = collector.link_index
    token = loaded(collector)
    index.changed(None)  # an erasure, a merge, a burst of rows
    assert index.begin() is None
    assert not index.fresh(SITE, [], token)


def test_an_erasure_leaves_nothing_in_the_copy(env):
    client, collector, keys = env
    user, device = uid("gone"), uid("gone-dev")
    login(env, user, device, "2026-11-02T09:00:00Z")
    collector.person_answers.begin()
    collector.link_index.reload_now()
    collector.link_index.refresh_hits()
    held = collector.store.rows(
        "SELECT count() AS n FROM tagwerk.identity_links_dict "
        "WHERE position(value, {d:String}) > 0",
        {"d": device})
    assert int(held[0]["n"]) == 1
    assert {"identity_links_dict", "identity_held_dict"} <= set(
        found_anywhere(collector.store, [device]))  # the helper searches the copies too
    assert "person_hits_copy" in found_anywhere(collector.store, [user])  # (the hit's key)
    r = client.post(f"/api/v1/sites/{SITE}/privacy/erase", json={"id": f"user:{user}"},
                    headers={"Authorization": f"Bearer {keys['admin']}"})
    assert r.status_code == 200, r.text
    assert found_anywhere(collector.store, [user, device]) == {}


def test_an_erasure_clears_a_copy_whoever_loaded_it(env):
    """A copy this index never loaded (a query read the dictionary, another collector or an
    earlier run loaded it) is in the engine's memory all the same."""
    client, collector, keys = env
    user, device = uid("gone2"), uid("gone2-dev")
    login(env, user, device, "2026-11-02T09:00:00Z")
    collector.link_index.unload()
    collector.store.execute("SYSTEM RELOAD DICTIONARY tagwerk.identity_links_dict")
    collector.store.execute("SYSTEM RELOAD DICTIONARY tagwerk.identity_held_dict")
    r = client.post(f"/api/v1/sites/{SITE}/privacy/erase", json={"id": f"user:{user}"},
                    headers={"Authorization": f"Bearer {keys['admin']}"})
    assert r.status_code == 200, r.text
    assert found_anywhere(collector.store, [user, device]) == {}


def test_an_erasure_cancels_a_load_under_way(env, monkeypatch):
    """A load that began before an erasure's deletes may hold what they removed, and the
    erasure waited for it to finish before dropping it: up to a whole load (5 s on the 10M
    bench) added to the erasure. Now the erasure cancels the loads' source queries (by
    their log comment) and drops what they left. A stand-in for the copy's first
    dictionary whose source reads a row a millisecond (a minute in all) stands for the
    load under way."""
    _, collector, _ = env
    index, store = collector.link_index, collector.store
    slow = "tagwerk.test_slow_dict"
    failed: list[Exception] = []

    def load() -> None:
        try:
            index.reload_now()
        except StorageError as exc:
            failed.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    index.stop()  # its loading thread would start the slow load again
    try:
        store.execute(f"DROP DICTIONARY IF EXISTS {slow}")
        store.execute(
            f"CREATE DICTIONARY {slow} (hash UInt64, value String) PRIMARY KEY hash "
            "SOURCE(CLICKHOUSE(QUERY 'SELECT number AS hash, toString(number) AS value "
            "FROM numbers(60000) WHERE NOT ignore(sleepEachRow(0.001)) "
            f"SETTINGS max_block_size = 100, log_comment = ''{link_index.LOADING}'''))"
            " LAYOUT(HASHED()) LIFETIME(0)")
        loaded(collector)  # an earlier copy in memory, which the cancelled load leaves
        generation = index.state()["generation"]
        monkeypatch.setattr(link_index, "DICTIONARIES", (slow, *DICTIONARIES))
        collector.person_answers.begin()
        index.begin()
        thread.start()
        wait_for(lambda: store.rows(
            "SELECT 1 FROM system.processes WHERE Settings['log_comment'] = {c:String}",
            {"c": link_index.LOADING}))
        began = time.monotonic()
        index.forget_erased()
        took = time.monotonic() - began
        thread.join(60)
        assert not thread.is_alive()
        assert took < 30, f"the erasure waited {took:.1f} s for the load"
        assert [type(exc) for exc in failed] == [link_index.LoadCancelled]
        assert index.state()["generation"] == generation  # no copy counted
        assert index.begin() is None  # nothing usable: the tables answer
        in_memory = store.rows(
            "SELECT name FROM system.dictionaries WHERE database = 'tagwerk' "
            "AND name IN {names:Array(String)} AND status != 'NOT_LOADED'",
            {"names": ["test_slow_dict", *NAMES]})
        assert in_memory == []
    finally:
        monkeypatch.undo()
        if thread.is_alive():  # failed before the erasure: the load is cancelled here
            store.execute(link_index.CANCEL_LOADS, {"comment": link_index.LOADING})
            thread.join(60)
        store.execute(f"DROP DICTIONARY IF EXISTS {slow}")
        index.start()
    loaded(collector)  # loads again, as the loading thread will
    for name in DICTIONARIES:  # the copy's own loads carry the comment the erasure cancels by
        created = store.rows(f"SHOW CREATE DICTIONARY {name}")[0]["statement"]
        assert f"log_comment = \\'{link_index.LOADING}\\'" in created, created


def test_no_load_starts_while_an_erasure_drops_the_copy(env, monkeypatch):
    """A load that starts once the erasure cancelled the one under way, before the erasure
    dropped the copy, would be cancelled in turn and could end as if complete: it is
    refused, and the copy dropped."""
    _, collector, _ = env
    index = collector.link_index
    loaded(collector)
    unload, refused = index.unload, []

    def load_first() -> None:
        try:
            index.reload_now()
        except link_index.LoadCancelled as exc:
            refused.append(exc)
        unload()

    monkeypatch.setattr(index, "unload", load_first)
    index.forget_erased()
    assert len(refused) == 1
    assert index.begin() is None
    loaded(collector)


def test_the_loading_thread_waits_for_an_erasure(env):
    """While an erasure drops the copy, the loading thread does not try to load: each try
    would be refused, and the profiles asking meanwhile (each wakes the thread) would make
    it try, and log, over and over. An index of its own, due for a load at once."""
    _, collector, _ = env
    actions = []
    with own_index(collector, reload_after=0.0, min_interval=0.0) as index:

        def look_then_unload() -> None:
            actions.append(index._next())  # noqa: SLF001 (what its thread would do now)
            LinkIndex.unload(index)

        index.feed.watch()
        index.begin()
        index.reload_now()
        index.changed(None)  # everything stale: a load is due once loads' share allows
        time.sleep(LOAD_SHARE * index._took + 0.1)  # noqa: SLF001
        assert index._next() == "load"  # noqa: SLF001
        index.unload = look_then_unload  # type: ignore[method-assign]
        index.forget_erased()
        assert actions == [None]
    loaded(collector)


def test_unloading_drops_the_copy_from_memory(env):
    _, collector, _ = env
    index = collector.link_index
    loaded(collector)
    index.unload()
    assert index.begin() is None
    status = collector.store.rows(
        "SELECT name, status FROM system.dictionaries WHERE database = 'tagwerk' "
        "AND name IN {names:Array(String)}", {"names": NAMES})
    assert len(status) == len(NAMES), status
    assert {row["status"] for row in status} == {"NOT_LOADED"}, status


def test_unloading_while_a_query_reads_the_copy_as_a_table_leaves_it_attached(env):
    """The engine refuses to attach a dictionary again while a query that read it as a table
    still holds it ("detached but still used by some query. Retry later"): an erasure under
    such a query (a data team's, through the SQL port) failed, and left the dictionaries
    detached, every later load failing with them."""
    _, collector, _ = env
    index, store = collector.link_index, collector.store
    collector.person_answers.begin()
    index.reload_now()
    started = threading.Event()

    def reader() -> None:
        started.set()
        store.query("SELECT n.number, sleepEachRow(0.3) FROM numbers(4) AS n "
                    "LEFT JOIN tagwerk.identity_links_dict AS d ON d.hash = n.number "
                    "SETTINGS max_block_size = 1")

    thread = threading.Thread(target=reader)
    thread.start()
    started.wait()
    wait_for(lambda: store.rows("SELECT 1 FROM system.processes WHERE query LIKE "
                                "'%sleepEachRow(0.3)%' AND query NOT LIKE '%system.processes%'"))
    try:
        index.unload()
    finally:
        thread.join()
    attached = store.rows("SELECT name FROM system.dictionaries WHERE database = 'tagwerk' "
                          "AND name IN {names:Array(String)}", {"names": NAMES})
    assert len(attached) == len(NAMES), attached
    loaded(collector)


def test_the_loader_loads_when_asked_and_drops_the_copy_when_nobody_asks(env):
    """The background thread (short intervals here): nothing until a resolution asks; a
    load then; the copy dropped once nobody asked for ``max_age``, and not loaded again,
    whatever changes, until someone asks (it was loaded over and over before)."""
    _, collector, _ = env
    # The module's own index out of the way: stopped, as it would load the copy again
    # while this one waits for it to go (earlier tests asked it within its max_age).
    with own_index(collector, start=True, reload_after=0.2, min_interval=0.1,
                   max_age=1.5) as index:
        feed = index.feed
        collector.link_index.unload()
        assert index.state()["generation"] == 0  # nobody asked: nothing loaded
        feed.watch()
        assert index.begin() is None  # not loaded yet: the tables answer, a load starts
        wait_for(lambda: index.begin() is not None, timeout=60)
        # Unused for max_age: dropped. (Loads meanwhile are legitimate: earlier tests'
        # erasures may finish their mutations now, which makes everything stale.)
        status = "SELECT count() AS n FROM system.dictionaries WHERE database = 'tagwerk' " \
                 "AND name IN {names:Array(String)} AND status != 'NOT_LOADED'"
        names = {"names": NAMES}
        wait_for(lambda: int(collector.store.rows(status, names)[0]["n"]) == 0, timeout=60)
        loads = index.state()["generation"]
        index.changed(None)  # everything stale: no reason to load while nobody asks
        time.sleep(20 * index.min_interval)  # many turns of the loading thread
        assert index.state()["generation"] == loads
        assert int(collector.store.rows(status, names)[0]["n"]) == 0
        assert index.begin() is None  # asked again: loaded again
        wait_for(lambda: index.begin() is not None, timeout=60)


@pytest.mark.parametrize("told", [True, False], ids=["this-collector", "another-collector"])
def test_a_resolution_while_the_copy_is_dropped_reads_the_tables(env, monkeypatch, told):
    """An erasure drops the copy (``forget_erased``: detached, then attached again) while a
    profile resolves from it: the lookup that finds no dictionary in between is answered
    from the tables, not as a failed request. Also when another collector on the same
    ClickHouse (or of this process's engine) erased, which this index is not told of: it
    still counts its copy as fresh ("Dictionary not found" failed the profile)."""
    _, collector, _ = env
    index = collector.link_index
    anna, phone = uid("anna"), uid("phone")
    login(env, anna, phone, "2026-11-02T09:00:00Z")
    loaded(collector)
    read = index.held_and_links

    def dropped_meanwhile(*args):
        if told:
            with index._lock:
                index._loaded = False  # as unload() does, before it detaches
        collector.store.execute("DETACH DICTIONARY tagwerk.identity_held_dict")
        try:
            return read(*args)
        finally:
            collector.store.execute("ATTACH DICTIONARY tagwerk.identity_held_dict")
    monkeypatch.setattr(index, "held_and_links", dropped_meanwhile)
    assert resolve(env, "user", anna).person_id == person_id(SITE, "user", anna)
    assert [span.id for span in resolve(env, "user", anna).spans] == [phone]


def decide(env, consent_id: str, how: str) -> None:
    client, collector, _ = env
    r = client.post("/consent", content=orjson.dumps(
        {"site": SITE, "consent_id": consent_id, "granted": ALL, "denied": ["marketing"],
         "policy": "0123456789abcdef", "how": how}),
        headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 202, 204), r.text
    wait_for(lambda: drained(collector))


def test_consent_decisions_come_from_the_copy_until_a_newer_one_is_stored(env, monkeypatch):
    """A profile's decisions (clickhouse/0052): from the copy, no table read, while the
    feed has seen no newer decision under the id; the newer one from the table; an id
    without a decision is none either way; a collision or a copy dropped meanwhile leaves
    the table to answer."""
    _, collector, _ = env
    index, store = collector.link_index, collector.store
    consent_id, unknown = uuid.uuid4().hex, uuid.uuid4().hex
    decide(env, consent_id, "banner")
    read_table: list[str] = []
    query = store.query

    def counted(sql, *args, **kwargs):
        if "consent_by_id" in sql:
            read_table.append(sql)
        return query(sql, *args, **kwargs)
    monkeypatch.setattr(store, "query", counted)

    def decisions() -> dict:
        return profile._consents(store, SITE, [consent_id, unknown], index)

    def from_copy(how: str) -> bool:
        """Loaded, and answered from it (unless an earlier test's erasure made everything
        stale in between, which loads it again)."""
        token = loaded(collector)
        read_table.clear()
        found = decisions()
        assert list(found) == [consent_id] and found[consent_id]["how"] == how, found
        return not read_table and index.fresh(SITE, (), token)

    wait_for(lambda: from_copy("banner"), timeout=60)
    assert decisions() == profile._consents(store, SITE, [consent_id, unknown])  # the table's

    token = index.begin()
    decide(env, consent_id, "api")  # the visitor changed their mind
    wait_for(lambda: not index.fresh(SITE, [f"consent:{consent_id}"], token))
    read_table.clear()
    assert decisions()[consent_id]["how"] == "api"
    assert len(read_table) == 1
    wait_for(lambda: from_copy("api"), timeout=60)

    real = index.decisions

    def collided(*args):
        raise LookupError("consent_decisions_dict: another key")

    def dropped_meanwhile(*args):
        collector.store.execute("DETACH DICTIONARY tagwerk.consent_decisions_dict")
        try:
            return real(*args)
        finally:
            collector.store.execute("ATTACH DICTIONARY tagwerk.consent_decisions_dict")
    for failing in (collided, dropped_meanwhile):
        monkeypatch.setattr(index, "decisions", failing)
        read_table.clear()
        assert decisions()[consent_id]["how"] == "api"
        assert len(read_table) == 1


def test_a_burst_of_decisions_leaves_the_links_in_the_copy(env):
    """Every new visitor's banner stores a decision: past MOST_STALE new ones only the
    decisions are read from the table; the links stay in the copy, and are not loaded
    again sooner for the decisions."""
    _, collector, _ = env
    index = collector.link_index
    anna, phone = uid("anna"), uid("phone")
    login(env, anna, phone, "2026-11-02T09:00:00Z")
    token = loaded(collector)
    index.changed({SITE: {f"consent:{n}" for n in range(MOST_STALE + 1)}})
    assert index.begin() == token
    assert index.fresh(SITE, [f"link:device:{phone}"], token)
    assert not index.fresh(SITE, ["consent:any"], token)
    assert index.state()["decisions_all_stale"] and index._next() is None
    assert loaded(collector) != token  # a load makes them fresh again
    assert not index.state()["decisions_all_stale"]


# -- the hits' copy (clickhouse/0054) -----------------------------------------------------------

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1")


def shopper(env) -> tuple[str, str, str]:
    """A customer who viewed on a phone, logged in there and bought on a desktop: (user,
    phone, desktop)."""
    user, phone, desk = uid("cust"), uid("phone"), uid("desk")
    client, collector, keys = env

    def hit(event: str, ts: str, device: str, product: str, **more: object) -> dict:
        return {"event": event, "ts": ts, "device_id": device, "consent": ALL,
                "user_agent": IPHONE, "items": [{"product_id": product, "category": "shoes",
                                                 "brand": "Acme", "price": "80.00"}], **more}
    send_batch(client, collector, keys["write"], [
        hit("view_item", "2026-11-03T07:30:00Z", phone, f"shoes-{user}"),
        hit("view_item", "2026-11-03T07:31:00Z", phone, f"shirt-{user}"),
        {"event": "login", "type": "identify", "user_id": user, "device_id": phone,
         "ts": "2026-11-03T07:35:00Z", "consent": ALL},
        {"event": "login", "type": "identify", "user_id": user, "device_id": desk,
         "ts": "2026-11-03T12:00:00Z", "consent": ALL},
        hit("purchase", "2026-11-03T12:05:00Z", desk, f"shoes-{user}", user_id=user,
            order_id=uid("o"), revenue="80.00", currency="EUR")])
    return user, phone, desk


def profile_of(env, user: str, index: LinkIndex | None) -> dict:
    """The profile as the endpoint computes it, from the copies (``index``) or the tables."""
    _, collector, _ = env
    collector.person_answers.begin()
    person = resolve(env, "user", user)
    answer = profile.profiles_and_keys(collector.store, SITE, [person], index)[0][0]
    assert answer is not None
    return answer


def copied(store, table: str) -> int:
    """The rows of one of the hits' copy's tables."""
    return int(store.rows(f"SELECT count() AS n FROM {table}")[0]["n"])


def spied(monkeypatch, index: LinkIndex) -> list[tuple[dict, set]]:
    """What the index's hits' lookups answered, as they answer."""
    answers: list[tuple[dict, set]] = []
    read = index.hits

    def hits(*args):
        answers.append(read(*args))
        return answers[-1]
    monkeypatch.setattr(index, "hits", hits)
    return answers


def test_a_profile_from_the_hits_copy_is_the_tables_profile(env, monkeypatch):
    _, collector, _ = env
    index = collector.link_index
    user, phone, desk = shopper(env)
    token = loaded(collector)
    assert index.state()["hits_ready"]
    keys = profile.keys_of(resolve(env, "user", user))
    assert index.fresh(SITE, keys, token)
    answers = spied(monkeypatch, index)
    from_copy = profile_of(env, user, index)
    assert [set(found) for found, _ in answers] == [{f"user:{user}", f"device:{phone}"}]
    assert from_copy == profile_of(env, user, None)
    assert [p["product_id"] for p in from_copy["purchased"]] == [f"shoes-{user}"]
    assert {p["product_id"] for p in from_copy["viewed"]} == {f"shoes-{user}", f"shirt-{user}"}


def test_a_new_hit_is_read_from_the_tables_until_its_key_is_read_again(
        env, monkeypatch):
    client, collector, keys = env
    index = collector.link_index
    user, phone, _ = shopper(env)
    token = loaded(collector)
    built = index._hits_built_at  # noqa: SLF001
    send_batch(client, collector, keys["write"], [
        {"event": "view_item", "ts": "2026-11-04T08:00:00Z", "device_id": phone,
         "consent": ALL, "user_agent": IPHONE, "items": [{"product_id": f"hat-{user}"}]}])
    wait_for(lambda: not index.fresh(SITE, [f"device:{phone}"], token))
    answers = spied(monkeypatch, index)
    viewed = {p["product_id"] for p in profile_of(env, user, index)["viewed"]}
    assert f"hat-{user}" in viewed  # from person_hits: the copy's is older
    assert answers == []  # (the person's keys: one stale, so none from the copy)
    index.refresh_hits()  # its stale keys read again, without the links
    assert index._hits_built_at == built  # noqa: SLF001 (not built whole)
    assert index.begin() == token  # the same copy of the links
    assert index.fresh(SITE, [f"device:{phone}"], token)
    assert {p["product_id"] for p in profile_of(env, user, index)["viewed"]} == viewed
    assert len(answers) == 1 and len(answers[0][0][f"device:{phone}"]) == 3


def test_stale_hits_alone_are_read_again_without_loading_the_links(env):
    _, collector, _ = env
    with own_index(collector, reload_after=0.0, min_interval=0.0) as index:
        index.feed.watch()
        index.begin()
        index.reload_now()
        assert index._next() == "hits"  # noqa: SLF001 (built once the links are loaded)
        index.refresh_hits()
        time.sleep(LOAD_SHARE * index._took + 0.1)  # noqa: SLF001
        assert index._next() is None  # noqa: SLF001
        index.changed({SITE: {"device:d-1"}})
        assert index._next() == "hits"  # noqa: SLF001
        index.refresh_hits()
        assert index.state()["stale_hits"] == 0 and index._next() is None  # noqa: SLF001
        index.changed({SITE: {"link:device:d-1"}})
        assert index._next() == "load"  # noqa: SLF001
    loaded(collector)


def test_a_key_past_what_the_copy_holds_is_read_from_the_table(env, monkeypatch):
    _, collector, _ = env
    index = collector.link_index
    user, phone, _ = shopper(env)
    loaded(collector)
    tables = profile_of(env, user, None)
    collector.store.execute(  # as a build writes a key with more than HITS_PER_KEY hits
        f"INSERT INTO {link_index.HITS_COPY} SELECT {{k:String}}, ''",
        {"k": f"{SITE}\0device:{phone}"})
    answers = spied(monkeypatch, index)
    assert profile_of(env, user, index) == tables
    assert [heavy for _, heavy in answers] == [{f"device:{phone}"}]


def test_a_copy_emptied_or_built_by_another_index_is_not_read(env, monkeypatch):
    """Another collector's start (or its index's build) in this process empties or replaces
    the table: keys it does not hold are not taken for keys without hits."""
    client, collector, keys = env
    index = collector.link_index
    user, _, _ = shopper(env)
    loaded(collector)
    tables = profile_of(env, user, None)
    other, _ = make_client(collector.store, collector.settings.data_dir / "other",
                           demo_site=False)
    with other:  # its start empties the copy
        assert copied(collector.store, link_index.HITS_COPY) == 0
    answers = spied(monkeypatch, index)
    assert profile_of(env, user, index) == tables
    assert answers == []  # the lookup found no build of its own: LookupError, the table
    loaded(collector)  # built whole again (its build was gone)
    assert profile_of(env, user, index) == tables
    assert len(answers) == 1


def test_a_pause_of_the_feed_has_the_hits_copy_built_whole(env, monkeypatch):
    """Hits stored while the feed did not watch went unreported: the copy cannot tell its
    keys that changed, and is built whole before it serves again."""
    client, collector, keys = env
    index = collector.link_index
    user, phone, _ = shopper(env)
    token = loaded(collector)
    built = index._hits_built_at  # noqa: SLF001
    monkeypatch.setattr(index, "max_age", 0.0)  # not in use: the feed may rest
    collector.person_answers.clear()
    collector.changes.idle()
    assert not collector.changes.watching
    send_batch(client, collector, keys["write"], [
        {"event": "view_item", "ts": "2026-11-04T08:00:00Z", "device_id": phone,
         "consent": ALL, "user_agent": IPHONE, "items": [{"product_id": f"cap-{user}"}]}])
    monkeypatch.undo()
    collector.changes.watch()
    assert not index.fresh(SITE, [f"device:{phone}"], token)
    index.reload_now()
    token = index.begin()
    assert token is not None and not index.fresh(SITE, [f"device:{phone}"], token)
    index.refresh_hits()
    assert index._hits_built_at > built  # noqa: SLF001
    assert index.fresh(SITE, [f"device:{phone}"], token)
    answers = spied(monkeypatch, index)
    assert f"cap-{user}" in {p["product_id"] for p in profile_of(env, user, index)["viewed"]}
    assert len(answers) == 1


def test_past_what_the_stale_sets_hold_during_a_build_the_hits_are_all_stale(env):
    _, collector, _ = env
    with own_index(collector) as index:
        built(index)
        assert not index.state()["hits_all_stale"]
        index._during = set()  # noqa: SLF001 (as a load or a refresh under way)
        index.changed({SITE: {f"link:device:{n}" for n in range(
            2 * MOST_STALE + link_index.MOST_STALE_HITS + 1)}})
        assert index.state()["hits_all_stale"]
    loaded(collector)


def test_an_erasure_cancels_a_build_of_the_hits_copy(env, monkeypatch):
    """As a load of the dictionaries (above): a stand-in build, a row a millisecond (a minute
    in all), with the copy's comment, is cancelled; nothing is exchanged, and the copy
    is empty."""
    _, collector, _ = env
    store = collector.store
    failed: list[Exception] = []
    monkeypatch.setattr(link_index, "BUILD_HITS", (
        f"INSERT INTO {link_index.HITS_NEXT} SELECT toString(number), '' FROM numbers(60000) "
        "WHERE NOT ignore(sleepEachRow(0.001)) "
        f"SETTINGS max_block_size = 100, log_comment = '{link_index.LOADING}'"))
    with own_index(collector) as index:
        index.feed.watch()
        index.begin()

        def load() -> None:
            try:
                index.reload_now()
                index.refresh_hits()  # built whole: the stand-in
            except StorageError as exc:
                failed.append(exc)
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            wait_for(lambda: store.rows(
                "SELECT 1 FROM system.processes WHERE Settings['log_comment'] = {c:String} "
                "AND query LIKE 'INSERT INTO tagwerk.person_hits_copy_next%'",
                {"c": link_index.LOADING}), timeout=60)
            began = time.monotonic()
            index.forget_erased()
            took = time.monotonic() - began
            thread.join(60)
        finally:
            if thread.is_alive():
                store.execute(link_index.CANCEL_LOADS, {"comment": link_index.LOADING})
                thread.join(60)
        assert took < 30, f"the erasure waited {took:.1f} s for the build"
        assert [type(exc) for exc in failed] == [link_index.LoadCancelled]
        assert not index.state()["hits_ready"] and index.begin() is None
        assert copied(store, link_index.HITS_COPY) == copied(store, link_index.HITS_NEXT) == 0
    monkeypatch.undo()
    loaded(collector)


def test_the_hits_copy_is_kept_on_the_embedded_engine_only(env, server_store):
    """On a server several collectors would build, read and empty one table, each knowing
    only its own erasures: there the tables answer."""
    index = LinkIndex(server_store, ChangeFeed(server_store))
    index.changed({SITE: {"device:d-1", "link:device:d-1"}})
    assert index.state()["stale_hits"] == 0 and index.state()["stale"] == 1
    index.drop_hits()  # nothing to empty
    assert not index._hits_kept  # noqa: SLF001


class ReportingLock:
    """An index's lock that, once armed, has the feed report ``key`` at its next release:
    a change reported at the first moment a refresh lets go of the lock after its read."""

    def __init__(self, index: LinkIndex, key: str) -> None:
        self.lock, self.index, self.key, self.armed = threading.Lock(), index, key, False

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if self.armed:
            self.armed = False
            self.index.changed({SITE: {self.key}})


@pytest.mark.parametrize("whole", [False, True], ids=["keys-read-again", "built-whole"])
def test_a_key_reported_as_a_refresh_ends_stays_stale(env, whole):
    """A row stored after the refresh's read, reported before the refresh took what was
    reported meanwhile: its key must stay stale (it was neither, and was counted fresh)."""
    _, collector, _ = env
    with own_index(collector) as index:
        built(index)
        key = f"device:{uid('late')}"
        index.changed({SITE: {key}})
        if whole:
            index._hits_all_stale = True  # noqa: SLF001 (as a burst would)
        lock = ReportingLock(index, key)
        index._lock = lock  # noqa: SLF001
        read = index._load_hits  # noqa: SLF001

        def then_arm(*args):
            built = read(*args)
            lock.armed = True
            return built
        index._load_hits = then_arm  # noqa: SLF001
        index.refresh_hits()
        assert index._hits_built_at > float("-inf")  # noqa: SLF001
        assert index._is_stale((SITE, key))  # noqa: SLF001
    loaded(collector)


def test_a_failed_build_of_the_hits_copy_paces_the_next(env, monkeypatch):
    """A build cancelled (by erasures one after another) or failed counts as a build for
    the pace: builds take at most a twentieth of the time whatever their end."""
    _, collector, _ = env
    with own_index(collector, min_interval=0.0) as index:
        built(index)
        index._hits_built_at -= 1000  # noqa: SLF001 (the last build long ago)
        index._hits_tried_at = index._hits_built_at  # noqa: SLF001
        index._hits_all_stale = True  # noqa: SLF001 (a build is due)
        assert index._next() == "hits"  # noqa: SLF001
        monkeypatch.setattr(link_index, "BUILD_HITS", "SELECT sleep(0.2), throwIf(1)")
        with pytest.raises(StorageError):
            index.refresh_hits()
        assert index._next() is None  # noqa: SLF001 (not before 20 times 0.2 s)
    monkeypatch.undo()
    loaded(collector)


def test_an_erasure_that_fails_half_way_leaves_nothing_in_the_copies(env, monkeypatch):
    """Its deletes done, the erasure fails (here its audit row): it answers an error, and
    the copies, which may hold the deleted rows, are dropped all the same (they were kept
    until the next build or load)."""
    client, collector, keys = env
    user, phone, _ = shopper(env)
    loaded(collector)
    assert "person_hits_copy" in found_anywhere(collector.store, [user])

    def audit_fails(*args, **kwargs):
        raise StorageError("the engine went away")
    monkeypatch.setattr(erasure, "_audit", audit_fails)
    r = client.post(f"/api/v1/sites/{SITE}/privacy/erase", json={"id": f"user:{user}"},
                    headers={"Authorization": f"Bearer {keys['admin']}"})
    assert r.status_code >= 500, r.text
    assert "person_hits_copy" not in found_anywhere(collector.store, [user, phone])
    assert collector.link_index.begin() is None  # the links' copy dropped too
    monkeypatch.undo()
    loaded(collector)
