"""Token buckets per client address, in memory (per collector process): the public product
lists' requests (``api/recommend.py``) and the browsers' hits (``ingest/accept.py``) are
limited per client, as the connections are (``connections.py``).

A client is its address: IPv4 as it is (an IPv4-mapped IPv6 address too), IPv6 by its /64,
a subscriber's usual share (RFC 6177; else one line could pass any limit by changing the
low bits), and its /48 as well (the largest delegation to one subscriber), which has a
given multiple of the /64's rate and burst.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from weakref import WeakKeyDictionary

MAX_CLIENTS = 100_000  # buckets remembered; the least recently used are forgotten first


class RateLimit:
    """A token bucket per client: ``rate`` tokens a second, up to ``burst``."""

    def __init__(self, rate: float, burst: float, most: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        # key -> (tokens, when counted, until when it was told to wait)
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def wait(self, client: str, now: float | None = None) -> float:
        """0 if ``client`` may go on now (and it is counted), else the seconds to wait."""
        return self.wait_all(((client, 1.0),), now)

    def wait_all(self, keys: Sequence[tuple[str, float]], now: float | None = None,
                 cost: float = 1.0) -> float:
        """0 if every bucket of ``keys`` (each with its share: its rate and burst are this
        limit's times it) has ``cost`` tokens now, each then spent; else the longest wait,
        which ``waiting`` then answers until it is over. A cost above a bucket's burst
        waits for a full bucket, and then goes."""
        now = time.monotonic() if now is None else now
        found, longest = [], 0.0
        for key, share in keys:
            tokens, last, until = self._buckets.pop(key, (self.burst * share, now, 0.0))
            tokens = min(self.burst * share, tokens + (now - last) * self.rate * share)
            need = min(cost, self.burst * share)
            short = (need - tokens) / (self.rate * share) if tokens < need else 0.0
            found.append((key, tokens, max(until, now + short) if short else until))
            longest = max(longest, short)
        for key, tokens, until in found:  # (only a bucket that was short makes it wait)
            self._buckets[key] = (tokens, now, until) if longest else (tokens - cost, now, until)
        while len(self._buckets) > self.most:
            self._buckets.popitem(last=False)
        return longest

    def waiting(self, keys: Sequence[tuple[str, float]], now: float | None = None) -> float:
        """The seconds a client told to wait (``wait_all``) has still to wait; nothing is
        spent."""
        now = time.monotonic() if now is None else now
        until = max((self._buckets.get(key, (0.0, 0.0, 0.0))[2] for key, _ in keys),
                    default=0.0)
        return max(0.0, until - now)


class RateLimits(WeakKeyDictionary):
    """One ``RateLimit`` per owner (a ``Collector``: tests run several in one process, each
    with its own clients), made when first asked for; one may be set for an owner."""

    def __init__(self, rate: float, burst: float, most: int = MAX_CLIENTS) -> None:
        super().__init__()
        self.rate, self.burst, self.most = rate, burst, most

    def of(self, owner: object) -> RateLimit:
        found = self.get(owner)
        if found is None:
            found = self[owner] = RateLimit(self.rate, self.burst, self.most)
        return found


def bucket(address: str) -> str:
    """The client an address is: itself, an IPv6 address's /64, an IPv4-mapped one as its
    IPv4 address; anything that is no address as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def buckets(address: str, prefix_share: float) -> tuple[tuple[str, float], ...]:
    """The buckets an address counts in, with their shares: its client's (``bucket``), and
    an IPv6 address's /48 with ``prefix_share``."""
    own = bucket(address)
    if "/" not in own:
        return ((own, 1.0),)
    prefix = ipaddress.ip_network(f"{address}/48", strict=False)
    return ((own, 1.0), (str(prefix), float(prefix_share)))
