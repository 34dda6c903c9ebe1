"""Request and response compression, as ClickHouse's HTTP interface does it."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

import lz4.frame

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd

from collector.sqlhttp.config import STEP
from collector.sqlhttp.errors import SqlError
from collector.web.qvalues import weighted


class _Inflater(Protocol):
    eof: bool
    unused_data: bytes
    needs_input: bool

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _ZlibInflater:
    """zlib's decompressor with the interface of lz4's and zstd's."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib, told by the header
        self._tail = b""
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        out = self._z.decompress(self._tail + data, max(max_length, 0))
        self._tail = self._z.unconsumed_tail
        self.needs_input = not self._tail and (max_length < 0 or len(out) < max_length)
        return out

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data


INFLATERS: dict[str, Callable[[], _Inflater]] = {
    "gzip": _ZlibInflater,
    "x-gzip": _ZlibInflater,
    "deflate": _ZlibInflater,
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "zstd": zstd.ZstdDecompressor,
}


class Decoder:
    """Decompresses a body of one or more frames (clickhouse-connect sends a frame per block)."""

    def __init__(self, new: Callable[[], _Inflater]) -> None:
        self._new = new
        self._inflater: _Inflater | None = None

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while data or (self._inflater and not self._inflater.needs_input):
                self._inflater = self._inflater or self._new()
                out = self._inflater.decompress(data, STEP)
                data = b""
                if out:
                    yield out
                if self._inflater.eof:
                    data, self._inflater = self._inflater.unused_data, None
        except (zlib.error, RuntimeError, zstd.ZstdError, EOFError) as exc:
            raise SqlError.of(271, f"Cannot decompress the request body: {exc}") from None

    def finish(self) -> None:
        if self._inflater is not None:
            raise SqlError.of(271, "Cannot decompress the request body: it ends mid-frame")


def _zlib(data: bytes | memoryview, level: int, wbits: int) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return z.compress(data) + z.flush()


DEFLATERS: dict[str, Callable[[bytes | memoryview], bytes]] = {
    "gzip": lambda data: _zlib(data, 3, 16 + zlib.MAX_WBITS),  # level 3 as ClickHouse's default
    "deflate": lambda data: _zlib(data, 3, zlib.MAX_WBITS),
    "zstd": zstd.compress,
    "lz4": lz4.frame.compress,
}


def response_encoding(accept: str) -> str | None:
    """The first encoding the client lists that we support (clickhouse-connect lists lz4 first)."""
    for item, q in weighted(accept):
        name = item.lower().removeprefix("x-")
        if name in DEFLATERS and q > 0:
            return name
    return None
