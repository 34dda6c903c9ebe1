"""The spool: hits are on disk before the collector answers 2xx.

Segment files ``NNNNNNNNNNNNNNNN.seg`` hold records ``<length u32><crc32 u32><payload>``.
Requests hand their record to ``append`` and wait; one writer thread writes everything
that queued up while the previous fsync ran and fsyncs once (group commit), then wakes
all those requests. A torn record at the tail (a crash mid-write) was never acknowledged
and is cut off when the spool is opened again.

The flusher reads records between its checkpoint and the durable end, inserts them, then
moves the checkpoint (``checkpoint.json``) forward and deletes segments behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("tagwerk.spool")

HEADER = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: Path, segment_bytes: int, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.checkpoint = self._read_checkpoint()
        self._recover()
        segments = self.segments()
        self._segment = segments[-1] if segments else max(self.checkpoint.flushed.segment, 1)
        self._file = open(self.dir / _name(self._segment), "ab")  # noqa: SIM115 (kept open)
        self.durable = Pos(self._segment, self._file.tell())
        self._queue: list[tuple[bytes, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._durable_cond = threading.Condition()
        self._closing = False
        # Recomputed by the writer after each write; a stat() per request would cost too much.
        self._unflushed_cached = self.unflushed_bytes()
        self._writer = threading.Thread(target=self._write_loop, name="spool-writer", daemon=True)
        self._writer.start()
        self.fsyncs = 0

    # -- state on disk ------------------------------------------------------------------

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _read_checkpoint(self) -> Checkpoint:
        path = self.dir / "checkpoint.json"
        if not path.exists():
            first = self.segments()
            return Checkpoint(Pos(first[0] if first else 1, 0))
        data = json.loads(path.read_text())
        pending = Pos(*data["pending"]) if data.get("pending") else None
        return Checkpoint(Pos(*data["flushed"]), pending)

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        tmp = self.dir / "checkpoint.json.tmp"
        with open(tmp, "w") as f:
            json.dump(
                {"flushed": list(checkpoint.flushed),
                 "pending": list(checkpoint.pending) if checkpoint.pending else None},
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "checkpoint.json")
        _fsync_dir(self.dir)
        self.checkpoint = checkpoint

    def _recover(self) -> None:
        """Cut a torn tail record off the newest segment; it was never acknowledged."""
        segments = self.segments()
        if not segments:
            return
        last = self.dir / _name(segments[-1])
        good = 0
        with open(last, "rb") as f:
            data = f.read()
        for end, _payload in _parse(data):
            good = end
        if good < len(data):
            log.warning("spool: cutting %d torn bytes off %s", len(data) - good, last.name)
            with open(last, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())

    # -- appending ------------------------------------------------------------------------

    def unflushed_bytes(self) -> int:
        total = self._queued_bytes
        flushed = self.checkpoint.flushed
        for segment in self.segments():
            if segment < flushed.segment:
                continue
            try:
                size = (self.dir / _name(segment)).stat().st_size
            except FileNotFoundError:
                continue
            total += size - (flushed.offset if segment == flushed.segment else 0)
        return total

    async def append(self, payload: bytes) -> None:
        """Return once ``payload`` is fsynced. Raises SpoolFull or SpoolError."""
        if len(payload) > MAX_RECORD:
            raise ValueError("record too large")
        record = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._closing:
                raise SpoolError("spool is closing")
            if self._queued_bytes + self._unflushed_cached + len(record) > self.max_bytes:
                raise SpoolFull()
            self._queue.append((record, future, loop))
            self._queued_bytes += len(record)
            self._cond.notify()
        await future

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                batch, self._queue = self._queue, []
                self._queued_bytes -= sum(len(r) for r, _, _ in batch)
            error: Exception | None = None
            start = self._file.tell()
            try:
                self._file.write(b"".join(r for r, _, _ in batch))
                self._file.flush()
                os.fdatasync(self._file.fileno())
                self.fsyncs += 1
            except OSError as exc:
                log.error("spool: write failed: %s", exc)
                error = SpoolError(str(exc))
                try:  # leave no half record behind the last acknowledged one
                    self._file.truncate(start)
                    self._file.seek(start)
                except OSError:
                    pass
            else:
                with self._durable_cond:
                    self.durable = Pos(self._segment, self._file.tell())
                    self._durable_cond.notify_all()
                if self._file.tell() >= self.segment_bytes:
                    self._rotate()
            self._unflushed_cached = self.unflushed_bytes()
            for _, future, loop in batch:
                loop.call_soon_threadsafe(_settle, future, error)

    def _rotate(self) -> None:
        self._file.close()
        self._segment += 1
        self._file = open(self.dir / _name(self._segment), "ab")  # noqa: SIM115
        _fsync_dir(self.dir)
        with self._durable_cond:
            self.durable = Pos(self._segment, 0)
            self._durable_cond.notify_all()

    def wait_durable(self, beyond: Pos, timeout: float) -> Pos:
        """Block until the durable end moves past ``beyond`` (or timeout); return it."""
        with self._durable_cond:
            if self.durable == beyond:
                self._durable_cond.wait(timeout)
            return self.durable

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
            for consumed, payload in _parse(data):  # noqa: B007 (consumed is used after)
                out.append(payload)
                size += len(payload)
                if size >= max_bytes:
                    break
            if size >= max_bytes or not complete:
                pos = Pos(pos.segment, pos.offset + consumed)
                if consumed < len(data) and size < max_bytes:
                    raise SpoolError(f"{path.name}: damaged record at {pos.offset}")
                break
            if consumed < len(data):
                # Damage inside a finished segment (a disk fault): skip it rather than wedge.
                log.error("spool: %s damaged at %d; %d bytes skipped",
                          path.name, pos.offset + consumed, len(data) - consumed)
            pos = Pos(pos.segment + 1, 0)
        return out, pos

    def release(self, upto: Pos) -> None:
        """Everything before ``upto`` is in ClickHouse: checkpoint and drop old segments."""
        self.write_checkpoint(Checkpoint(upto))
        for segment in self.segments():
            if segment < upto.segment:
                (self.dir / _name(segment)).unlink(missing_ok=True)
        self._unflushed_cached = self.unflushed_bytes()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._writer.join(timeout=10)
        self._file.close()


def _parse(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (end offset, payload) of each whole, intact record in ``data``."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if length > MAX_RECORD or end > len(data):
            return
        payload = data[offset + HEADER.size : end]
        if zlib.crc32(payload) != crc:
            return
        yield end, payload
        offset = end


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
