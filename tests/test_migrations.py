"""Migrations: applied once, refused when edited, rendered for a cluster."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from collector import migrations
from collector.migrations import load_migrations, migrate, render
from tests import background


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


def test_cluster_render_of_storage_alters_stays_on_the_shards():
    """A Distributed table has no indexes, TTL or stored values: those ALTERs go to the
    local tables."""
    for clause in ("ADD INDEX IF NOT EXISTS i x TYPE bloom_filter GRANULARITY 4",
                   "MATERIALIZE INDEX i", "MATERIALIZE COLUMN hit",
                   "MODIFY TTL toDate(ts) + INTERVAL 1 DAY",
                   "MODIFY SETTING enable_block_number_column = 1"):
        m = migrations.Migration(9, "x", f"-- cluster: sharded by rand()\n"
                                 f"ALTER TABLE tagwerk.events {clause}")
        assert render(m, "c") == [f"ALTER TABLE tagwerk.events_local ON CLUSTER c {clause}"]


def test_cluster_render_of_a_rewrite_of_parts():
    """OPTIMIZE (0036 rewrites consent_by_id's parts in new blocks): where the parts are,
    the shards' local tables, or the replicated table itself."""
    sharded = migrations.Migration(9, "x", "-- cluster: sharded by rand()\n"
                                   "OPTIMIZE TABLE tagwerk.events FINAL")
    assert render(sharded, "c") == ["OPTIMIZE TABLE tagwerk.events_local ON CLUSTER c FINAL"]
    replicated = migrations.Migration(9, "x", "-- cluster: replicated\n"
                                      "OPTIMIZE TABLE tagwerk.sites FINAL")
    assert render(replicated, "c") == ["OPTIMIZE TABLE tagwerk.sites ON CLUSTER c FINAL"]


def test_cluster_render_of_a_views_new_query():
    """MODIFY QUERY of a materialised view: on every node, reading the local shards."""
    m = migrations.Migration(9, "x", "-- cluster: sharded by rand()\n"
                             "ALTER TABLE tagwerk.session_items_mv MODIFY QUERY SELECT "
                             "site_id FROM tagwerk.events")
    assert render(m, "c") == ["ALTER TABLE tagwerk.session_items_mv ON CLUSTER c MODIFY QUERY "
                              "SELECT site_id FROM tagwerk.events_local"]


def test_cluster_render_of_drops():
    """A table rebuilt under a new name (0020, 0021): its Distributed table goes before its
    shards' tables; a view, or an unsharded table, on every node."""
    m = migrations.Migration(9, "x", "-- cluster: sharded by rand()\n"
                             "DROP VIEW IF EXISTS tagwerk.person_activity_mv;\n"
                             "DROP TABLE IF EXISTS tagwerk.person_activity;\n"
                             "DROP TABLE IF EXISTS tagwerk.sites")
    assert render(m, "c") == [
        "DROP VIEW IF EXISTS tagwerk.person_activity_mv ON CLUSTER c SYNC",
        "DROP TABLE IF EXISTS tagwerk.person_activity ON CLUSTER c SYNC",
        "DROP TABLE IF EXISTS tagwerk.person_activity_local ON CLUSTER c SYNC",
        "DROP TABLE IF EXISTS tagwerk.sites ON CLUSTER c SYNC",
    ]
    unguarded = migrations.Migration(9, "x", "-- cluster: replicated\nDROP TABLE tagwerk.sites")
    with pytest.raises(ValueError, match="cannot render"):
        render(unguarded, "c")


# An install migrated up to (not including) a version, in a process of its own (one engine
# per process), for an upgrade script to fill, migrate the rest and check.
BEFORE = """
import sys
from pathlib import Path
from collector import migrations
from collector.storage.embedded import EmbeddedStore

store = EmbeddedStore(Path(sys.argv[1]))
every = migrations.load_migrations()
migrations.load_migrations = lambda: [m for m in every if m.version < int(sys.argv[2])]
migrations.migrate(store)
"""


# Each upgrade test's run(s): the version its install stops before, its script, its
# arguments; by the test's name (``upgrade``). A run's seconds, at the lowest priority.
RUN_SECONDS = 300
UPGRADES: dict[str, tuple[int, str, tuple[str, ...]]] = {}


def upgrade(before: int, script: str, cuts: list[int] | None = None):
    """Makes the test an upgrade run: ``script`` after an install of the migrations before
    ``before`` (it prints ok), or one run per cut (``done``, the script's argument: how
    many statements of the migration ran before it was interrupted). The runs are made in
    the background from the session's start (``run_upgrades``); the test checks its own
    with the ``upgraded`` fixture."""
    def register(test: Callable[..., None]) -> Callable[..., None]:
        for cut in cuts or [None]:
            name = test.__name__ if cut is None else f"{test.__name__}[{cut}]"
            UPGRADES[name] = (before, script, () if cut is None else (str(cut),))
        if not cuts:
            return test
        # (ids given, so that the tests' names are the registry's by construction)
        return pytest.mark.parametrize("done", [pytest.param(cut, id=str(cut))
                                                for cut in cuts])(test)
    return register


def run_upgrades(names: list[str] | None = None) -> dict[str, str]:
    """The upgrade runs ``names`` (all by default), each in a process of its own (one engine
    per process) on a copy of its install, as a restarted collector opens its directory;
    an install is made once per version, and ``BEFORE`` finds nothing left to apply there.
    What went wrong in each ('' for nothing). About two minutes of a core: run in the
    background from the session's start (tests/background.py), at nice 19 (hence the
    generous timeouts), a run at once per core: the suite's processes come first on every
    core whatever this job runs (with one run at a time, a fresh clone's suite took 987 s,
    against 905 s with two)."""
    runs = {name: UPGRADES[name] for name in (UPGRADES if names is None else names)
            if name in UPGRADES}
    with tempfile.TemporaryDirectory(prefix="tagwerk-upgrades-") as scratch:
        def run(path: Path, before: int, script: str, *args: str) -> str:
            try:
                done = subprocess.run([sys.executable, "-c", BEFORE + script, str(path),
                                       str(before), *args],
                                      capture_output=True, text=True, timeout=RUN_SECONDS)
            except subprocess.TimeoutExpired:
                return f"timed out after {RUN_SECONDS} s"
            if done.stdout.strip() == "ok":
                return ""
            return (f"exit {done.returncode}: "
                    f"{done.stderr[-3000:] or done.stdout[-3000:] or '(no output)'}")

        def install(before: int) -> str:
            return run(Path(scratch) / f"before-{before}", before, "store.close()\nprint('ok')")

        def upgrade_one(name: str) -> str:
            before, script, args = runs[name]
            if failed[before]:
                return f"the install before {before} failed: {failed[before]}"
            # (as links: the engine's directory links its tables' names to their data)
            copy = Path(scratch) / name / "ch"
            try:
                shutil.copytree(Path(scratch) / f"before-{before}", copy, symlinks=True)
                return run(copy, before, script, *args)
            except Exception as exc:  # (this run's failure, not every run's)
                return f"{type(exc).__name__}: {exc}"
            finally:
                shutil.rmtree(copy.parent, ignore_errors=True)

        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            versions = sorted({before for before, _, _ in runs.values()})
            failed = dict(zip(versions, pool.map(install, versions), strict=True))
            return dict(zip(runs, pool.map(upgrade_one, runs), strict=True))


@pytest.fixture
def upgraded(request) -> Callable[[], None]:
    """``upgraded()``: the test's upgrade run (``upgrade``) printed ok."""
    def check() -> None:
        results = background.result("migration upgrades")
        assert request.node.name in results, f"no upgrade run is named {request.node.name}"
        error = results[request.node.name]
        assert not error, error
    return check


UPGRADE = """
store.execute(\"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, consent, items) SELECT generateUUIDv4(number), 's', 'view_item', 'track',
    now64(3), now64(3), 'd' || toString(number % 3), ['personalization'],
    [('p' || toString(number), '', '', '', '', toDecimal64(2, 4), toUInt32(1))]
    FROM numbers(10)\"\"\")
before = store.rows("SELECT key, product_id FROM tagwerk.person_activity ORDER BY ALL")
migrations.load_migrations = lambda: every
migrations.migrate(store)
after = store.rows("SELECT key, product_id FROM tagwerk.person_hits ORDER BY ALL")
old_name = store.rows("SELECT key, product_id FROM tagwerk.person_activity ORDER BY ALL")
store.execute(\"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, consent) VALUES (generateUUIDv4(), 's', 'page_view', 'track', now64(3),
    now64(3), 'd9', ['personalization'])\"\"\")
new = store.rows("SELECT count() AS n FROM tagwerk.person_hits WHERE key = 'device:d9'")
assert len(before) == 10 and after == before and old_name == before, (before, after)
assert new == [{"n": 1}], new
print("ok")
"""


@upgrade(20, UPGRADE)
def test_upgrade_to_person_hits_keeps_every_row(upgraded):
    """An install from before 0020 (its own engine: one per process) upgrades: the rows
    move to person_hits, the old name reads them, and new hits land in person_hits."""
    upgraded()


LINKS_UPGRADE = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, user_id, identifiers, consent) SELECT generateUUIDv4(number), 's', 'login',
    'identify', now64(3) - toIntervalMillisecond(number), now64(3), 'd' || toString(number),
    'u' || toString(number % 3),
    map('loyalty', 'L' || toString(number % 3)), ['analytics']
    FROM numbers({first:UInt64}, 10)\"\"\"
