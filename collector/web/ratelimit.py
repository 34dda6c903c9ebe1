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
from weakref import WeakKeyDictionary, ref

MAX_CLIENTS = 100_000  # buckets remembered; the least recently used are forgotten first


class RateLimit:
    """A token bucket per client: ``rate`` tokens a second, up to ``burst``. Every browser
    hit passes here (``ingest/accept.py``): a client that may go on costs a bucket update,
    and asking whether a client must still wait costs one test while none must."""

    def __init__(self, rate: float, burst: float, most: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        # key -> (tokens, when counted), the least recently counted first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # key -> until when it was told to wait: only the clients told so (``waiting``),
        # all of them forgotten once the last wait is over
        self._until: dict[str, float] = {}
        self._last_wait_ends = 0.0

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
        buckets, found, longest = self._buckets, [], 0.0
        for key, share in keys:
            burst, rate = self.burst * share, self.rate * share
            tokens, last = buckets.pop(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            need = cost if cost < burst else burst
            if tokens < need:
                short = (need - tokens) / rate
                self._until[key] = max(self._until.get(key, 0.0), now + short)
                self._last_wait_ends = max(self._last_wait_ends, now + short)
                longest = max(longest, short)
            found.append((key, tokens))
        for key, tokens in found:  # (only a bucket that was short makes it wait)
            buckets[key] = (tokens, now) if longest else (tokens - cost, now)
        while len(buckets) > self.most:
            self._until.pop(buckets.popitem(last=False)[0], None)
        return longest

    def waiting(self, keys: Sequence[tuple[str, float]], now: float | None = None) -> float:
        """The seconds a client told to wait (``wait_all``) has still to wait; nothing is
        spent."""
        until = self._until
        if not until:
            return 0.0
        now = time.monotonic() if now is None else now
        if now >= self._last_wait_ends:
            until.clear()
            return 0.0
        longest = 0.0
        for key, _ in keys:
            left = until.get(key, now) - now
            if left > 0:
                longest = max(longest, left)
            else:
                until.pop(key, None)  # over: the dictionary holds those waiting only
        return longest


class RateLimits:
    """One ``RateLimit`` per owner (a ``Collector``: tests run several in one process, each
    with its own clients), made when first asked for; one may be set for an owner, and goes
    with it."""

    def __init__(self, rate: float, burst: float, most: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.most = rate, burst, most
        self._each: WeakKeyDictionary[object, RateLimit] = WeakKeyDictionary()
        # the last owner asked for and its limit: a served process has one collector, and
        # each lookup in the weak dictionary makes a weak reference (~0.5 us a hit)
        self._last: tuple[ref[object], ref[RateLimit]] | None = None

    def of(self, owner: object) -> RateLimit:
        last = self._last
        if last is not None and last[0]() is owner:
            found = last[1]()
            if found is not None:
                return found
        found = self._each.get(owner)
        if found is None:
            found = self._each[owner] = RateLimit(self.rate, self.burst, self.most)
        self._last = (ref(owner), ref(found))
        return found

    def __setitem__(self, owner: object, limit: RateLimit) -> None:
        self._last = None
        self._each[owner] = limit

    def __delitem__(self, owner: object) -> None:
        self._last = None
        del self._each[owner]

    def get(self, owner: object) -> RateLimit | None:
        return self._each.get(owner)

    def __len__(self) -> int:
        return len(self._each)


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
