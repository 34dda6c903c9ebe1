"""Event ids: UUIDv7 (RFC 9562), time-ordered, without a system call per id.

``uuid.uuid4()`` reads ``os.urandom`` on every call, a tenth of the cost of a pixel hit.
Here the 74 bits after the timestamp start at a random value per process and count up
(RFC 9562 §6.2, method 2), so ids stay unique within a process and, with 74 random bits,
across processes and machines.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_RAND_BITS = 74
_lock = threading.Lock()
_counter = secrets.randbits(_RAND_BITS)


def _reseed() -> None:
    global _counter
    _counter = secrets.randbits(_RAND_BITS)


os.register_at_fork(after_in_child=_reseed)


def uuid7() -> str:
    global _counter
    with _lock:
        _counter = (_counter + 1) & ((1 << _RAND_BITS) - 1)
        rand = _counter
    ms = time.time_ns() // 1_000_000
    rand_a, rand_b = rand >> 62, rand & ((1 << 62) - 1)
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