store.execute(insert, {"first": 0})
columns = "site_id, kind, id, user_id, person_id, ts, source, event_id"
before = store.rows(f"SELECT {columns} FROM tagwerk.identity_links ORDER BY ALL")
migrations.load_migrations = lambda: every
migrations.migrate(store)
after = store.rows(f"SELECT {columns} FROM tagwerk.identity_links_by_identifier ORDER BY ALL")
old_name = store.rows(f"SELECT {columns} FROM tagwerk.identity_links ORDER BY ALL")
assert len(before) == 30 and after == before and old_name == before, (before, after)
held = "SELECT DISTINCT person_id, kind, id FROM tagwerk.identity_links_by_person ORDER BY ALL"
expected = ("SELECT DISTINCT person_id, kind, id FROM tagwerk.identity_links_by_identifier "
            "WHERE kind != 'user' ORDER BY ALL")
assert len(store.rows(held)) == 13 and store.rows(held) == store.rows(expected)
store.execute(insert, {"first": 10})
assert len(store.rows(f"SELECT {columns} FROM tagwerk.identity_links")) == 60
assert len(store.rows(held)) == 23 and store.rows(held) == store.rows(expected)
print("ok")
"""


@upgrade(28, LINKS_UPGRADE)
def test_upgrade_to_the_two_orders_of_links_keeps_every_link(upgraded):
    """An install from before 0028 upgrades: its links move to
    identity_links_by_identifier, each person's identifiers fill identity_links_by_person,
    the old name reads the links, and new links land in both."""
    upgraded()


HITS_REBUILD = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, consent, items) SELECT generateUUIDv4(number), 's', 'view_item', 'track',
    now64(3), now64(3), 'd' || toString(number % 3), ['personalization'],
    [('p' || toString(number), '', '', '', '', toDecimal64(2, 4), toUInt32(1))]
    FROM numbers({first:UInt64}, 10)\"\"\"
store.execute(insert, {"first": 0})
rows = "SELECT key, product_id, event_id FROM tagwerk.person_hits ORDER BY ALL"
before = store.rows(rows)
# Interrupted after the first `done` statements of 0030, then migrated again.
[rebuild] = [m for m in every if m.version == 30]
for stmt in rebuild.statements[:int(sys.argv[3])]:
    store.execute(stmt)
migrations.load_migrations = lambda: every
migrations.migrate(store)
after = store.rows(rows)
old_name = store.rows("SELECT key, product_id, event_id FROM tagwerk.person_activity "
                      "ORDER BY ALL")
assert len(before) == 10 and after == before and old_name == before, (before, after)
[query] = store.rows("SELECT create_table_query AS q FROM system.tables "
                     "WHERE database = 'tagwerk' AND name = 'person_hits'")
assert "index_granularity = 256" in query["q"], query
assert not store.rows("SELECT name FROM system.tables WHERE database = 'tagwerk' "
                      "AND name LIKE 'person_hits_0%'")
store.execute(insert, {"first": 10})
assert len(store.rows(rows)) == 20
print("ok")
"""


@upgrade(30, HITS_REBUILD, cuts=[0, 3, 4, 5, 6])
def test_person_hits_rebuilt_under_its_own_name_whenever_interrupted(upgraded, done):
    """0030 rebuilds person_hits in finer granules under its own name (a copy, then an
    exchange). Run again after being cut after any of its statements (none, the copy made,
    the copy filled, the exchange, the old one dropped), it leaves every row, in
    the new layout, read by person_hits and person_activity, and fed by new hits."""
    upgraded()


