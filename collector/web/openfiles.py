"""The process's open-files limit, shared by the collector's connections and the rest.

Each connection holds a file descriptor, and so do the engine's parts, the spool and the
SQL port's connections. Loopback clients and trusted proxies are not capped per client
(``connections.py``), so a local client could open connections until the process had no
descriptor left (``EMFILE``): then every port stops accepting and the engine cannot open
a part, and a flush fails. The collector's port therefore takes at most the limit less
``RESERVED`` (half of it, for a small limit); what is past that is closed at once. ``tagwerk
serve`` first raises the soft limit to the hard one (servers need more than the common
default of 1,024, and an unprivileged process may raise its own; the embedded engine does
so too when it starts, the server backend has nothing that would).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("collector.web")

# For the engine's files and threads, the spool, logs, and the SQL port's 512 connections.
RESERVED = 2048


def raise_limit() -> int:
    """Raise the soft limit on open files to the hard one; the soft limit then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # (what Linux allows at most by default: fs.nr_open)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard,
                        exc)
    return soft if soft != resource.RLIM_INFINITY else hard


def connection_share() -> int:
    """Connections the collector's port may hold at once, from the current limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if soft != resource.RLIM_INFINITY else (1 << 20)
    return max(limit - RESERVED, limit // 2)
