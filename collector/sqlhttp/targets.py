"""Whether an INSERT may be sent again: the engine drops a repeated block only in some tables.

chDB's streaming insert reports success for some inserts the engine refused once the rows
were parsed, so the interface sends a streamed insert again inline when the engine counted
an error meanwhile (``interface.py``). That repeat is a no-op only where ClickHouse drops a
block inserted again under its ``insert_deduplication_token``: a MergeTree table with a
deduplication window, with ``insert_deduplicate`` on. Anywhere else (a plain MergeTree
without a window, the engine's default; a Null, Memory or Distributed table; a table
function) the rows would be stored twice (probe 69: 352 rows from 200 inserts, while other
clients' queries failed). Everything here is read from the engine; whatever it cannot
tell counts as "not repeatable": such an insert goes inline at once (``interface.py``),
which costs the engine more than the stream, never a second copy.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from collector.sqlhttp.syntax import Node
from collector.storage.base import escape_param

# The deduplication window's setting: of a replicated (or shared) MergeTree, of another.
WINDOWS = {True: "replicated_deduplication_window", False: "non_replicated_deduplication_window"}
TABLE = ("SELECT engine, engine_full FROM system.tables "
         "WHERE database = {database:String} AND name = {table:String}")
# The engine's defaults for them: its configuration, fixed while it runs (read once).
DEFAULTS = ("SELECT name, value FROM system.merge_tree_settings WHERE name IN "
            f"('{WINDOWS[True]}', '{WINDOWS[False]}')")
_defaults: dict[str, str] = {}
# A table's verdict is kept this long: each flush a collector sends through the server
# backend asked the system tables for it (~10 ms). A table altered meanwhile to drop its
# window could be trusted for that long (a read-write user's own doing).
KEPT_SECONDS = 10.0
MAX_KEPT = 1024
_kept: dict[tuple[str, str], tuple[float, bool]] = {}


def insert_target(tree: Node) -> tuple[str, str] | None:
    """The database ('' for the connection's) and table an INSERT's tree names; None for a
    table function (``INSERT INTO FUNCTION ...``)."""
    names = []
    for child in tree.children:
        if child.kind != "Identifier":
            break
        names.append(child.ident)
    if len(names) == 2:
        return names[0], names[1]
    return ("", names[0]) if len(names) == 1 else None


def repeatable(conn: Any, own: Any, head: str, target: tuple[str, str] | None) -> bool:
    """Whether the engine drops the block of the INSERT ``head`` (the engine's canonical
    text) into ``target`` when it is inserted again under the same token. ``conn``: the
    client's connection (its database and settings); ``own``: the collector's, which reads
    the system tables whatever the client may."""
    if target is None or " SETTINGS " in head:  # (settings of its own: say, insert_deduplicate)
        return False
    database, table = target
    found = orjson.loads(conn.query(
        "SELECT currentDatabase() AS db, getSetting('insert_deduplicate') AS on",
        "JSONEachRow").bytes())
    if not found["on"]:
        return False
    key, now = (database or found["db"], table), time.monotonic()
    kept = _kept.get(key)
    if kept is not None and now - kept[0] < KEPT_SECONDS:
        return kept[1]
    verdict = _deduplicates(own, *key)
    if len(_kept) >= MAX_KEPT:
        _kept.clear()
    _kept[key] = (now, verdict)
    return verdict


def _deduplicates(own: Any, database: str, table: str) -> bool:
    rows = own.query(TABLE, "JSONEachRow", params={
        "database": escape_param(database), "table": escape_param(table),
    }).bytes().splitlines()
    if not rows:
        return False
    row = orjson.loads(rows[0])
    if not row["engine"].endswith("MergeTree"):
        return False
    replicated = row["engine"].startswith(("Replicated", "Shared"))
    if not _defaults:
        _defaults.update((setting["name"], setting["value"]) for setting in map(
            orjson.loads, own.query(DEFAULTS, "JSONEachRow").bytes().splitlines()))
    window = _setting(row["engine_full"], WINDOWS[replicated]) or \
        _defaults.get(WINDOWS[replicated], "")
    return window.isdigit() and int(window) > 0


def _setting(engine_full: str, name: str) -> str | None:
    """A setting's value in the SETTINGS clause the engine ends a table's definition with
    (``... SETTINGS index_granularity = 8192``)."""
    if " SETTINGS " not in engine_full:
        return None
    for setting in engine_full.rpartition(" SETTINGS ")[2].split(", "):
        key, _, value = setting.partition(" = ")
        if key == name:
            return value
    return None
