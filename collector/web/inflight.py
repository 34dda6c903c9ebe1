"""Request bodies being received, in all: a limit on the memory clients hold open at once.

Each endpoint bounds its own body (1 MB for a batch), but nothing bounded how many arrive
together: 200 connections each sending most of a batch, slowly, raised the process's memory
by 170 MB, and 8,000 sending most of 64 KB each by 480 MB. The collector's protocol counts
the bytes of every request whose body is still unfinished after a read (``limits.py``): a
hit whose body comes with its head in one read is never counted. One that would take the
total past its budget (64 MB) is refused (503) and its connection closed; the others go on. A
request stops counting when its body is read whole (its request then holds it, as any), or
its connection ends: a charge dropped unreleased gives its bytes back when it is
collected, so no path can leak the budget.

The event loop's thread does the counting; tests run several loops, hence the lock.
"""

from __future__ import annotations

import threading
import weakref


class Budget:
    """Bytes held at once by requests still arriving, in all, up to ``most``."""

    def __init__(self, most: int, what: str) -> None:
        self.most, self.what = most, what
        self._lock = threading.Lock()
        self._total = 0

    def total(self) -> int:
        """Bytes charged now (for tests)."""
        return self._total

    def refusal(self) -> str:
        return (f"the collector is receiving more than {self.most // (1024 * 1024)} MB of "
                f"{self.what} at once; send it again shortly")

    def grow(self, charged: list[int], size: int) -> bool:
        """Make a charge (``charged[0]`` bytes) ``size``: False, and nothing changed, if that
        would take the total past ``most``."""
        with self._lock:
            grown = size - charged[0]
            if self._total + grown > self.most:
                return False
            self._total += grown
            charged[0] = size
        return True

    def give_back(self, charged: list[int]) -> None:
        with self._lock:
            self._total -= charged[0]
            charged[0] = 0


# The collector's port: bodies being received (limits.py). The SQL port's: query texts read
# ahead of their run (collector/sqlhttp/bodies.py), apart, so that neither port's clients
# can spend the other's.
BODIES = Budget(64 * 1024 * 1024, "request bodies")
QUERIES = Budget(64 * 1024 * 1024, "query texts")


class Charge:
    """What one request is charged against a budget; ``hold`` grows it, ``release`` ends it."""

    __slots__ = ("_budget", "_bytes", "__weakref__")

    def __init__(self, budget: Budget = BODIES) -> None:
        self._budget = budget
        self._bytes = [0]  # shared with the finalizer, which must not hold the charge itself
        weakref.finalize(self, budget.give_back, self._bytes)

    def hold(self, size: int) -> bool:
        """Charge the request ``size`` bytes in all (what it holds now): False, and nothing
        charged, if that would take the budget's total past its ``most``."""
        return self._budget.grow(self._bytes, size)

    def release(self) -> None:
        self._budget.give_back(self._bytes)
