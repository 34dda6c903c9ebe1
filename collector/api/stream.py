"""``GET /api/v1/sites/{site}/stream?events=purchase,add_to_cart``: server-sent events of a
site's rows as they are stored.

Each row is one event: ``id:`` its export cursor (``cursor.py``), ``data:`` the row as one
JSON object (the columns of the export, times as ISO 8601 UTC). A client that reconnects
with ``Last-Event-ID`` (or ``since=``, any export cursor) gets every row after it exactly
once; without either, the stream starts with rows stored from now on. ``retry:`` comes first,
``: ping`` comments every ``heartbeat`` seconds; after ``max_seconds`` the answer ends and
the client reconnects where it was.

One poller per site serves all its subscribers: every ``poll`` seconds it reads the table's
highest block number (``system.parts``, shared by all sites' pollers), and when it moved,
the site's rows up to it, and hands that batch to each subscriber's queue. A subscriber that
resumes from an older cursor, or whose queue overflowed (a slow client), reads on its own
from its position up to the poller's, then takes the shared batches again. At most
``per_site`` streams of a site and ``total`` streams in all.

Memory is bounded in bytes, not rows (a row may hold 128 KB of props): a read stops at about
``batch_bytes`` (a catch-up step's at ``catch_up_bytes``); a subscriber's queued and unsent
rows are at most ``queue_bytes``, and all subscribers' at most ``held_bytes`` (a live batch
past either empties the queue at once, a catch-up read waits). Probe 62: queues of 64
batches of 2,000 rows, six streams that read nothing under a flood of hits took the
process from 0.5 to 2.6 GB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from collector.api import cursor, cursor_range
from collector.api.access import READ, ApiError, keyed
from collector.api.cursor import LAST, Position
from collector.api.export import ClosingResponse, head_only, row_filter
from collector.api.query import params
from collector.service import Collector
from collector.sites import Site
from collector.storage import StorageError, Store

log = logging.getLogger("tagwerk.api.stream")

# The engine stops a read at the block past max_result_bytes (blocks of 64 rows: at most
# 8 MB past it; 64-row blocks cost a 16,000-row read 52 ms, 256-row ones 33 ms).
FEED_SETTINGS = (" SETTINGS date_time_output_format = 'iso', max_execution_time = 60, "
                 "result_overflow_mode = 'break', max_block_size = 64, "
                 "max_result_bytes = {max_bytes:UInt64}")
MAX_HEADER = 128
_POSITION = re.compile(rb'\{"b":"?(\d+)"?,"o":"?(\d+)"?,')
SEND_MESSAGES = 256  # rows per send (about 150 KB), and at most SEND_BYTES (rows up to 128 KB)
SEND_BYTES = 256 << 10
STREAM_GRACE = 60  # s past max_seconds, for the last send: then the answer is cut


@dataclass(frozen=True)
class StreamConfig:
    heartbeat: float = float(os.environ.get("TAGWERK_STREAM_HEARTBEAT", "15"))
    poll: float = 0.25
    retry_ms: int = 3000
    per_site: int = 8
    total: int = 200
    max_seconds: float = 3600.0
    batch_rows: int = 2000
    batch_bytes: int = 2 << 20
    queue_bytes: int = 8 << 20
    held_bytes: int = 64 << 20
    # A subscriber behind the poller reads its own steps, each growing 4x up to this many
    # rows: a step reads the positions of every row after its start (the table is sorted by
    # day, not by insert), so 2,000-row steps made a catch-up quadratic. At most
    # ``catch_up_reads`` steps at once: each holds its rows' JSON (~1 KB a row, at most
    # about ``catch_up_bytes``) in memory until they are sent. bench/export.py --stream,
    # 300,000 rows: 51 s before; 9.1-11.5 s (0.12-0.16x the export's rate), RSS +45-131 MB
    # (32,000-row steps: 11.1 s, +153 MB).
    catch_up_rows: int = 16_000
    catch_up_bytes: int = 16 << 20
    catch_up_reads: int = 2


class Row:
    """A row and its position. The poller hands one Row to every subscriber of the site:
    a subscriber's ``events=`` filter parses it once for all of them."""

    __slots__ = ("position", "rest", "_event")

    def __init__(self, position: Position, rest: memoryview) -> None:
        self.position = position
        # The row as one JSON object without its opening brace: a view into the engine's
        # answer, copied once, into the message (a catch-up step holds up to 16,000 rows).
        self.rest = rest
        self._event: str | None = None

    def event(self) -> str:
        if self._event is None:
            self._event = orjson.loads(b"{" + self.rest)["event"]
        return self._event


@dataclass(frozen=True)
class Batch:
    """The site's rows after ``start`` up to ``end``, in an answer of ``size`` bytes."""

    start: Position
    end: Position
    rows: list[Row]
    size: int


