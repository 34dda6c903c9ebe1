"""Event ids: UUIDv7 (RFC 9562), time-ordered, without a system call per id.

``uuid.uuid4()`` reads ``os.urandom`` on every call, a tenth of the cost of a pixel hit.
Here the 74 bits after the timestamp start at a random value per process and count up
(RFC 9562 §6.2, method 2), so ids stay unique within a process and, with 74 random bits,
across processes and machines.

Every hit gets one, so the text is built cheaply: the part before the variant (time,
version, the counter's top 12 bits) changes at most once a millisecond and is kept; only
the last 16 hex digits are formatted per id (1.0 instead of 2.2 us).
"""

from __future__ import annotations

import itertools
import os
import secrets
import time

_RAND_BITS = 74
_MASK = (1 << _RAND_BITS) - 1
_LOW = (1 << 62) - 1  # rand_b: the counter's low 62 bits, after the variant's two
_VARIANT = 0b10 << 62
# next() of a count is one C call, atomic under the GIL: no lock for concurrent callers.
_counter = itertools.count(secrets.randbits(_RAND_BITS))
_head: tuple[int, int, str] = (-1, -1, "")  # (ms, rand_a, the text up to the variant)


def _reseed() -> None:
    global _counter, _head
    _counter = itertools.count(secrets.randbits(_RAND_BITS))
    _head = (-1, -1, "")


os.register_at_fork(after_in_child=_reseed)


def uuid7() -> str:
    global _head
    rand = next(_counter) & _MASK
    ms = time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF
    rand_a = rand >> 62
    head_ms, head_a, head = _head  # one read: another thread may replace it meanwhile
    if ms != head_ms or rand_a != head_a:
        stamp = f"{ms:012x}"
        head = f"{stamp[:8]}-{stamp[8:]}-7{rand_a:03x}-"
        _head = (ms, rand_a, head)
    tail = f"{_VARIANT | rand & _LOW:016x}"
    return f"{head}{tail[:4]}-{tail[4:]}"
