"""The embedded engine's configuration: its memory cap, and no way to the host's files.

chDB reads a ClickHouse configuration file when it starts (``?config-file=``). Written anew
at every start under the data directory:

- ``max_server_memory_usage``: the engine refuses an allocation past it, whatever query
  asks, so that no query can take the collector's process over its memory limit;
- ``user_files_path`` and ``format_schema_path``: empty directories of their own, not the
  working directory;
- settings that name files (templates, schemas, error logs) fixed for every connection by a
  constraint, so that neither a URL parameter nor a query's SETTINGS clause can set them;
- row policies that confine a site-scoped SQL user to its sites' rows (``site_scope_tag``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from xml.sax.saxutils import escape

from collector.files import write_atomic

# The share of the collector's memory limit the engine may take; the rest is Python's
# (request buffers, results on their way out, the spool's queue).
ENGINE_SHARE = 0.75
# Without TAGWERK_MEMORY_LIMIT: this share of the machine (or of the cgroup's limit).
DEFAULT_MACHINE_SHARE = 0.5
FILE_SETTINGS = (
    "format_schema", "format_schema_source", "format_template_resultset",
    "format_template_row", "format_template_row_format", "format_template_resultset_format",
    "output_format_schema", "input_format_record_errors_file_path",
    "rename_files_after_processing",
    # A host: AvroConfluent reads (and writes) its schemas from this registry.
    "format_avro_schema_registry_url", "output_format_avro_confluent_subject",
)
# Fixed to these values for every connection: chDB turns introspection (reading the
# binary's symbols and paths) on; eval() builds a query at run time, past any check; the
# SQL interface checks statements as ClickHouse's own dialect parses them, so no other.
# An insert sent again under its deduplication token (inline after chDB's stream counted an
# error, or a flush replayed after a crash) is dropped only if it is cut into the same
# blocks, and parallel parsing cut inserts over 10 MB differently streamed and inline: the
# second copy was stored (test_flusher's 10 MB test). One parser per insert costs a 38 MB
# insert nothing measurable on two cores.
FIXED_SETTINGS = {
    "allow_introspection_functions": "0", "allow_experimental_eval_table_function": "0",
    "dialect": "clickhouse", "allow_experimental_kusto_dialect": "0",
    "allow_experimental_prql_dialect": "0", "input_format_parallel_parsing": "0",
}
# Defaults for every connection, which a query may change. Files are read with ``pread`` on
# the querying thread. The engine's default tries a read that must not block and hands it
# to a read thread pool when the file system cannot promise that: tmpfs never can (a data
# directory in /dev/shm or a memory-backed container volume), and there every small range
# of a profile's rows went through a thread hand-off, on the core the collector shares:
# 100 keys of person_hits read in 70 ms instead of 214, 5 in 11 instead of 19; on ext4 the
# same either way (bench/read_method.py).
DEFAULT_SETTINGS = {"local_filesystem_read_method": "pread"}
# The tables whose rows a site-scoped SQL user's queries see only for its sites. A row
# policy filters the storage read itself, before any PREWHERE or function of the query
# (additional_table_filters came after an explicit PREWHERE, whose errors then showed other
# sites' values). chDB runs every connection as one user, so the policy keys on the
# connection's log_comment, which the SQL interface sets before readonly = 1 fixes it; the
# collector's own connections have none and read every row.
# The pre-aggregates (clickhouse/0010, 0011): per-site rows like the events'.
AGGREGATE_TABLES = tuple(f"tagwerk.{name}" for name in (
    "product_hourly", "page_daily", "session_entries", "session_items", "purchased_items",
    "coview_pairs", "copurchase_pairs"))
SITE_TABLES = ("tagwerk.events", "tagwerk.consent_log", *AGGREGATE_TABLES)
# Views over the pre-aggregates (clickhouse/0011): they read only SITE_TABLES, whose row
# policies filter what a site-scoped user sees through them; no policy of their own.
AGGREGATE_VIEWS = ("tagwerk.page_entries",)
_SITES_TAG = "tagwerk-sites:"
_SITE_FILTER = (
    f"NOT startsWith(getSetting('log_comment'), '{_SITES_TAG}') OR has(splitByChar(',', "
    "splitByChar(':', getSetting('log_comment'))[2]), site_id)"
)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.I)


def parse_size(text: str) -> int:
    """``4G``, ``512MiB``, ``1073741824``; a fraction below 1 (``0.5``) of the machine."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 4G, 512M, or 0.5 of the machine)")
    number, unit = float(match.group(1)), match.group(2).upper()
    if not unit and number < 1:
        return int(machine_memory() * number)
    return int(number * 1024 ** "_KMGT".index(unit or "_"))


def machine_memory() -> int:
    """Physical memory, or the cgroup's limit when lower (a container's)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def default_memory_limit() -> int:
    return int(machine_memory() * DEFAULT_MACHINE_SHARE)


def site_scope_tag(sites: tuple[str, ...]) -> str:
    """The start of a ``log_comment`` that confines a query to ``sites`` (site ids, which
    hold neither ',' nor ':')."""
    return f"{_SITES_TAG}{','.join(sites)}:"


def _row_policies() -> str:
    by_db: dict[str, list[str]] = {}
    for name in SITE_TABLES:
        db, table = name.split(".")
        by_db.setdefault(db, []).append(
            f"<{table}><filter>{escape(_SITE_FILTER)}</filter></{table}>"
        )
    return "".join(f"<{db}>{''.join(tables)}</{db}>" for db, tables in by_db.items())


def write_engine_config(root: Path, memory_limit: int) -> Path:
    """Write the engine's configuration into the folder ``root`` and return its path."""
    for folder in ("user_files", "format_schemas"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    users = root / "users.xml"
    constraints = "".join(
        f"<{name}><const/></{name}>" for name in (*FILE_SETTINGS, *FIXED_SETTINGS)
    )
    values = "".join(f"<{name}>{value}</{name}>"
                     for name, value in {**DEFAULT_SETTINGS, **FIXED_SETTINGS}.items())
    write_atomic(users, (
        "<clickhouse>\n"
        "  <profiles><default>" + values + "<constraints>" + constraints + "</constraints>"
        "</default></profiles>\n"
        "  <users><default><password></password><profile>default</profile>"
        "<quota>default</quota><access_management>0</access_management>"
        "<databases>" + _row_policies() + "</databases></default></users>\n"
        "  <quotas><default/></quotas>\n"
        "</clickhouse>\n"
    ))
    config = root / "config.xml"
    write_atomic(config, (
        "<clickhouse>\n"
        f"  <max_server_memory_usage>{int(memory_limit * ENGINE_SHARE)}"
        "</max_server_memory_usage>\n"
        f"  <user_files_path>{escape(str(root / 'user_files'))}/</user_files_path>\n"
        f"  <format_schema_path>{escape(str(root / 'format_schemas'))}/</format_schema_path>\n"
        f"  <user_directories><users_xml><path>{escape(str(users))}</path></users_xml>"
        "</user_directories>\n"
        "</clickhouse>\n"
    ))
    return config