def fetch(store: Store, rows: cursor_range.Filter, start: Position, end: Position,
          limit: int, max_bytes: int) -> Batch:
    """At most ``limit`` rows after ``start`` up to ``end``, of about ``max_bytes``; the
    batch ends where they are all the rows there are (the next read's start)."""
    upto, count = cursor_range.feed_end(store, rows, start, end, limit)
    sql, bound = cursor_range.select_feed(rows, start, upto)
    found, out = _read(store, sql + FEED_SETTINGS, {**bound, "max_bytes": max_bytes})
    if len(found) < count:  # the engine stopped past max_bytes
        if not found:  # (rows deleted meanwhile: the poller reads again, a catch-up ends)
            raise StorageError("the feed read no row of a range that has some")
        # "As if the source data ran out": parts read side by side stop each where it was,
        # so the rows up to the last one are all there only if their count says so (else
        # the range is read whole, bounded by ``limit`` rows alone).
        last = found[-1].position
        if cursor_range.count(store, rows, start, last) == len(found):
            return Batch(start, last, found, len(out))
        found, out = _read(store, sql + FEED_SETTINGS, {**bound, "max_bytes": 0})
    return Batch(start, upto, found, len(out))


def _read(store: Store, sql: str, bound: dict[str, Any]) -> tuple[list[Row], bytes]:
    """The feed's rows as the engine wrote them, and its answer (they are views into it)."""
    out = store.query(sql, bound, "JSONEachRow")
    view, found, start_at = memoryview(out), [], 0
    while start_at < len(out):
        # The engine's own line: {"b":1,"o":0,<the row's columns>}; parsing it whole and
        # writing the row again cost more than reading it (and could change its numbers).
        line_end = out.index(b"\n", start_at)
        position = _POSITION.match(out, start_at, line_end)
        if position is None:
            raise StorageError(f"unexpected feed line {out[start_at:start_at + 80]!r}")
        found.append(Row(Position(int(position[1]), int(position[2])),
                         view[position.end():line_end]))
        start_at = line_end + 1
    return found, out


@dataclass(eq=False)
class Subscriber:
    poller: SitePoller
    queue: asyncio.Queue[Batch | None] = field(default_factory=asyncio.Queue)  # None: closed
    lagging: bool = False
    held: int = 0  # bytes of the rows queued for it and being sent to it

    def offer(self, batch: Batch) -> None:
        if self.lagging:
            return  # it reads on its own from where it is
        if not self.poller.hub.hold(self, batch.size):
            self.fall_behind()
            return
        self.queue.put_nowait(batch)

    def fall_behind(self) -> None:
        """Let go of the queued rows now (a client that does not read would keep them until
        it reads again); it reads on its own from where it is."""
        self.lagging = True
        closed = False
        while not self.queue.empty():
            batch = self.queue.get_nowait()
            if batch is None:
                closed = True
            else:
                self.poller.hub.free(self, batch.size)
        if closed:
            self.queue.put_nowait(None)


@dataclass(eq=False)
class SitePoller:
    hub: Hub
    site_id: str
    mark: Position  # every row up to here was handed out
    subscribers: set[Subscriber] = field(default_factory=set)
    task: asyncio.Task | None = None

    async def run(self) -> None:
        config, backoff = self.hub.config, 0.5
        rows = cursor_range.Filter(self.site_id)
        while self.subscribers:
            try:
                top = await self.hub.top()
                more = False
                end = Position(top, LAST)
                if end > self.mark and all(s.lagging for s in self.subscribers):
                    self.mark = end  # each reads on its own up to here: no batch to read
                elif end > self.mark:
                    batch = await anyio.to_thread.run_sync(
                        fetch, self.hub.store, rows, self.mark, end, config.batch_rows,
                        config.batch_bytes)
                    more, self.mark = batch.end < end, batch.end
                    for subscriber in list(self.subscribers):
                        subscriber.offer(batch)
                    del batch  # (its rows live in the queues only)
                backoff = 0.5
                if not more:
                    await asyncio.sleep(config.poll)
            except Exception as exc:  # keep polling: the subscribers wait on this task
                if isinstance(exc, StorageError):
                    log.warning("stream of %s: %s", self.site_id, exc)
                else:
                    log.exception("stream of %s", self.site_id)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)


