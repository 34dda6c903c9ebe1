"""Background threads that yield the core to requests.

The collector often runs on one core (``bench/``: pinned to it), where a copy built in the
background (11-26 s of CPU for the 10M bench's hits) or a refresh of its stale keys (a few
ms to a second) would take turns with the requests and double their latency while it runs.
Linux schedules a thread of nice value 19 only where threads of nice 0 leave time (a weight
of 15 against 1,024), so such a thread costs requests little and still runs on an idle
core. The engine runs a single-threaded statement (``max_threads = 1``) on the calling
thread, so the statements such a thread makes yield too; those the engine spreads over its
own pool (a dictionary's load) do not.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("tagwerk.background")

NICE = 19


def yield_to_requests() -> None:
    """Lower the calling thread's priority to ``NICE`` (for good: no capability is needed to
    lower a priority, one to raise it again)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError as exc:  # e.g. a seccomp profile refusing it: run as before
        log.info("background thread at normal priority: %s", exc)
