"""Numbered SQL migrations from ``clickhouse/``, applied once each, rendered for a cluster.

The files are plain single-node ClickHouse SQL. A first-line comment tells how a table is
laid out on a cluster:

- ``-- cluster: replicated``: a full copy on every node (small tables such as sites);
- ``-- cluster: sharded by EXPR``: a ``*_local`` table per shard and a ``Distributed``
  table over it under the original name, rows placed by ``EXPR``.

A layout line before a later statement changes the layout from there on (one file may
hold tables placed differently). Views render too:

- ``CREATE TABLE ... ENGINE = Null`` (a router in front of views: nothing stored) and
  ``ENGINE = EmbeddedRocksDB`` (a node's own key-value copy of its tables): on every node as
  it is, whatever the layout line says.
- ``CREATE MATERIALIZED VIEW ... TO t AS SELECT ... FROM s``: one view per node, reading
  the node's own ``s_local`` (an insert trigger sees the shard's inserts) and writing its
  ``t_local`` when those are sharded; the Distributed tables on top read all shards.
- ``... REFRESH EVERY ... TO t``: the same, per node; its target is a plain ``MergeTree``
  per node, not replicated (each replica computes the same result from its replica of the
  sources, and a refresh swaps its table, which a shared replication path cannot take).
- ``CREATE VIEW``: on every node, over the Distributed tables (the whole data).
- ``INSERT INTO ... SELECT`` (backfills): run once, through the Distributed tables.
- ``DROP VIEW|TABLE IF EXISTS`` (a table rebuilt under a new name): on every node, a
  sharded table's Distributed table and its ``*_local`` tables alike.
- ``EXCHANGE TABLES a AND b`` (a table rebuilt under its own name: a copy filled, then
  exchanged): on every node, a sharded table's ``*_local`` tables (its Distributed table
  names them, and goes on reading the one of its name).

Statements must be idempotent (``IF NOT EXISTS``): ClickHouse has no transactional DDL,
so a migration interrupted half-way is simply run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources

from collector.storage import StorageError, Store

DATABASE = "tagwerk"

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LAYOUT = re.compile(r"^--\s*cluster:\s*(replicated|sharded by\s+(.+?))\s*$", re.M)
_CREATE = re.compile(r"^\s*CREATE TABLE (IF NOT EXISTS )?(\w+)\.(\w+)", re.I)
_VIEW = re.compile(r"^\s*CREATE (MATERIALIZED )?VIEW (IF NOT EXISTS )?(\w+)\.(\w+)", re.I)
_DICTIONARY = re.compile(r"^\s*CREATE DICTIONARY (IF NOT EXISTS )?(\w+)\.(\w+)", re.I)
_TO = re.compile(r"\bTO\s+(\w+)\.(\w+)", re.I)
_REFRESH = re.compile(r"^\s*REFRESH\b", re.I)
_INSERT = re.compile(r"^\s*INSERT INTO\b", re.I)
_NAME = re.compile(r"\b(\w+)\.(\w+)\b")
_ALTER = re.compile(r"^\s*ALTER TABLE (\w+)\.(\w+)", re.I)
_DROP = re.compile(r"^\s*DROP (TABLE|VIEW|DICTIONARY) IF EXISTS (\w+)\.(\w+)\s*$", re.I)
_EXCHANGE = re.compile(r"^\s*EXCHANGE TABLES (\w+)\.(\w+) AND (\w+)\.(\w+)\s*$", re.I)
_OPTIMIZE = re.compile(r"^\s*OPTIMIZE TABLE (\w+)\.(\w+)", re.I)
# ALTERs of what only the shards' storage has: indexes, projections, TTL, settings, a
# column's stored values.
_STORAGE_ONLY = re.compile(
    r"\s*(ADD|DROP|MATERIALIZE|CLEAR)\s+(INDEX|PROJECTION)\b|\s*MATERIALIZE\s+COLUMN\b"
    r"|\s*(MODIFY|REMOVE)\s+TTL\b|\s*(MODIFY|RESET)\s+SETTING\b", re.I)
_MODIFY_QUERY = re.compile(r"\s*MODIFY QUERY\b", re.I)
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w*MergeTree)(?:\(([^)]*)\))?", re.I)
# Engines whose tables are each node's own, as they are: neither replicated nor sharded.
_NODE_ENGINE = re.compile(r"\bENGINE\s*=\s*(Null|EmbeddedRocksDB)\b", re.I)


Layout = str | None  # a sharding expression, or None: replicated to every node


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        return [stmt for stmt, _ in self.placed]

    @property
    def placed(self) -> list[tuple[str, Layout]]:
        """Each statement with the layout of the last ``-- cluster:`` line before it."""
        if not _LAYOUT.search(self.sql):
            raise ValueError(f"migration {self.version:04d} lacks a '-- cluster:' layout line")
        out: list[tuple[str, Layout]] = []
        layout: Layout = None
        part: list[str] = []
        begun: Layout = None
        for line in self.sql.splitlines():
            if line.startswith("--"):
                if match := _LAYOUT.match(line):
                    layout = match.group(2)
                continue
            pieces = line.split(";")
            for i, piece in enumerate(pieces):
                if not "".join(part).strip() and piece.strip():
                    begun = layout  # the statement starts here
                part.append(piece)
                if i < len(pieces) - 1:
                    _close(part, begun, out)
                    part = []
            part.append("\n")
        _close(part, begun, out)
        return out

    @property
    def shard_key(self) -> str | None:
        """The file's first layout: the sharding expression, or None for a table
        replicated to every node."""
        match = _LAYOUT.search(self.sql)
        if not match:
            raise ValueError(f"migration {self.version:04d} lacks a '-- cluster:' layout line")
        return match.group(2)


def _close(part: list[str], layout: Layout, out: list[tuple[str, Layout]]) -> None:
    text = "".join(part).strip()
    if text:
        out.append((text, layout))


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("tagwerk_clickhouse").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migrations share a number")
    return found


def sharded_tables(migrations: list[Migration]) -> frozenset[str]:
    """``db.table`` of every table the migrations create sharded (``*_local`` per shard)."""
    return frozenset(
        f"{match.group(2)}.{match.group(3)}"
        for migration in migrations
        for stmt, layout in migration.placed
        if layout and (match := _CREATE.match(stmt)) and not _NODE_ENGINE.search(stmt)
    )


def render(migration: Migration, cluster: str | None = None,
           sharded: frozenset[str] | None = None) -> list[str]:
    """The statements to run, for one server (``cluster=None``) or for a cluster.
    ``sharded``: the tables created sharded, which views read and write as ``*_local``
    (default: those of every migration, and of this one)."""
    if cluster is None:
        return migration.statements
    if sharded is None:
        sharded = sharded_tables([*load_migrations(), migration])
    placed = migration.placed
    refreshed = {
        f"{to.group(1)}.{to.group(2)}"
        for stmt, _ in placed
        if (view := _VIEW.match(stmt)) and _REFRESH.match(stmt[view.end():])
        and (to := _TO.search(stmt, view.end()))
    }
    out: list[str] = []
    for stmt, layout in placed:
        out.extend(_render_for_cluster(stmt, cluster, layout, sharded, refreshed))
    return out


def _render_for_cluster(stmt: str, cluster: str, shard_key: str | None,
                        sharded: frozenset[str], refreshed: set[str]) -> list[str]:
    on = f"ON CLUSTER {_ident(cluster)}"
    if match := _CREATE.match(stmt):
        exists, db, table = match.group(1) or "", match.group(2), match.group(3)
        local = f"{table}_local" if shard_key else table
        shard = "{shard}" if shard_key else "all"
        path = f"'/clickhouse/tables/{shard}/{db}/{local}', '{{replica}}'"
        head = f"CREATE TABLE {exists}{db}.{local} {on}"
        body = stmt[match.end():]
        if _NODE_ENGINE.search(body):
            return [f"CREATE TABLE {exists}{db}.{table} {on}{body}"]  # the node's own

        def replicated(engine: re.Match) -> str:
            if f"{db}.{table}" in refreshed:
                return engine.group(0)  # a refreshable view's target: one copy per node
            args = f"{path}, {engine.group(2)}" if engine.group(2) else path
            return f"ENGINE = Replicated{engine.group(1)}({args})"

        body, n = _ENGINE.subn(replicated, body, count=1)
        if n != 1:
            raise ValueError(f"{db}.{table}: only *MergeTree tables can be rendered for a cluster")
        out = [head + body]
        if shard_key:
            out.append(
                f"CREATE TABLE {exists}{db}.{table} {on} AS {db}.{local} "
                f"ENGINE = Distributed({_quote(cluster)}, {_quote(db)}, {_quote(local)}, "
                f"{shard_key})"
            )
        return out
    if match := _VIEW.match(stmt):
        materialized, exists, db, view = match.groups()
        body = stmt[match.end():]
        if materialized:
            # An insert trigger per node: it sees that node's inserts into the shard's
            # local table, and writes the shard's local target.
            body = _NAME.sub(lambda m: _local(m, sharded), body)
        kind = "MATERIALIZED VIEW" if materialized else "VIEW"
        return [f"CREATE {kind} {exists or ''}{db}.{view} {on}{body}"]
    if match := _DICTIONARY.match(stmt):
        # A copy in each node's memory, loaded from its tables: replicated ones (identity)
        # or Distributed ones under their names (consent decisions), so every node holds
        # the same.
        exists, db, name = match.groups()
        return [f"CREATE DICTIONARY {exists or ''}{db}.{name} {on}{stmt[match.end():]}"]
    if _INSERT.match(stmt):
        return [stmt]  # a backfill: once, through the Distributed tables
    if match := _DROP.match(stmt):
        what, db, name = match.groups()
        if f"{db}.{name}" in sharded:  # the Distributed table first: nothing reads a gone shard
            return [f"DROP {what} IF EXISTS {db}.{name} {on} SYNC",
                    f"DROP {what} IF EXISTS {db}.{name}_local {on} SYNC"]
        return [f"DROP {what} IF EXISTS {db}.{name} {on} SYNC"]
    if match := _EXCHANGE.match(stmt):
        first, second = (f"{match.group(i)}.{match.group(i + 1)}" for i in (1, 3))
        if (first in sharded) != (second in sharded):
            raise ValueError(f"cannot exchange a sharded and a replicated table: {stmt}")
        names = [_local(_NAME.search(stmt, match.start(i)), sharded) for i in (1, 3)]
        return [f"EXCHANGE TABLES {names[0]} AND {names[1]} {on}"]
    if match := _OPTIMIZE.match(stmt):
        # Parts are rewritten where they are: on the shards, on every replica.
        db, table = match.group(1), match.group(2)
        local = f"{table}_local" if f"{db}.{table}" in sharded else table
        return [f"OPTIMIZE TABLE {db}.{local} {on}{stmt[match.end():]}"]
    if match := _ALTER.match(stmt):
        db, table = match.group(1), match.group(2)
        rest = stmt[match.end():]
        if _MODIFY_QUERY.match(rest):
            # A materialised view's new query: like its creation, on every node, reading
            # the shard's local tables.
            return [f"ALTER TABLE {db}.{table} {on}{_NAME.sub(lambda m: _local(m, sharded), rest)}"]
        if shard_key and _STORAGE_ONLY.match(rest):
            return [f"ALTER TABLE {db}.{table}_local {on}{rest}"]  # a Distributed has none
        if shard_key:
            # Columns must change on the shards and on the Distributed table alike.
            return [
                f"ALTER TABLE {db}.{table}_local {on}{rest}",
                f"ALTER TABLE {db}.{table} {on}{rest}",
            ]
        return [f"ALTER TABLE {db}.{table} {on}{rest}"]
    raise ValueError(f"cannot render for a cluster: {stmt.split(chr(10))[0]}")


def _local(name: re.Match, sharded: frozenset[str]) -> str:
    db, table = name.group(1), name.group(2)
    return f"{db}.{table}_local" if f"{db}.{table}" in sharded else name.group(0)


def migrate(store: Store, cluster: str | None = None) -> list[Migration]:
    """Apply the migrations not applied yet; return them. Refuse edited applied ones."""
    on = f" ON CLUSTER {_ident(cluster)}" if cluster else ""
    store.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}{on}")
    migrations = load_migrations()
    for stmt in render(migrations[0], cluster):  # the bookkeeping table itself
        store.execute(stmt)
    applied = {
        row["version"]: row["checksum"]
        for row in store.rows(f"SELECT version, checksum FROM {DATABASE}.schema_migrations FINAL")
    }
    for migration in migrations:
        if applied.get(migration.version, migration.checksum) != migration.checksum:
            raise RuntimeError(
                f"migration {migration.version:04d}_{migration.name} was changed after it "
                "was applied; add a new migration instead"
            )
    pending = [migration for migration in migrations if migration.version not in applied]
    stopping = refreshes_stopped(store) if pending and not cluster \
        else contextlib.nullcontext(lambda: None)
    with stopping as stop_made:
        for migration in pending:
            for stmt in render(migration, cluster):
                store.execute(stmt)
                if _VIEW.match(stmt):
                    stop_made()  # (a refreshable one began refreshing as it was made)
            store.execute(
                f"INSERT INTO {DATABASE}.schema_migrations (version, name, checksum) "
                "VALUES ({version:UInt32}, {name:String}, {checksum:String})",
                {"version": migration.version, "name": migration.name,
                 "checksum": migration.checksum},
            )
    return pending


@contextlib.contextmanager
def refreshes_stopped(store: Store) -> Iterator[Callable[[], None]]:
    """No refreshable view refreshes meanwhile; each refreshes at once after. Yields a
    function that stops the views made since (a view refreshes as soon as it is made).

    A refresh swaps its view's target for a table made with the columns the target had when
    the refresh began: one running while a migration added a column took the column away
    again (0043 on the bench data, to the refresh the engine runs at its start; on a fresh
    install, to the first refresh of the view 0025 made). Stopping cancels a running
    refresh; the refreshes asked after (of every view, as at the engine's start) run with
    the new columns and queries. Only tagwerk's views: a server's other databases may have
    views of their own, stopped on purpose. (A cluster's nodes cannot be asked this through
    ON CLUSTER: there, stop the views or the collectors while upgrading.)"""
    stopped: set[str] = set()

    def stop_new() -> None:
        # (by status, not name: a view dropped and made again under its name refreshes too)
        new = [view for view, status in _refreshable(store).items() if status != "Disabled"]
        for view in new:
            store.execute(f"SYSTEM STOP VIEW {view}")
        stopped.update(new)
        for view in new:
            # (a refresh that failed rather than stopped is no concern of the migrations)
            with contextlib.suppress(StorageError):
                store.execute(f"SYSTEM WAIT VIEW {view}")  # a cancelled refresh ends

    stop_new()
    try:
        yield stop_new
    finally:
        for view in _refreshable(store):  # (a migration may drop one)
            if view in stopped:
                store.execute(f"SYSTEM START VIEW {view}")
            store.execute(f"SYSTEM REFRESH VIEW {view}")


def _refreshable(store: Store) -> dict[str, str]:
    """tagwerk's refreshable views, and their status ("Disabled": stopped)."""
    return {f"{_ident(row['database'])}.{_ident(row['view'])}": row["status"]
            for row in store.rows("SELECT database, view, status FROM system.view_refreshes "
                                  "WHERE database = {db:String}", {"db": DATABASE})}


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", name):
        raise ValueError(f"not a valid cluster name: {name!r}")
    return name


def _quote(name: str) -> str:
    return "'" + _ident(name) + "'"