@dataclass(eq=False)
class Hub:
    """The pollers and subscribers of one app (one collector)."""

    store: Store
    config: StreamConfig
    pollers: dict[str, SitePoller] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    _top: tuple[float, int] = (0.0, 0)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _catching_up: asyncio.Semaphore | None = None
    closed: bool = False  # the server is stopping: every stream ends, none begins
    held: int = 0  # bytes of rows queued and being sent, all subscribers together
    _freed: asyncio.Event = field(default_factory=asyncio.Event)

    def hold(self, subscriber: Subscriber, size: int) -> bool:
        """Count ``size`` bytes of rows against the subscriber and the hub, if both have
        room: a subscriber holding nothing always has (it keeps up, and must get on)."""
        if subscriber.held and (subscriber.held + size > self.config.queue_bytes
                                or self.held + size > self.config.held_bytes):
            return False
        self.charge(subscriber, size)
        return True

    def charge(self, subscriber: Subscriber, size: int) -> None:
        subscriber.held += size
        self.held += size

    def free(self, subscriber: Subscriber, size: int) -> None:
        subscriber.held -= size
        self.held -= size
        self._freed.set()

    async def room(self, subscriber: Subscriber, size: int, timeout: float) -> bool:
        """Wait until ``size`` bytes fit under ``held_bytes`` beside what the others hold
        (the subscriber's own queue waits for it), at most ``timeout`` seconds or until the
        hub closes: whether they fit."""
        def fits() -> bool:
            others = self.held - subscriber.held
            return not others or others + size <= self.config.held_bytes

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not fits() and not self.closed:
                    self._freed.clear()
                    await self._freed.wait()
        return fits()

    def close(self) -> None:
        """End every stream now (their clients reconnect with Last-Event-ID)."""
        self.closed = True
        self._freed.set()  # wakes a catch-up waiting for room, which sees ``closed``
        for poller in self.pollers.values():
            for subscriber in poller.subscribers:
                subscriber.queue.put_nowait(None)  # wakes one waiting for a batch

    async def catch_up(self, rows: cursor_range.Filter, start: Position, end: Position,
                       limit: int) -> Batch:
        """A catching-up subscriber's next rows (at most ``catch_up_reads`` at once)."""
        if self._catching_up is None:
            self._catching_up = asyncio.Semaphore(self.config.catch_up_reads)
        async with self._catching_up:
            return await anyio.to_thread.run_sync(fetch, self.store, rows, start, end, limit,
                                                  self.config.catch_up_bytes)

    async def top(self) -> int:
        """The table's highest block number, read at most once per half poll interval."""
        async with self._lock:
            read_at, value = self._top
            if time.monotonic() - read_at >= self.config.poll / 2:
                value = await anyio.to_thread.run_sync(cursor_range.top, self.store)
                self._top = (time.monotonic(), value)
            return value

    def admit(self, site_id: str) -> None:
        if self.closed:
            raise ApiError(503, "the collector is stopping; reconnect in a moment",
                           headers={"Retry-After": "2"})
        if sum(self.count.values()) >= self.config.total:
            raise ApiError(429, f"at most {self.config.total} streams at once; try again later",
                           headers={"Retry-After": "10"})
        if self.count.get(site_id, 0) >= self.config.per_site:
            raise ApiError(429, f"at most {self.config.per_site} streams of a site at once",
                           headers={"Retry-After": "10"})
        self.count[site_id] = self.count.get(site_id, 0) + 1

    def release(self, site_id: str) -> None:
        self.count[site_id] -= 1
        if not self.count[site_id]:
            del self.count[site_id]

    async def join(self, site_id: str) -> Subscriber:
        poller = self.pollers.get(site_id)
        if poller is None:
            mark = Position(await self.top(), LAST)
            poller = self.pollers.get(site_id)  # another subscriber may have come meanwhile
            if poller is None:
                poller = self.pollers[site_id] = SitePoller(self, site_id, mark)
        subscriber = Subscriber(poller)
        poller.subscribers.add(subscriber)
        if poller.task is None:
            poller.task = asyncio.get_running_loop().create_task(poller.run())
        return subscriber

    def leave(self, subscriber: Subscriber) -> None:
        poller = subscriber.poller
        poller.subscribers.discard(subscriber)
        subscriber.fall_behind()  # its queue's bytes go back to the hub
        self.free(subscriber, subscriber.held)  # and those it was sending
        if not poller.subscribers:
            if self.pollers.get(poller.site_id) is poller:
                del self.pollers[poller.site_id]
            if poller.task is not None:
                poller.task.cancel()


def hub_of(request: Request, collector: Collector) -> Hub:
    hub = getattr(request.app.state, "tagwerk_stream_hub", None)
    if hub is None:
        config = getattr(request.app.state, "tagwerk_stream", None) or StreamConfig()
        hub = request.app.state.tagwerk_stream_hub = Hub(collector.store, config)
        collector.when_draining(hub.close)
    return hub


class Feed:
    """An async generator as a body whose ``done`` runs once, even if never read."""

    def __init__(self, events: AsyncGenerator[bytes, None], done: Callable[[], Any]) -> None:
        self._events, self._done, self._closed = events, done, False

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._events.aclose()
            finally:
                self._done()


