"""Request bodies, bounded and decompressed in steps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import anyio.from_thread
import anyio.to_thread

from collector.sqlhttp.compress import Decoder
from collector.sqlhttp.errors import SqlError


class Body:
    """The request body, decompressed, pulled from the event loop by the worker thread."""

    def __init__(
        self, pull: Callable[[], bytes | None], decoder: Decoder | None, limit: int
    ) -> None:
        self._pull, self._decoder, self._limit = pull, decoder, limit
        self._size = 0
        self._chunks = self._generate()

    def _generate(self) -> Iterator[bytes]:
        while (raw := self._pull()) is not None:
            for chunk in self._decoder.feed(raw) if self._decoder else (raw,):
                self._size += len(chunk)
                if self._size > self._limit:
                    raise SqlError.of(229, f"The request body is larger than {self._limit} bytes")
                yield chunk
        if self._decoder:
            self._decoder.finish()

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


def puller(stream: AsyncIterator[bytes]) -> Callable[[], bytes | None]:
    """Reads the next chunk of ``stream`` from a worker thread, through the event loop."""

    def pull() -> bytes | None:
        return anyio.from_thread.run(_receive, stream)

    return pull