def test_a_rebuild_renders_for_a_cluster():
    """The copy is exchanged on every node's shard tables; the Distributed tables keep
    their names and read the shard table of theirs."""
    m = migrations.Migration(9, "x", "-- cluster: sharded by cityHash64(key)\n"
                             "CREATE TABLE IF NOT EXISTS tagwerk.t2 (key String) "
                             "ENGINE = MergeTree ORDER BY key;\n"
                             "EXCHANGE TABLES tagwerk.t AND tagwerk.t2;\n"
                             "-- cluster: replicated\n"
                             "EXCHANGE TABLES tagwerk.sites AND tagwerk.sites2")
    sharded = frozenset({"tagwerk.t", "tagwerk.t2"})
    assert render(m, "c", sharded)[2:] == [
        "EXCHANGE TABLES tagwerk.t_local AND tagwerk.t2_local ON CLUSTER c",
        "EXCHANGE TABLES tagwerk.sites AND tagwerk.sites2 ON CLUSTER c",
    ]
    mixed = migrations.Migration(9, "x", "-- cluster: replicated\n"
                                 "EXCHANGE TABLES tagwerk.t AND tagwerk.sites")
    with pytest.raises(ValueError, match="cannot exchange"):
        render(mixed, "c", sharded)


HITS_PACKED = r"""
from collector.identity.profile import HIT_FIELDS, ROWS, json_lines
insert = ("INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at, "
          "device_id, consent, consent_id, channel, device_class, items) SELECT "
          "generateUUIDv4(number), 's', ['view_item', 'purchase'][number % 2 + 1], 'track', "
          "now64(3), now64(3), {texts:Array(String)}[number % 3 + 1], ['personalization'], "
          "'c-' || toString(number), 'web', 'mobile', "
          "[({texts:Array(String)}[number % 5 + 1], '', "
          "{texts:Array(String)}[(number + 1) % 5 + 1], "
          "{texts:Array(String)}[(number + 2) % 5 + 1], '', toDecimal64(19.99, 4), "
          "toUInt32(number % 4))] FROM numbers({first:UInt64}, 10)")
texts = ['p"1\\', "p\t2", "ü 🛒 \n", '[x],"', ""]
store.execute(insert, {"first": 0, "texts": texts})  # stored before 0031: parts without hit
migrations.load_migrations = lambda: every
migrations.migrate(store)
store.execute(insert, {"first": 10, "texts": texts})  # after: hit stored at the insert
columns = store.rows("SELECT key, toString(cityHash64(event_id)) AS event_id, "
                     "toString(ts) AS ts, event, product_id, category, brand, channel, "
                     "device_class, toString(quantity) AS quantity, "
                     "toString(revenue) AS revenue, consent_id, toString(currency) AS currency "
                     "FROM tagwerk.person_hits ORDER BY ALL")
assert {row["product_id"] for row in columns} == set(texts), columns
keys = sorted({row["key"] for row in columns})
for settle in (False, True):
    if settle:  # and once the old parts have it stored too
        store.execute("ALTER TABLE tagwerk.person_hits MATERIALIZE COLUMN hit "
                      "SETTINGS mutations_sync = 2")
    # (a hit stored before 0038 lacks its currency: read as none, as its column says)
    packed = [{"key": key, **dict(zip(HIT_FIELDS, hit + [""] * (len(HIT_FIELDS) - len(hit)),
                                      strict=True))}
              for key, hit in json_lines(store, ROWS, {"site": "s", "keys": keys})]
    packed.sort(key=lambda row: list(row.values()))
    assert len(columns) == 20 and packed == columns, (packed, columns)
names = [row["name"] for row in store.rows("DESCRIBE (SELECT * FROM tagwerk.person_activity)")]
assert "hit" not in names and "product_id" in names, names
print("ok")
"""


@upgrade(31, HITS_PACKED)
def test_the_packed_hit_equals_the_columns_before_and_after_the_upgrade(upgraded):
    """0031 adds each person_hits row as one JSON text (``hit``), which profiles read. Rows
    stored before it and after it, with quotes, backslashes, tabs, newlines and non-Latin
    text in their values and keys, read back as profiles read them (``json_lines``) field
    for field as their columns say; the data team's ``SELECT *`` does not show it."""
    upgraded()


def test_links_are_read_in_small_granules_and_the_old_table_is_a_view(store):
    assert store.rows("SELECT engine FROM system.tables WHERE database = 'tagwerk' "
                      "AND name = 'identity_links'") == [{"engine": "View"}]
    for table in ("identity_links_by_identifier", "identity_links_by_person"):
        query = store.rows("SELECT create_table_query AS q FROM system.tables WHERE "
                           "database = 'tagwerk' AND name = {t:String}", {"t": table})[0]["q"]
        assert "index_granularity = 1024" in query, table
        assert "enable_block_number_column = 1" in query, table


def test_person_hits_is_read_in_small_granules_and_the_old_view_is_gone(store):
    assert store.rows("SELECT engine FROM system.tables WHERE database = 'tagwerk' "
                      "AND name = 'person_activity'") == [{"engine": "View"}]
    granularity = store.rows("SELECT create_table_query AS q FROM system.tables WHERE "
                             "database = 'tagwerk' AND name = 'person_hits'")[0]["q"]
    assert "index_granularity = 256" in granularity  # since 0030
    assert "min_age_to_force_merge_seconds = 86400" in granularity  # since 0033
    assert not store.rows("SELECT name FROM system.tables WHERE database = 'tagwerk' "
                          "AND name = 'person_activity_mv'")


def test_old_parts_of_person_hits_are_merged_into_one(store):
    """0033's setting, on a copy of person_hits with the day shortened to a second: parts of
    similar size, which the engine's own merge choice leaves apart, become one once all are
    older than the age."""
    store.execute("DROP TABLE IF EXISTS tagwerk.person_hits_0033_test")
    store.execute("CREATE TABLE tagwerk.person_hits_0033_test AS tagwerk.person_hits")
    try:
        for n in range(3):
            store.execute(
                "INSERT INTO tagwerk.person_hits_0033_test (site_id, key, ts, event, event_id, "
                "product_id) SELECT 'demo', concat('device:d', toString(number)), now64(3), "
                "'view_item', generateUUIDv4(number), 'p1' FROM numbers({n:UInt32}, 1000)",
                {"n": n * 1000})
        parts = ("SELECT count() AS n FROM system.parts WHERE active AND database = 'tagwerk' "
                 "AND table = 'person_hits_0033_test'")
        assert store.rows(parts) == [{"n": 3}]  # younger than a day: left apart
        store.execute("ALTER TABLE tagwerk.person_hits_0033_test MODIFY SETTING "
                      "min_age_to_force_merge_seconds = 1")
        deadline = time.monotonic() + 60
        while store.rows(parts)[0]["n"] > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.rows(parts) == [{"n": 1}]
        assert store.rows("SELECT count() AS n FROM tagwerk.person_hits_0033_test") == [
            {"n": 3000}]
    finally:
        store.execute("DROP TABLE IF EXISTS tagwerk.person_hits_0033_test SYNC")


