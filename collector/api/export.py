"""``GET /api/v1/sites/{site}/export``: a site's raw rows after a cursor, in ClickHouse's own
output formats, streamed.

``format`` is ``ndjson`` (JSONEachRow, times as ISO 8601 UTC text), ``csv`` (CSVWithNames)
or ``parquet``; ``since`` a cursor from an earlier answer (none: from the first row);
``events`` a comma list of event names, ``channel`` one channel; ``limit`` at most that many
rows. The answer's ``Tagwerk-Cursor`` is the next ``since``; ``Tagwerk-More: true`` says that
``limit`` cut the answer short. The range is fixed before the first byte goes out
(``cursor.py`` says why it is exact), so the cursor travels in a header.

Why answers are large by default (``DEFAULT_LIMIT`` = ``MAX_LIMIT``): an answer's rows are a
range of insert positions, but the table is sorted by (site, day, event), and a merge
interleaves the rows of many inserts in every granule. So whatever its size, an answer reads
the position columns of the site's whole table and most granules of every column: at 10
million rows, about 4.6 CPU-seconds of reading per answer, more than formatting a million
rows as JSON takes (3 µs a row; bench/export.py). Following the cursor through N rows costs
N / limit such reads: with 1,000,000-row answers a 10-million-row export spent more time
reading than formatting (183-269k rows/s as NDJSON); in one answer, 300k+ rows/s.

Where an NDJSON row's CPU goes (in-process, one core, bench/export.py's rows, through the
pipe; ~3.5 µs a row on a loaded machine): reading 0.6 µs, the engine's JSONEachRow
formatting ~2.6 µs, Python's pipe reads ~0.25 µs. The costliest column is ``props`` (~0.45
µs for two keys: ClickHouse formats each Map key through a temporary buffer; cast to the
JSON type it costs 2.2 µs). Served, the whole collector costs ~4.8 µs a row (median of 4
10-million-row answers on a loaded machine; ~3.75 at 414k rows/s on a quiet one). Its
threads named ``python3`` take ~0.9 µs of that, but mostly as the engine: the thread that
runs the query executes part of the pipeline (perf of a 2-million-row answer: 71% of their
samples are in chDB). The relay itself (interpreter, pipe reads, socket writes) is ~5% of
the collector's CPU, ~0.25 µs a row, so reused buffers could save little, and smaller
pieces cost more (reads of 256 KiB instead of 1 MiB: 4.05 against 3.76 µs a row served,
medians of 4 interleaved answers, 424k against 464k rows/s: each piece is a thread hop and
an ASGI send); the engine's formatting (Formatter threads, 47%) and reading (the rest) are
the cost.
Leaving "/" unescaped (``output_format_json_escape_forward_slashes``, 1% fewer bytes) or
formatting on one thread (``output_format_parallel_formatting`` = 0: 4.82 against 4.79 µs a
row served, medians of 4 interleaved answers) made no measurable difference, so the
engine's defaults stay.

Memory stays flat: the engine writes the format while the client reads (``Store.stream``),
and a client that reads slowly slows the query down (one that reads nothing for the HTTP
limits' write timeout is let go). A failure midway ends the answer by breaking the
connection (no final chunk), so that no client takes a partial body for a whole one. At most
``PER_SITE`` exports of a site run at once.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from collector.api import cursor, cursor_range
from collector.api.access import READ, ApiError, keyed
from collector.api.query import choice, integer, names, params
from collector.api.slots import slots
from collector.ingest.events import CHANNELS, STRING_LIMITS
from collector.service import Collector
from collector.sites import Site
from collector.web.held import cut

log = logging.getLogger("tagwerk.api.export")

FORMATS = {  # name: (ClickHouse format, media type)
    "ndjson": ("JSONEachRow", "application/x-ndjson"),
    "csv": ("CSVWithNames", "text/csv; charset=utf-8"),
    "parquet": ("Parquet", "application/vnd.apache.parquet"),
}
EVENT_NAME = re.compile(rf"[^,\x00-\x1f\x7f]{{1,{STRING_LIMITS['event']}}}")  # fullmatch
MAX_LIMIT = 10_000_000
DEFAULT_LIMIT = MAX_LIMIT  # see the module's docstring
PER_SITE = 2
QUERY_SECONDS = 600
SETTINGS = {
    "max_execution_time": QUERY_SECONDS,
    "date_time_output_format": "iso",
    # Row groups are buffered whole (and encoded in parallel) before they are written:
    # small ones keep the engine's memory flat (measured in bench/export.py).
    "output_format_parquet_row_group_size": 16_384,
    "output_format_parquet_row_group_size_bytes": 8 * 1024 * 1024,
}


def row_filter(values: dict[str, str], site_id: str) -> cursor_range.Filter:
    events = names(values, "events", EVENT_NAME, most=50)
    channel = ""
    if "channel" in values:
        channel = choice(values, "channel", tuple(sorted(CHANNELS)), "")
    return cursor_range.Filter(site_id, tuple(events), channel)


def head_only(media: str, headers: dict[str, str] | None = None) -> Response:
    """The answer to a HEAD of a streamed answer, after the GET's checks: its type, no
    body and no length (the rows' are not known without reading them)."""
    response = Response(headers={"Cache-Control": "no-store", **(headers or {})},
                        media_type=media)
    del response.headers["content-length"]
    return response


class ClosingResponse(StreamingResponse):
    """A streamed answer whose body iterator is always closed (with it go the site's slot
    and the engine's query). A client that reads nothing of it is let go by the HTTP
    limits' write timeout (``collector/web/limits.py``), which sees what the client reads:
    a limit on each send cut clients reading slowly but steadily, as the kernel wakes a
    writer only once a third of its send buffer (MBs) is free (probe 62). An answer not
    sent whole within ``deadline`` seconds is cut: a client reading half a KB a second held
    an export's slot for hours (the engine, blocked on its pipe, never sees its own time
    limit; probe 63)."""

    def __init__(self, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self.deadline) as sending:
                await super().__call__(scope, receive, send)
            if sending.cancelled_caught:  # unfinished: the connection is closed
                await cut(scope, self.deadline)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


class Relay:
    """``pieces`` (a blocking iterator) as an async body, starting with ``first``;
    ``done`` runs once however it ends, even if the body was never read."""

    def __init__(self, pieces: Iterator[bytes], first: bytes | None,
                 done: Callable[[], None]) -> None:
        self._pieces, self._next, self._done = pieces, first, done
        self._closed = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        chunk, self._next = self._next, None
        if chunk is None and not self._closed:
            chunk = await anyio.to_thread.run_sync(next, self._pieces, None)
        if chunk is None:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._pieces.close()  # type: ignore[attr-defined]
        self._done()


@keyed(READ)
async def export(request: Request, collector: Collector, site: Site) -> Response:
    values = params(request, ("format", "since", "events", "channel", "limit"))
    name = choice(values, "format", tuple(FORMATS), "ndjson")
    fmt, media = FORMATS[name]
    rows = row_filter(values, site.site_id)
    limit = integer(values, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    store = collector.store
    table = await anyio.to_thread.run_sync(cursor_range.table_tag, store)
    start = cursor.decode(values["since"], table, site.site_id) if "since" in values else None
    disposition = {"Content-Disposition": f'attachment; filename="{site.site_id}.{name}"'}
    if request.method == "HEAD":  # checked as a GET; no rows read, so no cursor to give
        return head_only(media, disposition)

    running = slots(request, "tagwerk_exports", PER_SITE)
    if not running.take(site.site_id):
        raise ApiError(429, f"at most {PER_SITE} exports of a site at once; try again when one "
                       "has finished", headers={"Retry-After": "5"})
    try:
        end, more = await anyio.to_thread.run_sync(cursor_range.plan, store, rows, start, limit)
        sql, bound = cursor_range.select_rows(rows, start, end)
        pieces = store.stream(sql, bound, fmt, SETTINGS)
        try:
            # The first piece before the status line: a query that fails at once is a 503.
            first = await anyio.to_thread.run_sync(next, pieces, None)
        except BaseException:
            pieces.close()  # type: ignore[attr-defined]
            raise
    except BaseException:
        running.give(site.site_id)
        raise
    headers = {
        "Tagwerk-Cursor": cursor.encode(table, site.site_id, end),
        "Tagwerk-More": "true" if more else "false",
        "Cache-Control": "no-store",
        **disposition,
    }
    body = Relay(pieces, first, lambda: running.give(site.site_id))
    return ClosingResponse(body, headers=headers, media_type=media, deadline=QUERY_SECONDS)