async def events(hub: Hub, subscriber: Subscriber, rows: cursor_range.Filter, table: bytes,
                 since: Position | None) -> AsyncGenerator[bytes, None]:
    config, poller = hub.config, subscriber.poller
    wanted = frozenset(rows.events)
    deadline = time.monotonic() + config.max_seconds

    def sse(row: Row) -> tuple[bytes, memoryview, bytes]:
        return (b"id: " + cursor.encode(table, rows.site_id, row.position).encode()
                + b"\ndata: {", row.rest, b"\n\n")

    yield f"retry: {config.retry_ms}\n\n".encode()
    position, catch_up = (since, True) if since is not None else (poller.mark, False)
    while (left := deadline - time.monotonic()) > 0 and not hub.closed:
        if catch_up or subscriber.lagging:
            catch_up = False
            subscriber.fall_behind()  # what its queue held is read again below
            subscriber.lagging = False
            target = poller.mark  # batches from here on reach the queue
            step = config.batch_rows
            while position < target and not hub.closed:
                if not await hub.room(subscriber, config.catch_up_bytes, config.heartbeat):
                    yield b": ping\n\n"  # every subscriber's rows wait for slow clients
                    continue
                # Counted before the read waits its turn: others passing room() meanwhile
                # see it (leave() gives it back if the read fails).
                hub.charge(subscriber, config.catch_up_bytes)
                batch = await hub.catch_up(rows, position, target, step)
                hub.charge(subscriber, batch.size - config.catch_up_bytes)
                for piece in pieces(map(sse, batch.rows)):
                    yield piece
                hub.free(subscriber, batch.size)
                position, batch = batch.end, None  # (its rows are let go before the next)
                step = min(step * 4, config.catch_up_rows)
            continue
        try:
            batch = await asyncio.wait_for(subscriber.queue.get(), min(config.heartbeat, left))
        except TimeoutError:
            yield b": ping\n\n"
            continue
        if batch is None:  # the hub closed
            break
        if batch.start <= position < batch.end:
            for piece in pieces(sse(row) for row in batch.rows if row.position > position
                                and (not wanted or row.event() in wanted)):
                yield piece
            position = batch.end
        elif batch.start > position:  # a batch went missing: read on our own
            subscriber.lagging = True
        hub.free(subscriber, batch.size)
        batch = None


def pieces(messages: Iterable[tuple[bytes | memoryview, ...]]) -> Iterator[bytes]:
    """Messages (each in parts) joined into pieces of ``SEND_MESSAGES``, or of about
    ``SEND_BYTES`` (256 rows of 128 KB made a piece of 33 MB, a copy of its batch: probe
    63): one send per message cost a catch-up ~150 us a row (bench/export.py --stream)."""
    batch: list[bytes | memoryview] = []
    count = size = 0
    for message in messages:
        batch.extend(message)
        count, size = count + 1, size + sum(map(len, message))
        if count >= SEND_MESSAGES or size >= SEND_BYTES:
            yield b"".join(batch)
            batch, count, size = [], 0, 0
    if batch:
        yield b"".join(batch)


def _resume_from(request: Request, values: dict[str, str], table: bytes, site: Site
                 ) -> Position | None:
    # since= is checked even when the header wins (an EventSource reconnecting sends both):
    # a bad parameter is a 400 whatever else the request holds.
    since = cursor.decode(values["since"], table, site.site_id) if "since" in values else None
    header = request.headers.get("last-event-id")
    if header is not None:
        if len(header) > MAX_HEADER:
            raise ApiError(400, f"'Last-Event-ID' is longer than {MAX_HEADER} characters",
                           "Last-Event-ID")
        if header:
            return cursor.decode(header, table, site.site_id, "Last-Event-ID")
    return since


@keyed(READ)
async def stream(request: Request, collector: Collector, site: Site) -> Response:
    values = params(request, ("events", "since"))
    rows = row_filter(values, site.site_id)
    table = await anyio.to_thread.run_sync(cursor_range.table_tag, collector.store)
    since = _resume_from(request, values, table, site)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # checked as a GET; no stream taken, none held open
        return head_only("text/event-stream", headers)
    hub = hub_of(request, collector)
    hub.admit(site.site_id)
    try:
        subscriber = await hub.join(site.site_id)
    except BaseException:
        hub.release(site.site_id)
        raise

    def done() -> None:
        hub.leave(subscriber)
        hub.release(site.site_id)

    body = Feed(events(hub, subscriber, rows, table, since), done)
    return ClosingResponse(body, headers=headers, media_type="text/event-stream",
                           deadline=hub.config.max_seconds + STREAM_GRACE)
