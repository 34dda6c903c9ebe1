"""The spool: hits are on disk before the collector answers 2xx.

Segment files ``NNNNNNNNNNNNNNNN.seg`` hold records ``<length u32><crc32 u32><payload>``.
Requests hand their record to ``submit``/``append`` and wait; one writer thread writes
everything that queued up while the previous write ran in one synchronous (``O_DSYNC``)
write (group commit), then wakes all those requests; after a commit of several records it
waits ``commit_delay`` so that the next one gathers more (as PostgreSQL's commit_delay).

The segment being written has a zero-filled tail ahead of its records, so such a write
changes no file metadata; a length of 0 marks the end of the records. A torn record at the
tail (a crash mid-write) was never acknowledged and is cut off, with the zeros, when the
spool is opened again; writing then continues in a new segment.

A record whose checksum fails with intact records after it is damage (a disk fault), not a
torn write: it alone is lost, as a logged error, and reading goes on at the next intact
record (found by the damaged record's length, else where a record may begin), so that
one bad sector costs neither the acknowledged records behind it nor the flusher's progress.

The flusher reads records between its checkpoint and the durable end, inserts them, then
moves the checkpoint (``checkpoint.json``) forward and deletes segments behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from collector.files import fsync_dir, write_atomic

log = logging.getLogger("tagwerk.spool")

HEADER = struct.Struct("<II")
ZERO_STEP = 1024 * 1024
# Called on the submitting event loop once a record is durable (None) or failed.
Done = Callable[[Exception | None], None]
MAX_RECORD = 64 * 1024 * 1024
# Where a record may begin past a damaged header: a length's last byte (little-endian, at
# most MAX_RECORD), the checksum, and a payload's first byte (records of
# collector/spool/record.py begin with "{"). A payload's own bytes are JSON, which holds no
# such low byte, so the search skips over them in C.
_RECORD_START = re.compile(rb"[\x00-\x04].{4}\{", re.S)
_NONZERO = re.compile(rb"[^\x00]")
# A segment is finished when it is this old, whatever its size: the flusher deletes the
# segments behind it, so a hit leaves the collector's disk about this long after it was
# written (once in ClickHouse), where a quiet site would fill 64 MB in weeks. An erased
# person's or an expired hit must not outlive its row in ClickHouse by more than that.
SEGMENT_SECONDS = 3600.0


class Pos(NamedTuple):
    segment: int
    offset: int


class SpoolFull(Exception):
    """Unflushed data reached the disk limit: answer 503 and let senders retry."""


class SpoolError(Exception):
    """The spool could not write (disk full, I/O error)."""


@dataclass(frozen=True)
class Checkpoint:
    flushed: Pos
    # The batch being inserted: replayed with the same bounds and token after a crash.
    pending: Pos | None = None


def _name(segment: int) -> str:
    return f"{segment:016d}.seg"


class Spool:
    def __init__(
        self, directory: Path, segment_bytes: int, max_bytes: int, commit_delay: float = 0.0,
        segment_seconds: float = SEGMENT_SECONDS,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        if not segment_seconds > 0:
            raise ValueError(f"a spool segment's age limit must be positive, not {segment_seconds}")
        self.segment_seconds = segment_seconds
        self.max_bytes = max_bytes
        self.commit_delay = commit_delay
        self.id = self._identity()
        self.checkpoint = self._read_checkpoint()
        # Guards what the backlog is counted from (sizes, bytes written, the checkpoint):
        # taken by the writer and the flusher, never by the event loop.
        self._count_lock = threading.Lock()
        self._recover()
        # Where the records of each segment end; only the writer changes the newest one's.
        self._sizes = {n: (self.dir / _name(n)).stat().st_size for n in self.segments()}
        newest = max(self._sizes, default=max(self.checkpoint.flushed.segment, 1))
        # Writing always goes to a fresh segment: one with a zeroed tail ahead (see _open).
        self._open(newest + 1 if self._sizes.get(newest) else newest)
        # SimpleQueue is implemented in C: a put costs the event loop almost nothing, where
        # a Condition or Event (pure Python) cost a tenth of a pixel hit.
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Each counter has a single writer (event loop / writer thread): no lock needed.
        self._enqueued = 0
        self._written = 0
        self._recount()
        self._closing = False
        self.fsyncs = 0
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()

    # -- state on disk ------------------------------------------------------------------

    def _identity(self) -> str:
        """A random id made with the spool directory. Positions alone do not name a batch:
        two collectors (or a spool made anew) would both start at 1:0, and ClickHouse
        would take the second batch for a replay of the first and drop it."""
        path = self.dir / "id"
        if not path.exists():
            write_atomic(path, uuid.uuid4().hex, durable=True)
        return path.read_text().strip()

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _read_checkpoint(self) -> Checkpoint:
        path = self.dir / "checkpoint.json"
        if not path.exists():
            first = self.segments()
            return Checkpoint(Pos(first[0] if first else 1, 0))
        try:  # written atomically: damaged only by something else (a disk fault, a hand)
            data = json.loads(path.read_text())
            pending = _position(data["pending"]) if data.get("pending") else None
            return Checkpoint(_position(data["flushed"]), pending)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SpoolError(
                f"{path} is damaged ({exc}): it says which hits are in ClickHouse. Restore "
                "it, or remove it to insert every spool file again (hits without a "
                "sender's event_id that were already inserted are then stored twice)"
            ) from None

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        write_atomic(self.dir / "checkpoint.json", json.dumps(
            {"flushed": list(checkpoint.flushed),
             "pending": list(checkpoint.pending) if checkpoint.pending else None}), durable=True)
        with self._count_lock:
            self.checkpoint = checkpoint
            self._recount()

    def _recover(self) -> None:
        """Cut what follows the last whole record off the newest segment: the zeroed tail
        of a segment that was being written, and a torn record (never acknowledged)."""
        segments = self.segments()
        if not segments:
            return
        last = self.dir / _name(segments[-1])
        good = 0
        with open(last, "rb") as f:
            data = f.read()
        damage: list[tuple[int, int]] = []
        for end, _payload in _parse(data, damage):
            good = end
        torn = len(data[good:].rstrip(b"\0"))
        for start, end in damage:
            if end <= good:  # intact records follow: the reader skips it (and says so)
                log.error("spool: %s damaged at %d: %d bytes will be skipped",
                          last.name, start, end - start)
            elif _whole(data, start):  # the last record, acknowledged: not a torn write
                log.error("spool: %s damaged at %d: its last record is lost", last.name,
                          start)
                torn = 0
        if good < len(data):
            if torn:
                log.warning("spool: cutting %d torn bytes off %s", torn, last.name)
            with open(last, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())

    # -- appending ------------------------------------------------------------------------

    def unflushed_bytes(self) -> int:
        """Bytes accepted but not yet in ClickHouse: queued, or on disk past the checkpoint."""
        return self._enqueued + self._backlog

    def _recount(self) -> None:
        """``_backlog``: bytes on disk past the checkpoint, less those written (queued ones
        are ``_enqueued`` less ``_written``). It changes when the checkpoint moves or a write
        fails; kept here so that ``submit`` reads one number per hit instead of summing the
        segments' sizes. Called with ``_count_lock`` held (or before the writer starts)."""
        flushed = self.checkpoint.flushed
        on_disk = sum(size for n, size in list(self._sizes.items()) if n >= flushed.segment)
        self._backlog = on_disk - flushed.offset - self._written

    def submit(
        self, payload: bytes, done: Done, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Queue ``payload``; ``done(None)`` runs on ``loop`` (by default the running one)
        once it is fsynced, ``done(SpoolError)`` if the write failed. Raises SpoolFull or
        SpoolError at once when the record cannot be queued. A callback rather than a
        future: the pixel fast path (fasthttp.py) answers from it without a task per
        request. (It passes its loop: asking for the running loop costs a getpid call.)"""
        if not 0 < len(payload) <= MAX_RECORD:
            raise ValueError("a record holds 1 byte to MAX_RECORD bytes")
        if self._closing:
            raise SpoolError("spool is closing")
        record = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self._enqueued + self._backlog + len(record) > self.max_bytes:  # unflushed_bytes()
            raise SpoolFull()
        self._enqueued += len(record)
        self._queue.put((record, done, loop or asyncio.get_running_loop()))

    async def append(self, payload: bytes) -> None:
        """Return once ``payload`` is fsynced. Raises SpoolFull or SpoolError."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(error: Exception | None) -> None:
            if future.done():  # the request was cancelled meanwhile
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self.submit(payload, done, loop)
        await future

    def _write_loop(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=min(60.0, self.segment_seconds / 4))]
            except queue.Empty:
                self._finish_if_old()
                continue
            while True:  # everything that queued up during the last fsync: one group commit
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:  # close() was called and everything before it is written
                batch.pop()
                self._write(batch)
                return
            self._write(batch)
            if len(batch) > 1 and self.commit_delay:
                # Company in this commit: others are sending, let the next one gather more.
                # Each commit costs the event loop two GIL hand-offs and the disk a flush:
                # 2 ms here gave a quarter more hits per second on one core (bench/load.py),
                # where a lone hit (light traffic) never waits.
                time.sleep(self.commit_delay)

    def _write(self, batch: list[tuple[bytes, Done, asyncio.AbstractEventLoop]]) -> None:
        if not batch:
            return
        data = b"".join(r for r, _, _ in batch)
        error: Exception | None = None
        try:
            self._zero_ahead(len(data))
            # O_DSYNC: the write returns once the data is on disk (one call, one release of
            # the GIL, where write + fdatasync took two).
            if os.pwrite(self._fd, data, self._end) != len(data):
                raise OSError("short write")
            self.fsyncs += 1
        except OSError as exc:
            # Nothing past _end counts: the next write goes over whatever part was written.
            log.error("spool: write failed: %s", exc)
            error = SpoolError(str(exc))
        with self._count_lock:  # the sizes and the bytes written move together
            if error is None:
                self._end += len(data)
                self._sizes[self._segment] = self._end
            self._written += len(data)
            if error is not None:
                self._recount()  # the failed bytes are no longer queued, nor on disk
        if error is None:
            self.durable = Pos(self._segment, self._end)
            if self._end >= self.segment_bytes:
                self._rotate()
            else:
                self._finish_if_old()
        # One wake-up per event loop, not per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[Done]] = {}
        for _, done, loop in batch:
            by_loop.setdefault(loop, []).append(done)
        for loop, callbacks in by_loop.items():
            loop.call_soon_threadsafe(_settle, callbacks, error)

    def _rotate(self) -> None:
        """Finish the segment being written and start the next; if the next cannot be
        created (disk full, say), keep writing this one and try again after the next write
        rather than stop the writer."""
        finished = (self._fd, self._zero_fd, self._end)
        try:
            self._open(self._segment + 1)
        except OSError as exc:
            log.error("spool: cannot start a new segment, the current one grows: %s", exc)
            return
        self._seal(*finished)

    def _finish_if_old(self) -> None:
        """Start the next segment if this one holds records and is ``segment_seconds`` old
        (the writer thread's: it owns the files)."""
        if self._end and time.monotonic() - self._opened >= self.segment_seconds:
            self._rotate()

    def _open(self, segment: int) -> None:
        """Start writing ``segment`` (new, or empty)."""
        path = self.dir / _name(segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o600)
        try:
            zero_fd = os.open(path, os.O_WRONLY)
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._zero_fd = fd, zero_fd
        self._segment, self._end, self._zeroed = segment, 0, 0
        self._opened = time.monotonic()
        self._sizes[segment] = 0
        # Where durable data ends. The flusher polls it: waking it on every fsync through
        # a Condition would cost the event loop more than the poll costs the flusher.
        self.durable = Pos(segment, 0)

    def _zero_ahead(self, size: int) -> None:
        """Keep the segment's file zero-filled and synced past where records will go. A
        synced write over allocated blocks needs no journal commit, where an appending
        write changes the file's size and does: half the time and a third less CPU per
        group commit. Once per ZERO_STEP bytes of records."""
        if self._end + size <= self._zeroed:
            return
        step = max(ZERO_STEP, self._end + size - self._zeroed)
        os.pwrite(self._zero_fd, bytes(step), self._zeroed)
        os.fdatasync(self._zero_fd)
        self._zeroed += step

    def _seal(self, fd: int, zero_fd: int, end: int) -> None:
        """Cut the zeroed tail off a finished segment and close it: a finished segment
        ends where its records end."""
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        except OSError as exc:  # readers stop at the zeros too
            log.error("spool: cutting the zeros off a finished segment failed: %s", exc)
        os.close(fd)
        os.close(zero_fd)

    # -- reading, for the flusher -----------------------------------------------------------

    def read(self, start: Pos, end: Pos, max_bytes: int) -> tuple[list[bytes], Pos]:
        """Whole payloads from ``start`` towards ``end``, about ``max_bytes`` at most, and
        the position after the last one returned."""
        out: list[bytes] = []
        pos, size = start, 0
        while pos < end and size < max_bytes:
            complete = pos.segment < end.segment  # an older segment: read to its end
            path = self.dir / _name(pos.segment)
            try:
                with open(path, "rb") as f:
                    f.seek(pos.offset)
                    data = f.read() if complete else f.read(end.offset - pos.offset)
            except FileNotFoundError:
                data = b""
            consumed = 0
            damage: list[tuple[int, int]] = []
            for consumed, payload in _parse(data, damage):  # noqa: B007 (used after)
                out.append(payload)
                size += len(payload)
                if size >= max_bytes:
                    break
            for begin, stop in damage:  # a disk fault: skipped rather than wedge the flusher
                log.error("spool: %s damaged at %d: %d bytes skipped",
                          path.name, pos.offset + begin, stop - begin)
            if size >= max_bytes or not complete:
                if size < max_bytes and damage:  # damage up to ``end``: read past it
                    consumed = max(consumed, damage[-1][1])
                pos = Pos(pos.segment, pos.offset + consumed)
                break
            pos = Pos(pos.segment + 1, 0)
        return out, pos

    def release(self, upto: Pos) -> None:
        """Everything before ``upto`` is in ClickHouse: checkpoint and drop old segments."""
        self.write_checkpoint(Checkpoint(upto))
        for segment in self.segments():
            if segment < upto.segment:
                (self.dir / _name(segment)).unlink(missing_ok=True)
                with self._count_lock:  # (behind the checkpoint: not counted)
                    self._sizes.pop(segment, None)

    def close(self) -> None:
        self._closing = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._seal(self._fd, self._zero_fd, self._end)


