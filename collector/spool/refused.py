"""Rows ClickHouse refuses to parse, found among a batch's so that the rest goes in.

Ingestion validates every hit before its 2xx (``collector/ingest/events.py``), so ClickHouse
should never refuse a spooled row. When it does (a check that missed a case: a revenue that
rounded past ``Decimal(18, 4)`` did), retrying the batch would hold every later hit of every
site in the spool for good. So when an insert is refused, the flusher has the batch's rows
parsed again into a ``null()`` table function of the target's columns (the engine's own
parsers, nothing written), halving the failing parts down to the rows that fail alone. Those
rows are left out and counted (``tagwerk_rows_unstorable_total``), and the log names their
site and event id, never their content (it may name a person). A failure that is not a
row's (the engine away, out of memory, a view's error) is retried as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from collector.storage import StorageError, StorageUnavailable, Store


def structure(store: Store, table: str, columns: tuple[str, ...]) -> str:
    """``null()``'s argument for ``tagwerk.{table}``'s ``columns``, as the engine types them."""
    types = {row["name"]: row["type"] for row in store.rows(
        "SELECT name, type FROM system.columns WHERE database = 'tagwerk' "
        "AND table = {table:String}", {"table": table})}
    text = ", ".join(f"`{name}` {types[name]}" for name in columns)
    return text.replace("\\", "\\\\").replace("'", "\\'")


def refused_rows(store: Store, table: str, columns: tuple[str, ...], lines: list[bytes],
                 fmt: str, settings: Mapping[str, str]) -> list[int] | None:
    """The indices of ``lines`` (rows in ``fmt``, each ending with a newline) that the
    engine cannot parse into the table's columns; None when they all parse together, or
    when the rows left parse no better (not a row's fault: retry the batch). Raises
    StorageUnavailable when the engine cannot be reached."""
    target = f"FUNCTION null('{structure(store, table, columns)}') ({', '.join(columns)})"

    def parses(rows: list[bytes]) -> bool:
        try:
            store.insert(target, b"".join(rows), fmt, settings)
        except StorageUnavailable:
            raise
        except StorageError:
            return False
        return True

    if parses(lines):
        return None
    refused: list[int] = []
    _halve(parses, lines, 0, len(lines), refused)
    left_out = set(refused)
    kept = [line for index, line in enumerate(lines) if index not in left_out]
    if not refused or (kept and not parses(kept)):
        return None
    return refused


def _halve(parses: Callable[[list[bytes]], bool], lines: list[bytes], first: int, end: int,
           refused: list[int]) -> None:
    """Add to ``refused`` the rows of ``lines[first:end]`` (which fails) that fail alone."""
    if end - first == 1:
        refused.append(first)
        return
    middle = (first + end) // 2
    for a, b in ((first, middle), (middle, end)):
        if not parses(lines[a:b]):
            _halve(parses, lines, a, b, refused)