def test_cluster_name_is_checked():
    events = next(m for m in load_migrations() if m.name == "events")
    with pytest.raises(ValueError, match="cluster name"):
        render(events, "x; DROP TABLE y")


def test_layout_lines_apply_from_where_they_stand():
    m = migrations.Migration(9, "x", "-- cluster: sharded by rand()\n"
                             "CREATE TABLE tagwerk.a (x String) ENGINE = MergeTree ORDER BY x;\n"
                             "-- cluster: replicated\n"
                             "CREATE TABLE tagwerk.b (x String) ENGINE = MergeTree ORDER BY x;\n"
                             "-- cluster: sharded by cityHash64(x)\n"
                             "CREATE TABLE tagwerk.c (x String) ENGINE = MergeTree ORDER BY x")
    assert [layout for _, layout in m.placed] == ["rand()", None, "cityHash64(x)"]
    assert m.shard_key == "rand()"
    rendered = render(m, "c")
    assert rendered[1].endswith("Distributed('c', 'tagwerk', 'a_local', rand())")
    assert rendered[2].startswith("CREATE TABLE tagwerk.b ON CLUSTER c")
    assert rendered[4].endswith("'c_local', cityHash64(x))")


def test_statements_of_every_migration_are_unchanged_by_layouts():
    for m in load_migrations():
        body = "\n".join(line for line in m.sql.splitlines() if not line.startswith("--"))
        assert m.statements == [s.strip() for s in body.split(";") if s.strip()], m.name


VIEWS = migrations.Migration(9, "views", """-- cluster: sharded by cityHash64(k)
CREATE TABLE IF NOT EXISTS tagwerk.agg (k String, n SimpleAggregateFunction(sum, UInt64))
ENGINE = AggregatingMergeTree ORDER BY k;
INSERT INTO tagwerk.agg SELECT device_id AS k, count() AS n FROM tagwerk.events GROUP BY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.agg_mv TO tagwerk.agg AS
SELECT device_id AS k, count() AS n FROM tagwerk.events GROUP BY k;
CREATE TABLE IF NOT EXISTS tagwerk.snap (k String, n UInt64) ENGINE = MergeTree ORDER BY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.snap_mv REFRESH EVERY 1 MINUTE
TO tagwerk.snap AS SELECT k, sum(n) AS n FROM tagwerk.agg GROUP BY k;
-- cluster: replicated
CREATE TABLE IF NOT EXISTS tagwerk.everywhere (k String) ENGINE = MergeTree ORDER BY k;
CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.everywhere_mv TO tagwerk.everywhere AS
SELECT device_id AS k FROM tagwerk.events;
CREATE VIEW IF NOT EXISTS tagwerk.totals AS SELECT sum(n) AS n FROM tagwerk.agg""")


def test_cluster_render_of_views():
    out = render(VIEWS, "shop")
    local, distributed, backfill, mv, snap, snap_dist, refresh, everywhere, e_mv, view = out
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/tagwerk/agg_local'" \
        in local
    assert distributed.endswith("Distributed('shop', 'tagwerk', 'agg_local', cityHash64(k))")
    # The backfill runs once, through the Distributed tables.
    assert backfill == VIEWS.statements[1]
    # One trigger per node: the shard's own events into the shard's own table.
    assert mv == ("CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.agg_mv ON CLUSTER shop "
                  "TO tagwerk.agg_local AS\nSELECT device_id AS k, count() AS n FROM "
                  "tagwerk.events_local GROUP BY k")
    # A refreshable view's target is a plain table per node (a refresh swaps it).
    assert snap.startswith("CREATE TABLE IF NOT EXISTS tagwerk.snap_local ON CLUSTER shop")
    assert "ENGINE = MergeTree ORDER BY k" in snap and "Replicated" not in snap
    assert snap_dist.endswith("'snap_local', cityHash64(k))")
    assert refresh == ("CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.snap_mv ON CLUSTER "
                       "shop REFRESH EVERY 1 MINUTE\nTO tagwerk.snap_local AS SELECT k, "
                       "sum(n) AS n FROM tagwerk.agg_local GROUP BY k")
    assert "ReplicatedMergeTree('/clickhouse/tables/all/tagwerk/everywhere'" in everywhere
    assert e_mv.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.everywhere_mv "
                           "ON CLUSTER shop TO tagwerk.everywhere AS")
    assert "FROM tagwerk.events_local" in e_mv
    # A plain view reads the whole data, through the Distributed tables.
    assert view == ("CREATE VIEW IF NOT EXISTS tagwerk.totals ON CLUSTER shop AS "
                    "SELECT sum(n) AS n FROM tagwerk.agg")


def test_cluster_render_of_the_aggregates():
    by_name = {m.name: m for m in load_migrations()}
    for name in ("product_aggregates", "page_aggregates"):
        out = render(by_name[name], "shop")
        views = [s for s in out if s.startswith("CREATE MATERIALIZED VIEW")]
        assert views and all(re.search(r" ON CLUSTER shop\s", s) for s in views)
        for stmt in views:
            assert "tagwerk.events\n" not in stmt and "tagwerk.events " not in stmt
            [target] = re.findall(r"\sTO tagwerk\.(\w+)", stmt)
            assert target.endswith("_local"), stmt[:120]
    out = render(by_name["product_aggregates"], "shop")
    coview = next(s for s in out if s.startswith("CREATE TABLE IF NOT EXISTS "
                                                  "tagwerk.coview_pairs_local"))
    assert "Replicated" not in coview
    refresh = next(s for s in out if "coview_pairs_mv" in s)
    assert "FROM tagwerk.session_items_local" in refresh
    # The minute's co-view view adds each node's own settled pairs (clickhouse/0025).
    out = render(by_name["coview_pairs_settled"], "shop")
    settled = next(s for s in out if "coview_pairs_settled_local ON CLUSTER" in s)
    assert "Replicated" not in settled
    minute = next(s for s in out if "VIEW IF NOT EXISTS tagwerk.coview_pairs_mv" in s)
    assert "FROM tagwerk.coview_pairs_settled_local" in minute
    assert "FROM tagwerk.session_items_local" in minute
    # Co-purchase pairs per person (0039): each node's purchases, the replicated links.
    [query, refresh] = render(by_name["copurchase_by_person"], "shop")
    assert "FROM tagwerk.events_local" in query
    assert "identity_links_by_identifier_local" not in query
    assert refresh.endswith("copurchase_pairs_mv ON CLUSTER shop MODIFY REFRESH EVERY 10 MINUTE")


