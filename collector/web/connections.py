"""Connections open at once per client, so that one host cannot hold the process's memory
with connections it keeps idle or half-sent: each holds about 60 KB here (3,000 took the
collector from 450 to 650 MB, probe 50), and the timeouts (``limits.py``) only bound how
long each one lasts.

Past ``MAX_PER_CLIENT`` connections from one address (an IPv6 client: from its /64, and
``PREFIX_SHARE`` times that from its /48, a subscriber's whole delegation), a new one is
closed at once, before anything is read; the client's other connections go on. The cap is
high enough for the visitors behind one NAT (an office, a carrier's CGNAT: a browser keeps
about 6 connections to a host). The trusted proxies (``--trusted-proxies``) are never
capped: every visitor comes through them, and they limit their own clients; nor are
addresses that are not public (``clientip.is_public``): a proxy nobody declared trusted, the
shop's own systems, the SQL port's local clients. A port may also cap its connections from
all clients together (the SQL port: ``collector/sqlhttp/protocol.py``; the collector's, at
the open-files limit less a reserve: ``openfiles.py``); a public client then has a quarter
of that, at most ``MAX_PER_CLIENT``.

The event loop's thread counts; tests run several loops, hence the lock.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter

from collector.web.clientip import Network, is_public, is_trusted_proxy, parse_address
from collector.web.ratelimit import buckets

MAX_PER_CLIENT = 1024
PREFIX_SHARE = 4

_lock = threading.Lock()
_open: Counter[str] = Counter()


@functools.lru_cache(maxsize=65536)
def client_keys(peer: str) -> tuple[tuple[str, float], ...]:
    """What a connection from ``peer`` counts against, with each one's share of the cap."""
    address = parse_address(peer)
    return () if address is None else buckets(str(address), PREFIX_SHARE)


def admit(peer: str, trusted: tuple[Network, ...], listener: int = 0, port_most: int = 0
          ) -> tuple[str, ...] | None:
    """Count a new connection from ``peer`` to the port ``listener`` (each port has its
    own counts): the keys to give back when it ends (:func:`release`), or None when the
    client has its share open already, or the port ``port_most`` connections from anyone
    (close it)."""
    keys = [(f"{listener} *", port_most)] if port_most else []
    if not (is_trusted_proxy(peer, trusted) or not is_public(peer)):
        # (on a port with its own cap, one client gets a quarter of it)
        most = min(MAX_PER_CLIENT, port_most // 4) if port_most else MAX_PER_CLIENT
        keys += [(f"{listener} {key}", most * share) for key, share in client_keys(peer)]
    if not keys:
        return ()
    with _lock:
        if any(_open[key] >= cap for key, cap in keys):
            return None
        for key, _ in keys:
            _open[key] += 1
    return tuple(key for key, _ in keys)


def release(keys: tuple[str, ...]) -> None:
    with _lock:
        for key in keys:
            _open[key] -= 1
            if _open[key] <= 0:
                del _open[key]


def open_from(peer: str) -> int:
    """Connections open now from ``peer``'s address or /64, to any port (for tests)."""
    keys = client_keys(peer)
    return sum(n for key, n in _open.items() if keys and key.endswith(f" {keys[0][0]}"))
