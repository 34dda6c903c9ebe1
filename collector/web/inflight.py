"""Request bodies being received, in all: a limit on the memory clients hold open at once.

Each endpoint bounds its own body (1 MB for a batch), but nothing bounded how many arrive
together: 200 connections each sending most of a batch, slowly, raised the process's memory
by 170 MB, and 8,000 sending most of 64 KB each by 480 MB. The collector's protocol counts
the bytes of every request whose body is still unfinished after a read (``limits.py``): a
hit whose body comes with its head in one read is never counted. One that would take the
total past ``MAX_BYTES`` is refused (503) and its connection closed; the others go on. A
request stops counting when its body is read whole (its request then holds it, as any), or
its connection ends: a charge dropped unreleased gives its bytes back when it is
collected, so no path can leak the budget.

The event loop's thread does the counting; tests run several loops, hence the lock.
"""

from __future__ import annotations

import threading
import weakref

MAX_BYTES = 64 * 1024 * 1024

_lock = threading.Lock()
_total = 0  # bytes charged to bodies being received


class Charge:
    """What one body is charged; ``hold`` grows it, ``release`` ends it."""

    __slots__ = ("_bytes", "__weakref__")

    def __init__(self) -> None:
        self._bytes = [0]  # shared with the finalizer, which must not hold the charge itself
        weakref.finalize(self, _give_back, self._bytes)

    def hold(self, size: int) -> bool:
        """Charge the body ``size`` bytes in all (what it holds now): False, and nothing
        charged, if that would take the total past ``MAX_BYTES``."""
        global _total
        with _lock:
            grown = size - self._bytes[0]
            if _total + grown > MAX_BYTES:
                return False
            _total += grown
            self._bytes[0] = size
        return True

    def release(self) -> None:
        _give_back(self._bytes)


def _give_back(charged: list[int]) -> None:
    global _total
    with _lock:
        _total -= charged[0]
        charged[0] = 0


def total() -> int:
    """Bytes charged now (for tests)."""
    return _total


def refusal() -> str:
    return (f"the collector is receiving more than {MAX_BYTES // (1024 * 1024)} MB of "
            "request bodies at once; send it again shortly")