# -- routers in front of the views (clickhouse/0026) --------------------------------------------

ROUTERS = ("events_to_commerce", "events_to_pages", "events_to_persons", "events_to_identity")


def test_router_tables_are_typed_as_events(store):
    """A router's columns carry events' types: a view behind it computes what it computed
    reading events."""
    columns = {(r["table"], r["name"]): r["type"] for r in store.rows(
        "SELECT table, name, type FROM system.columns WHERE database = 'tagwerk' "
        "AND table IN {t:Array(String)}", {"t": ["events", *ROUTERS]})}
    for router in ROUTERS:
        own = {name: kind for (table, name), kind in columns.items() if table == router}
        assert own, router
        assert own == {name: columns["events", name] for name in own}, router


def test_only_routers_read_events_at_insert(store):
    """Every view fed by inserts into events goes through a router, so that an insert
    plans only the views its rows concern (a new view directly on events costs every
    insert ~1-5 ms of CPU, whatever its rows)."""
    views = store.rows("SELECT name, as_select FROM system.tables WHERE database = 'tagwerk' "
                       "AND engine = 'MaterializedView' AND create_table_query NOT LIKE "
                       "'%REFRESH%'")
    direct = {v["name"] for v in views if re.search(r"\bFROM tagwerk\.events\b", v["as_select"])}
    assert direct == {f"{router}_mv" for router in ROUTERS}
    behind = {v["name"] for v in views if re.search(r"\bFROM tagwerk\.events_to_", v["as_select"])}
    assert behind == {"product_hourly_mv", "session_items_mv", "purchased_items_mv",
                      "page_daily_mv", "session_entries_mv", "person_hits_mv",
                      "identity_links_mv"}
    engines = store.rows("SELECT name, engine FROM system.tables WHERE database = 'tagwerk' "
                         "AND name IN {t:Array(String)}", {"t": list(ROUTERS)})
    assert {r["name"]: r["engine"] for r in engines} == dict.fromkeys(ROUTERS, "Null")


def test_cluster_render_of_the_hits_copy():
    """A key-value copy of a node's own tables (EmbeddedRocksDB): on every node as it is,
    neither replicated nor sharded."""
    by_name = {m.name: m for m in load_migrations()}
    out = render(by_name["person_hits_copy"], "shop")
    assert [s.split("\n")[0] for s in out] == [
        f"CREATE TABLE IF NOT EXISTS tagwerk.{name} ON CLUSTER shop"
        for name in ("person_hits_copy", "person_hits_copy_next")]
    for stmt in out:
        assert "ENGINE = EmbeddedRocksDB" in stmt
        assert "Replicated" not in stmt and "Distributed" not in stmt
    assert not migrations.sharded_tables(load_migrations()) & {
        "tagwerk.person_hits_copy", "tagwerk.person_hits_copy_next"}


def test_cluster_render_of_the_routers():
    """A router table stores nothing: on every node as it is, neither replicated nor sharded;
    its view reads the node's own events, the views behind it read the node's router."""
    by_name = {m.name: m for m in load_migrations()}
    out = render(by_name["view_routers"], "shop")
    tables = [s for s in out if s.startswith("CREATE TABLE")]
    assert len(tables) == len(ROUTERS)
    for stmt in tables:
        assert re.match(r"CREATE TABLE IF NOT EXISTS tagwerk\.events_to_\w+ ON CLUSTER shop\s",
                        stmt)
        assert stmt.rstrip().endswith("ENGINE = Null") and "Replicated" not in stmt
        assert "Distributed" not in stmt
    assert not migrations.sharded_tables(load_migrations()) & {f"tagwerk.{r}" for r in ROUTERS}
    routing = [s for s in out if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(routing) == len(ROUTERS)
    assert all("FROM tagwerk.events_local" in s and "TO tagwerk.events_to_" in s
               for s in routing)
    hourly = next(s for s in out if "product_hourly_mv" in s)
    assert "FROM tagwerk.events_to_commerce\n" in hourly


CONSENT_BY_ID = r"""
decisions = ("SELECT site_id, consent_id, toString(ts) AS ts, granted, denied, policy, how "
             "FROM tagwerk.{} ORDER BY ALL")
insert = ("INSERT INTO tagwerk.consent_log (consent_id, ts, received_at, site_id, granted, "
          "denied, policy, how) SELECT lower(hex(MD5(toString(number % 7)))), "
          "now64(3) + number, now64(3), ['s', 't'][number % 2 + 1], ['analytics'], "
          "['marketing'], 'v1', 'banner' FROM numbers({first:UInt64}, 20)")
store.execute(insert, {"first": 0})  # decided before 0034
migrations.load_migrations = lambda: every
migrations.migrate(store)
store.execute(insert, {"first": 20})  # after: the view copies them
log, copy = (store.rows(decisions.format(t)) for t in ("consent_log", "consent_by_id"))
assert len(log) == 40 and copy == log, (log, copy)
print("ok")
"""


@upgrade(34, CONSENT_BY_ID)
def test_consent_decisions_are_copied_by_id_before_and_after_the_upgrade(upgraded):
    """0034 orders the consent decisions by id for profiles: the ones recorded before it
    are copied, the ones after reach the copy at their insert, the same rows as the log."""
    upgraded()


CONSENT_PACKED = """
from collector.identity.profile import DECISIONS, json_lines
insert = ("INSERT INTO tagwerk.consent_log (consent_id, ts, received_at, site_id, granted, "
          "denied, policy, how) SELECT lower(hex(MD5(toString(number % 7)))), "
          "now64(3) + number, now64(3), 's', [['analytics'], ['analytics', 'ads']][n], "
          "[['ads'], []][n], 'v' || toString(number), ['banner', 'api'][n] "
          "FROM (SELECT number, number % 2 + 1 AS n FROM numbers({first:UInt64}, 10))")
store.execute(insert, {"first": 0})  # decided before 0036, each id twice or more
migrations.load_migrations = lambda: every
migrations.migrate(store)
store.execute(insert, {"first": 10})  # after: some ids decided again
columns = store.rows("SELECT consent_id, argMax(granted, ts) AS granted, argMax(denied, ts) "
                     "AS denied, argMax(how, ts) AS how, argMax(policy, ts) AS policy, "
                     "toString(max(ts)) AS at FROM tagwerk.consent_log GROUP BY consent_id")
ids = sorted(row["consent_id"] for row in columns)
packed = {row[0]: row for row in json_lines(store, DECISIONS, {"site": "s", "ids": ids})}
expected = {row["consent_id"]: [row["consent_id"], [row["granted"], row["denied"], row["how"],
                                row["policy"]], row["at"]] for row in columns}
assert len(ids) == 7 and packed == expected, (packed, expected)
print("ok")
"""


@upgrade(36, CONSENT_PACKED)
def test_consent_decisions_read_packed_are_the_last_recorded_before_and_after_the_upgrade(
        upgraded):
    """0036 packs each decision into the one column profiles read: decisions recorded before
    and after it read as the log's columns say, the last of each id."""
    upgraded()


REVENUE_UPGRADE = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, consent, currency, items) SELECT generateUUIDv4(number), 's',
    ['view_item', 'purchase'][number % 2 + 1], 'track', now64(3), now64(3), 'd', ['analytics'],
    ['EUR', 'CHF', 'EUR', '', 'EUR', 'CHF'][intDiv(number, 2) % 6 + 1],
    [('p' || toString(number), '', '', '', '', toDecimal64(2.5, 4), toUInt32(2))]
    FROM numbers({first:UInt64}, 12)\"\"\"