def _position(value: object) -> Pos:
    """A checkpoint's [segment, offset]: two whole numbers, not negative."""
    if not (isinstance(value, list) and len(value) == 2
            and all(type(n) is int and n >= 0 for n in value)):
        raise ValueError(f"{value!r} is no position")
    return Pos(*value)


def _parse(
    data: bytes, damage: list[tuple[int, int]] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield (end offset, payload) of each whole, intact record in ``data``, up to its end
    or the zeroed tail. A record that is not intact ends the parse, unless ``damage`` is
    given: then the span from it to the next intact record (or to the end of ``data``, if
    none follows) is noted there as (start, end) and skipped."""
    offset = 0
    while offset < len(data):
        end = _intact(data, offset)
        if end:
            yield end, data[offset + HEADER.size : end]
            offset = end
            continue
        if damage is None or _zeros(data, offset):
            return
        after = _next_record(data, offset)
        damage.append((offset, after))
        offset = after


def _intact(data: bytes, offset: int) -> int:
    """The end of the intact record at ``offset``, or 0."""
    if offset + HEADER.size > len(data):
        return 0
    length, crc = HEADER.unpack_from(data, offset)
    end = offset + HEADER.size + length
    if not length or length > MAX_RECORD or end > len(data):  # 0: the zeroed tail
        return 0
    return end if zlib.crc32(memoryview(data)[offset + HEADER.size : end]) == crc else 0


def _zeros(data: bytes, offset: int) -> bool:
    """Whether only zeros follow ``offset`` (searched up to the first byte that is not)."""
    return _NONZERO.search(data, offset) is None


def _next_record(data: bytes, damaged: int) -> int:
    """Where reading goes on after the record at ``damaged`` failed its checksum: the first
    intact record after it (not where its length leads: a damaged length may lead past
    intact records), else the end of ``data``."""
    at = damaged + 1
    while found := _RECORD_START.search(data, at + 3):
        start = found.start() - 3
        if _intact(data, start):
            return start
        at = start + 1
    return len(data)


def _whole(data: bytes, offset: int) -> bool:
    """Whether the record at ``offset`` was written whole: its length leads within ``data``
    to the last byte of a record (records of collector/spool/record.py end with a line
    break), where a torn write ends in the zeroed tail."""
    length = HEADER.unpack_from(data, offset)[0] if offset + HEADER.size <= len(data) else 0
    end = offset + HEADER.size + length
    return 0 < length <= MAX_RECORD and end <= len(data) and data[end - 1] == 0x0A


def _settle(callbacks: list[Done], error: Exception | None) -> None:
    for done in callbacks:
        try:
            done(error)
        except Exception:  # one broken answer must not keep the others waiting
            log.exception("spool: completion callback failed")
