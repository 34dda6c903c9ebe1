"""Request bodies, bounded and decompressed in steps."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio.from_thread
import anyio.to_thread

from collector.sqlhttp.compress import Decoder
from collector.sqlhttp.errors import SqlError
from collector.web.inflight import QUERIES, Charge


class Body:
    """The request body, decompressed: its start read ahead in the event loop
    (``prefetch``), the rest pulled from the event loop by the worker thread."""

    def __init__(
        self, pull: Callable[[], bytes | None], decoder: Decoder | None, limit: int
    ) -> None:
        self._pull, self._decoder, self._limit = pull, decoder, limit
        self._size = 0
        self._ahead: deque[bytes] = deque()  # decoded by prefetch, not yet read
        self._current: Iterator[bytes] | None = None  # a chunk's decoding prefetch left
        self._charge: Charge | None = None  # what is read ahead, against inflight.QUERIES
        self._ended = False
        self._chunks = self._generate()

    async def prefetch(self, receive: Callable[[], Awaitable[bytes | None]], most: int) -> None:
        """Read ahead until ``most`` decoded bytes or the end: a query's text is read so
        before a worker thread and a reader's slot are taken for it, since a client can
        send it as slowly as it likes. A chunk is decoded only as far as needed; what is
        read ahead counts against the SQL port's budget for it (``inflight.QUERIES``), until
        it is read."""
        if self._charge is None:
            self._charge = Charge(QUERIES)
        while not self._ended and self._size < most:
            if self._current is None:
                raw = await receive()
                if raw is None:
                    self._end()
                    break
                self._current = self._decoded(raw)
            for chunk in self._current:
                self._ahead.append(chunk)
                if not self._charge.hold(self._size):
                    raise SqlError.of(202, QUERIES.refusal())
                if self._size >= most:
                    break
            else:
                self._current = None

    def _generate(self) -> Iterator[bytes]:
        while self._ahead:
            yield self._ahead.popleft()
        if self._charge is not None:
            self._charge.release()
        if self._current is not None:
            yield from self._current
            self._current = None
        while not self._ended:
            raw = self._pull()
            if raw is None:
                self._end()
            else:
                yield from self._decoded(raw)

    def _decoded(self, raw: bytes) -> Iterator[bytes]:
        for chunk in self._decoder.feed(raw) if self._decoder else (raw,):
            self._size += len(chunk)
            if self._size > self._limit:
                raise SqlError.of(229, f"The request body is larger than {self._limit} bytes")
            yield chunk

    def _end(self) -> None:
        self._ended = True
        if self._decoder:
            self._decoder.finish()

    @property
    def ended(self) -> bool:
        """The body was received whole."""
        return self._ended

    def close(self) -> None:
        """What was read ahead and not read goes, with its charge (at the request's end: a
        Body and its generator are a cycle, which the garbage collector would free late)."""
        self._ahead.clear()
        if self._charge is not None:
            self._charge.release()

    def read(self, size: int) -> bytes:
        """At least ``size`` bytes from where the body is, or all of it if it is shorter."""
        buf = bytearray()
        for chunk in self._chunks:
            buf += chunk
            if len(buf) >= size:
                break
        return bytes(buf)

    def rest(self) -> Iterator[bytes]:
        return self._chunks


def no_body() -> None:
    return None


async def _receive(stream: AsyncIterator[bytes]) -> bytes | None:
    return await anext(stream, None)


def receiver(stream: AsyncIterator[bytes]) -> Callable[[], Awaitable[bytes | None]]:
    """Reads the next chunk of ``stream`` in the event loop."""

    async def receive() -> bytes | None:
        return await _receive(stream)

    return receive


def puller(stream: AsyncIterator[bytes]) -> Callable[[], bytes | None]:
    """Reads the next chunk of ``stream`` from a worker thread, through the event loop."""

    def pull() -> bytes | None:
        return anyio.from_thread.run(_receive, stream)

    return pull