store.execute(insert, {"first": 0})
# A purchase whose raw row a retention TTL removed: its revenue is known, its currency not.
store.execute("ALTER TABLE tagwerk.events DELETE WHERE currency = '' AND event = 'purchase' "
              "SETTINGS mutations_sync = 2")
totals = ("SELECT product_id, sum(views) AS v, sum(purchases) AS n, toString(sum(revenue)) AS r"
          " FROM tagwerk.product_hourly GROUP BY product_id ORDER BY ALL")
before = store.rows(totals)
[cut] = [m for m in every if m.version == 37]
for stmt in cut.statements[:int(sys.argv[3])]:  # interrupted after these, then run again
    store.execute(stmt)
migrations.load_migrations = lambda: every
migrations.migrate(store)
assert store.rows(totals) == before, (store.rows(totals), before)
by_currency = ("SELECT currency, toString(sum(revenue)) AS r FROM tagwerk.product_hourly "
               "GROUP BY currency HAVING sum(revenue) != 0 ORDER BY ALL")
# Six purchases of 5.00: EUR 3, CHF 2, and the one without a row ''.
want = [{"currency": "", "r": "5"}, {"currency": "CHF", "r": "10"}, {"currency": "EUR", "r": "15"}]
assert store.rows(by_currency) == want, store.rows(by_currency)
# The main currency of hours before the upgrade, whose purchases the copy could not move:
# the one more products' hours sold in.
from collector.api.products import main_currency
assert main_currency(store, "s", 0, 2**32 - 1) == "EUR"
store.execute(insert, {"first": 12})  # fed by the view, under their currencies
want = [{"currency": "", "r": "10"}, {"currency": "CHF", "r": "20"}, {"currency": "EUR", "r": "30"}]
assert store.rows(by_currency) == want, store.rows(by_currency)
assert not store.rows("SELECT name FROM system.tables WHERE database = 'tagwerk' "
                      "AND name LIKE 'product_hourly_0%'")
print("ok")
"""


@upgrade(37, REVENUE_UPGRADE, cuts=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
def test_product_revenue_moves_to_its_currency_whenever_interrupted(upgraded, done):
    """0037 keys product_hourly by currency: an install's revenue moves to the currency of
    each purchase still in events, the rest stays under '', totals are unchanged, and new
    purchases land under their currency; also when run again after being cut anywhere."""
    upgraded()


PERSONS_UPGRADE = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, consent, currency, items) SELECT generateUUIDv4(number), 's',
    ['view_item', 'add_to_cart', 'purchase'][number % 3 + 1], 'track', now64(3), now64(3),
    'd' || toString(number % 4), ['analytics'], if(number % 3 = 2, 'EUR', ''),
    [('p', '', '', '', '', toDecimal64(2.5, 4), toUInt32(1))]
    FROM numbers({first:UInt64}, 24)\"\"\"
store.execute(insert, {"first": 0})
totals = ("SELECT sum(views) AS v, sum(purchases) AS n, uniqMerge(persons) AS p, "
          "uniqMerge(viewers) AS vw, uniqMerge(carters) AS c, uniqMerge(buyers) AS b "
          "FROM tagwerk.product_hourly")
raw = ("SELECT countIf(event = 'view_item') AS v, countIf(event = 'purchase') AS n, "
       "uniqExact(device_id) AS p, uniqExactIf(device_id, event = 'view_item') AS vw, "
       "uniqExactIf(device_id, event = 'add_to_cart') AS c, "
       "uniqExactIf(device_id, event = 'purchase') AS b FROM tagwerk.events")
[cut] = [m for m in every if m.version == 41]
for stmt in cut.statements[:int(sys.argv[3])]:  # interrupted after these, then run again
    store.execute(stmt)
migrations.load_migrations = lambda: [m for m in every if m.version < 49]  # (0049 below)
migrations.migrate(store)
assert store.rows(totals) == store.rows(raw), (store.rows(totals), store.rows(raw))
store.execute(insert, {"first": 24})  # fed by the view
assert store.rows(totals) == store.rows(raw), (store.rows(totals), store.rows(raw))
print("ok")
"""


@upgrade(41, PERSONS_UPGRADE, cuts=[0, 1, 2, 3])
def test_persons_per_metric_cover_the_hours_before_whenever_interrupted(upgraded, done):
    """0041 adds the persons behind each count of product_hourly: the hours stored before
    get them from events, sums unchanged, also when run again after being cut anywhere."""
    upgraded()


