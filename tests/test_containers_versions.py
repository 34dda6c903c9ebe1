"""Container drafts, versions and releases in ClickHouse, on both storage backends."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from collector.containers import ContainerError, Containers, NotFound, default_container
from collector.migrations import load_migrations, render
from tests.helpers import wait_for
from tests.test_containers import ORIGINS, full


def site() -> str:
    return "cv-" + uuid.uuid4().hex[:12]


def test_lifecycle(backend):
    containers = Containers(backend)
    s = site()
    # A new site: the draft is the default container, nothing published, the draft is served.
    draft = containers.draft(s)
    assert draft.document == default_container() and draft.updated_at is None
    assert containers.versions(s) == [] and containers.live_version(s) is None
    assert containers.live(s).version == 0

    one = full()
    saved = containers.put_draft(s, one, ORIGINS)
    assert containers.draft(s).document == one
    assert containers.draft(s).policy == saved.policy
    assert containers.live(s).version == 0  # the new draft is served until the first publish
    assert [t["id"] for t in containers.live(s).document["tags"]] == [t["id"] for t in one["tags"]]

    v1 = containers.publish(s, "first", ORIGINS)
    assert (v1.version, v1.live, v1.note) == (1, True, "first")
    assert containers.live(s).version == 1

    two = full()
    two["tags"].pop(0)
    containers.put_draft(s, two, ORIGINS)
    assert containers.live(s).version == 1  # editing the draft changes nothing live
    v2 = containers.publish(s, "", ORIGINS)
    assert v2.version == 2 and v2.policy != v1.policy
    assert len(containers.live(s).document["tags"]) == len(two["tags"])

    back = containers.rollback(s, 1)
    assert back.version == 1
    assert containers.live_version(s) == 1
    assert containers.live(s).version == 1 and containers.live(s).policy == v1.policy

    listed = containers.versions(s)
    assert [(v.version, v.live, v.note) for v in listed] == [(1, True, "first"), (2, False, "")]
    assert [(r["version"], r["action"]) for r in containers.releases(s)] == [
        (1, "publish"), (2, "publish"), (1, "rollback")]

    # Versions are immutable: editing and publishing again adds a version.
    assert containers.version(s, 1).document == one
    assert containers.version(s, 2).document == two
    containers.put_draft(s, default_container())
    assert containers.version(s, 1).document == one
    assert containers.publish(s).version == 3
    assert containers.version(s, 3).document == default_container()
    assert containers.version(s, 4) is None and containers.version(s, 0) is None
    assert containers.draft(s).document == default_container()


def test_refusals_store_nothing(backend):
    containers = Containers(backend)
    s = site()
    bad = full()
    bad["tags"][0]["purpose"] = "ads"
    with pytest.raises(ContainerError, match=r"tags\[0\]\.purpose: unknown purpose 'ads'"):
        containers.put_draft(s, bad, ORIGINS)
    assert containers.draft(s).updated_at is None
    with pytest.raises(NotFound):
        containers.rollback(s, 1)
    with pytest.raises(ContainerError, match="note"):
        containers.publish(s, "x" * 1001)
    # Printed to terminals: no C1 control (NEL, CSI), line separator or bidi override either
    # (probe 41); letters of any script and emoji are fine.
    for forged in ("ok\u0085FORGED", "x\u009b31mred", "a\u2028b", "\u202eevil", "\x1b[2J"):
        with pytest.raises(ContainerError, match="note"):
            containers.publish(s, forged)
    assert containers.versions(s) == [] and containers.releases(s) == []
    # A necessary tag on a third-party host is refused at publish as at saving.
    with pytest.raises(ContainerError, match="necessary"):
        containers.put_draft(s, full(), ())


def test_sites_are_separate(store):
    containers = Containers(store)
    a, b = site(), site()
    containers.put_draft(a, full(), ORIGINS)
    containers.publish(a, origins=ORIGINS)
    assert containers.live_version(b) is None
    assert containers.draft(b).document == default_container()
    assert containers.publish(b).version == 1


def test_live_is_cached_and_cleared_on_publish(store):
    mine, other = Containers(store, ttl=60), Containers(store, ttl=60)
    s = site()
    mine.publish(s)
    assert mine.live(s).version == 1 and other.live(s).version == 1
    mine.publish(s)
    assert mine.live(s).version == 2  # this process: at once
    assert other.live(s).version == 1  # another process: after its TTL
    other._live.clear()
    assert other.live(s).version == 2


def test_changes_from_other_processes_are_seen_within_the_ttl(store):
    # A TTL long enough that a publish under a loaded suite still falls inside it.
    mine, other = Containers(store), Containers(store, ttl=1.0)
    s = site()
    mine.publish(s)
    assert other.live(s).version == 1
    mine.publish(s)
    assert other.cached_live(s).version == 1
    wait_for(lambda: other.live(s).version == 2, timeout=5)
    mine.put_draft(s, full(), ORIGINS)
    mine.rollback(s, 1)
    wait_for(lambda: other.live(s).version == 1, timeout=5)


def test_live_survives_an_outage(store, monkeypatch):
    containers = Containers(store, ttl=0)
    s = site()
    containers.publish(s)
    assert containers.live(s).version == 1

    def down(*args, **kwargs):
        from collector.storage import StorageUnavailable

        raise StorageUnavailable("down")

    monkeypatch.setattr(store, "rows", down)
    assert containers.live(s).version == 1  # the last one seen
    with pytest.raises(Exception, match="down"):
        containers.live(site())


def test_custom_tag_paths(store):
    containers = Containers(store)
    a, b = site(), site()
    doc = full()
    doc["settings"]["tag_path"] = "/static/{site}/app.js"
    containers.put_draft(a, doc, ORIGINS)  # served before any publish: the draft counts
    assert containers.custom_tag_paths()[f"/static/{a}/app.js"] == a
    containers.publish(a, origins=ORIGINS)
    containers.put_draft(a, full(), ORIGINS)  # the draft no longer counts once published
    assert containers.custom_tag_paths()[f"/static/{a}/app.js"] == a

    taken = full()
    taken["settings"]["tag_path"] = f"/static/{a}/app.js"
    with pytest.raises(ContainerError, match="already the tag path of site"):
        containers.put_draft(b, taken, ORIGINS)
    containers.publish(a, origins=ORIGINS)  # a drops its path...
    assert f"/static/{a}/app.js" not in containers.custom_tag_paths()
    containers.put_draft(b, taken, ORIGINS)  # ...so b may take it
    assert containers.publish(b, origins=ORIGINS).version == 1
    assert containers.custom_tag_paths()[f"/static/{a}/app.js"] == b
    # Nor may a rolling back take it again: b's pages would load a's tag, their hits go to
    # a (a rollback made the path a's, as the first site by id: found by an attacker's probe).
    with pytest.raises(ContainerError, match="already the tag path of site"):
        containers.rollback(a, 1)
    assert containers.custom_tag_paths()[f"/static/{a}/app.js"] == b
    assert containers.live_version(a) == 2


def test_the_migration_renders_for_a_cluster():
    [migration] = [m for m in load_migrations() if m.name == "containers"]
    assert migration.sql.startswith("-- cluster: replicated")
    statements = render(migration, "shop")
    assert len(statements) == 3
    for stmt in statements:
        assert "ON CLUSTER shop" in stmt and "ENGINE = Replicated" in stmt
        assert "CREATE TABLE IF NOT EXISTS" in stmt


def test_two_sites_cannot_both_take_a_tag_path_at_once(store):
    """One site publishing a custom tag path while another saves a draft with it: one of
    them is refused, never both served on one path (probe 41: both were, 5 runs of 5)."""
    containers = Containers(store)
    for _ in range(5):
        path = f"/assets/{uuid.uuid4().hex[:8]}.js"
        first, second = site(), site()
        doc = full()
        doc["settings"]["tag_path"] = path
        containers.put_draft(first, full(), ORIGINS)
        containers.publish(first, origins=ORIGINS)
        containers.put_draft(first, doc, ORIGINS)
        start = threading.Barrier(2)

        def attempt(action, start=start):
            start.wait()
            try:
                action()
                return "ok"
            except ContainerError as error:
                assert error.errors[0].field == "settings.tag_path", error
                return "refused"

        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(attempt, [
                lambda first=first: containers.publish(first, origins=ORIGINS),
                lambda second=second, doc=doc: containers.put_draft(second, doc, ORIGINS)]))
        assert outcomes == ["ok", "refused"]
