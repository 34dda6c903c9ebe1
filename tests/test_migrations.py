"""Migrations: applied once, refused when edited, rendered for a cluster."""

from __future__ import annotations

import dataclasses

import pytest

from collector import migrations
from collector.migrations import load_migrations, migrate, render


def test_applied_once(backend):
    assert migrate(backend) == []
    applied = backend.rows("SELECT version FROM tagwerk.schema_migrations FINAL ORDER BY version")
    assert [r["version"] for r in applied] == [m.version for m in load_migrations()]


def test_edited_migration_is_refused(store, monkeypatch):
    original = load_migrations()
    edited = [dataclasses.replace(original[-1], sql=original[-1].sql + "\n-- edited")]
    monkeypatch.setattr(migrations, "load_migrations", lambda: original[:-1] + edited)
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(store)


def test_single_node_render_is_the_file():
    events = next(m for m in load_migrations() if m.name == "events")
    [stmt] = render(events)
    assert "ReplacingMergeTree" in stmt and "ON CLUSTER" not in stmt


def test_cluster_render():
    by_name = {m.name: m for m in load_migrations()}
    local, distributed = render(by_name["events"], "shop")
    assert local.startswith("CREATE TABLE IF NOT EXISTS tagwerk.events_local ON CLUSTER shop")
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tagwerk/"
            "events_local', '{replica}')") in local
    assert "ORDER BY (site_id, toDate(ts), event, event_id)" in local
    assert distributed == (
        "CREATE TABLE IF NOT EXISTS tagwerk.events ON CLUSTER shop AS tagwerk.events_local "
        "ENGINE = Distributed('shop', 'tagwerk', 'events_local', "
        "cityHash64(if(device_id != '', device_id, user_id)))")
    [sites] = render(by_name["sites"], "shop")
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/all/tagwerk/sites', '{replica}', " \
           "updated_at)" in sites
    assert "ON CLUSTER shop" in sites


def test_cluster_render_of_alter():
    m = migrations.Migration(9, "x", "-- cluster: sharded by rand()\n"
                             "ALTER TABLE tagwerk.events ADD COLUMN IF NOT EXISTS x String")
    assert render(m, "c") == [
        "ALTER TABLE tagwerk.events_local ON CLUSTER c ADD COLUMN IF NOT EXISTS x String",
        "ALTER TABLE tagwerk.events ON CLUSTER c ADD COLUMN IF NOT EXISTS x String",
    ]


def test_cluster_name_is_checked():
    events = next(m for m in load_migrations() if m.name == "events")
    with pytest.raises(ValueError, match="cluster name"):
        render(events, "x; DROP TABLE y")