VERIFIED_UPGRADE = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, user_id, user_verified, consent, currency, items)
    SELECT generateUUIDv4(number), 's', 'purchase', 'track', now64(3), now64(3),
    'd' || toString(number), 'claimed', false, ['analytics'], 'EUR',
    [('p', '', '', '', '', toDecimal64(2.5, 4), toUInt32(1))]
    FROM numbers({first:UInt64}, 3)\"\"\"
store.execute(insert, {"first": 0})
buyers = "SELECT uniqMerge(buyers) AS b, toString(sumIf(revenue, currency = 'EUR')) AS r " \\
         "FROM tagwerk.product_hourly"
assert store.rows(buyers) == [{"b": 1, "r": "7.5"}], store.rows(buyers)  # the claim, once
migrations.load_migrations = lambda: [m for m in every if m.version < 49]  # (0049 below)
migrations.migrate(store)
store.execute(insert, {"first": 3})  # three more devices, each its own buyer now
assert store.rows(buyers) == [{"b": 4, "r": "15"}], store.rows(buyers)
print("ok")
"""


@upgrade(42, VERIFIED_UPGRADE)
def test_persons_count_a_browsers_claimed_user_id_as_its_device_after_the_upgrade(upgraded):
    """0042: product_hourly's persons count an unverified user id as the hit's device
    (revenue still by currency); the hours stored before keep what they counted."""
    upgraded()


COMBINED_UPGRADE = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, user_id, user_verified, consent, currency, client_hash, items)
    SELECT generateUUIDv4(number), 's', ['view_item', 'add_to_cart', 'purchase'][number % 3 + 1],
    'track', now64(3) - toIntervalHour(number % 2), now64(3), 'd' || toString(number % 5),
    if(number % 4 = 0, 'u' || toString(number % 3), ''), number % 8 = 0, ['analytics'],
    if(number % 3 = 2, 'EUR', ''), number % 7,
    [('p' || toString(number % 2), '', '', '', '', toDecimal64(2.5, 4), toUInt32(1))]
    FROM numbers({first:UInt64}, 40)\"\"\"
store.execute(insert, {"first": 0})
kept = ("SELECT product_id, currency, sum(views) AS v, sum(purchases) AS n, "
        "toString(sum(revenue)) AS r, groupUniqArrayArray(categories) AS c, "
        "uniqCombinedMerge(12)(client_views) AS cv, "
        "uniqCombinedMerge(12)(client_interactions) AS ci "
        "FROM tagwerk.product_hourly GROUP BY product_id, currency ORDER BY ALL")
before = store.rows(kept)
person = "if(user_id != '' AND user_verified, user_id, device_id)"
persons = ("SELECT product_id, uniqCombinedMerge(12)(persons) AS p, "
           "uniqCombinedMerge(12)(viewers) AS vw, uniqCombinedMerge(12)(carters) AS c, "
           "uniqCombinedMergeIf(12)(buyers, currency = 'EUR') AS b "
           "FROM tagwerk.product_hourly GROUP BY product_id ORDER BY ALL")
raw = (f"SELECT item.1 AS product_id, uniqExact({person}) AS p, "
       f"uniqExactIf({person}, event = 'view_item') AS vw, "
       f"uniqExactIf({person}, event = 'add_to_cart') AS c, "
       f"uniqExactIf({person}, event = 'purchase' AND currency = 'EUR') AS b "
       "FROM tagwerk.events ARRAY JOIN items AS item GROUP BY product_id ORDER BY ALL")
[cut] = [m for m in every if m.version == 49]
for stmt in cut.statements[:int(sys.argv[3])]:  # interrupted after these, then run again
    store.execute(stmt)
migrations.load_migrations = lambda: every
migrations.migrate(store)
assert store.rows(kept) == before, (store.rows(kept), before)
assert store.rows(persons) == store.rows(raw), (store.rows(persons), store.rows(raw))
store.execute(insert, {"first": 40})  # fed by the view
assert store.rows(persons) == store.rows(raw), (store.rows(persons), store.rows(raw))
assert not store.rows("SELECT name FROM system.tables WHERE database = 'tagwerk' "
                      "AND name LIKE 'product_hourly_0%'")
print("ok")
"""


@upgrade(49, COMBINED_UPGRADE, cuts=[0, 1, 2, 3, 4, 5, 6, 7])
def test_persons_states_are_computed_again_whenever_interrupted(upgraded, done):
    """0049 makes product_hourly's persons uniqCombined(12) states: the other columns as
    they were, the persons computed again from events (a browser's claim counted as its
    device), new hits fed by the view; also when run again after being cut anywhere."""
    upgraded()


SESSIONS_UPGRADE = """
from tests.test_aggregates import refresh_settled
store.execute(\"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, session_id, consent, items)
    SELECT generateUUIDv4(number), 's', 'view_item', 'track', now64(3) - toIntervalHour(3),
    now64(3), 'd', 's1', ['analytics'],
    [('p' || toString(number), '', '', '', '', toDecimal64(2, 4), toUInt32(1))]
    FROM numbers(2)\"\"\")
refresh_settled(store)
pairs = "SELECT product_id, sessions%s FROM tagwerk.coview_pairs_settled " \\
        "WHERE product_id != '' ORDER BY 1"
assert store.rows(pairs % "") == [{"product_id": "p0", "sessions": 1},
                                  {"product_id": "p1", "sessions": 1}], store.rows(pairs % "")
migrations.load_migrations = lambda: every
migrations.migrate(store)
refresh_settled(store, empty=False)  # as at the next start, within a day of the last
found = store.rows(pairs % ", session_ids")
assert [row["session_ids"] for row in found] == [["s1"], ["s1"]], found
print("ok")
"""


@upgrade(43, SESSIONS_UPGRADE)
def test_settled_co_views_get_their_session_ids_at_the_first_refresh(upgraded):
    """0043: the daily co-view tier keeps its rows for a day (0035), but rows settled
    before the upgrade have no session ids: the first refresh computes them again."""
    upgraded()


# A refreshable view whose refresh takes two seconds (its migration, "slow"; made again by
# "remade"), and a migration that adds a column to its target ("wider").
SLOW_VIEW = """
import time
from collector.migrations import Migration

VIEW = \"\"\"CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.slow_mv REFRESH EVERY 1 HOUR
TO tagwerk.slow AS SELECT number AS n FROM numbers(20) WHERE sleepEachRow(0.1) = 0
SETTINGS max_block_size = 20\"\"\"
slow = Migration(9001, "slow_view", "-- cluster: replicated\\nCREATE TABLE IF NOT EXISTS "
                 "tagwerk.slow (n UInt64) ENGINE = MergeTree ORDER BY n;\\n" + VIEW)
remade = Migration(9002, "slow_remade", "-- cluster: replicated\\n"
                   "DROP VIEW IF EXISTS tagwerk.slow_mv;\\n" + VIEW)
wider = Migration(9003, "slow_wider", "-- cluster: replicated\\n"
                  "ALTER TABLE tagwerk.slow ADD COLUMN IF NOT EXISTS m UInt8")
"""

REFRESHING = SLOW_VIEW + """
status = "SELECT status FROM system.view_refreshes WHERE view = 'slow_mv'"
migrations.load_migrations = lambda: every + [slow]
migrations.migrate(store)
store.execute("SYSTEM WAIT VIEW tagwerk.slow_mv")
store.execute("SYSTEM REFRESH VIEW tagwerk.slow_mv")  # two seconds long
deadline = time.monotonic() + 10
while store.rows(status)[0]["status"] != "Running" and time.monotonic() < deadline:
    time.sleep(0.01)
assert store.rows(status)[0]["status"] == "Running"
# another database's view, stopped on purpose, stays stopped
store.execute("CREATE DATABASE IF NOT EXISTS other")
store.execute("CREATE TABLE other.t (n UInt8) ENGINE = MergeTree ORDER BY n")
store.execute("CREATE MATERIALIZED VIEW other.v REFRESH EVERY 1 HOUR TO other.t AS SELECT 1 AS n")
store.execute("SYSTEM WAIT VIEW other.v")
store.execute("SYSTEM STOP VIEW other.v")
migrations.load_migrations = lambda: every + [slow, wider]
migrations.migrate(store)
other = store.rows("SELECT status FROM system.view_refreshes WHERE view = 'v'")
assert other == [{"status": "Disabled"}], other
store.execute("SYSTEM WAIT VIEW tagwerk.slow_mv")
columns = [row["name"] for row in store.rows(
    "SELECT name FROM system.columns WHERE database = 'tagwerk' AND table = 'slow'")]
assert columns == ["n", "m"], columns
assert store.rows(status)[0]["status"] == "Scheduled", store.rows(status)
assert store.rows("SELECT count() AS n FROM tagwerk.slow") == [{"n": 20}]
print("ok")
"""


@upgrade(9999, REFRESHING)
def test_a_refresh_running_while_migrating_keeps_the_migrations_columns(upgraded):
    """A refreshable view's refresh swaps its target for a table made with the columns the
    target had when the refresh began: one running while a migration added a column took it
    away again (0043's new column, on the bench data, to the refresh the engine runs at
    start). Migrations run with tagwerk's refreshes stopped; the views refresh again after.
    Another database's view, stopped by its owner, stays stopped."""
    upgraded()


MADE_AND_ALTERED = SLOW_VIEW + """
migrations.load_migrations = lambda: every + [slow, remade, wider]
migrations.migrate(store)
store.execute("SYSTEM WAIT VIEW tagwerk.slow_mv")
columns = [row["name"] for row in store.rows(
    "SELECT name FROM system.columns WHERE database = 'tagwerk' AND table = 'slow'")]
assert columns == ["n", "m"], columns
assert store.rows("SELECT count() AS n FROM tagwerk.slow") == [{"n": 20}]
print("ok")
"""


@upgrade(9999, MADE_AND_ALTERED)
def test_a_view_made_by_one_migration_keeps_the_columns_a_later_one_adds(upgraded):
    """A refreshable view refreshes as soon as it is made: on a fresh install 0043 added
    ``session_ids`` to ``coview_pairs`` while the refresh of the view 0025 made was running,
    the refresh took the column away again, and 0045 failed ("Cannot find column
    session_ids"). A view made during the migrations, or made again, is stopped before
    the next statement."""
    upgraded()

SESSIONS_REBUILD = """
insert = \"\"\"INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at,
    device_id, session_id, consent, items) SELECT generateUUIDv4(number), 's', 'view_item',
    'track', now64(3), now64(3), 'd' || toString(number % 3), 's' || toString(number % 4),
    ['analytics'], [('p' || toString(number), '', '', '', '', toDecimal64(2, 4), toUInt32(1))]
    FROM numbers({first:UInt64}, 10)\"\"\"
store.execute(insert, {"first": 0})
rows = "SELECT session_id, device_id, arraySort(groupUniqArrayArray(products)) AS p " \\
       "FROM tagwerk.session_items GROUP BY ALL ORDER BY ALL"
before = store.rows(rows)
# Interrupted after the first `done` statements of 0044, then migrated again.
[rebuild] = [m for m in every if m.version == 44]
for stmt in rebuild.statements[:int(sys.argv[3])]:
    store.execute(stmt)
migrations.load_migrations = lambda: every
migrations.migrate(store)
after = store.rows(rows)
assert len(before) == 10 and after == before, (before, after)
[query] = store.rows("SELECT create_table_query AS q FROM system.tables "
                     "WHERE database = 'tagwerk' AND name = 'session_items'")
assert "index_granularity = 256" in query["q"], query
assert not store.rows("SELECT name FROM system.tables WHERE database = 'tagwerk' "
                      "AND name LIKE 'session_items_0%'")
store.execute(insert, {"first": 10})  # fed by the view again
assert sum(len(row["p"]) for row in store.rows(rows)) == 20, store.rows(rows)
print("ok")
"""


@upgrade(44, SESSIONS_REBUILD, cuts=[0, 1, 3, 4, 5, 6])
def test_session_items_rebuilt_in_small_granules_whenever_interrupted(upgraded, done):
    """0044 rebuilds session_items in granules of 256 rows (the public co-view list looks
    its sessions up by id) under its own name. Cut after any of its statements, then run
    again, it keeps every row, in the new layout, fed by new hits."""
    upgraded()


DEVICES_UPGRADE = SESSIONS_UPGRADE.replace(  # (devices: named clients since 0048)
    '", session_ids"', '", clients"').replace(
    '[row["session_ids"] for row in found] == [["s1"], ["s1"]]',
    '[row["clients"] for row in found] == [1, 1]')


@upgrade(45, DEVICES_UPGRADE)
def test_settled_co_views_get_their_devices_at_the_first_refresh(upgraded):
    """0045: the same for the devices each pair counts (rows settled before have none)."""
    assert DEVICES_UPGRADE != SESSIONS_UPGRADE
    upgraded()
