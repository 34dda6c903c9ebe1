"""The client behind a browser's hits, as a number that means nothing after its day.

The shop's public lists rank products by clients (clickhouse/0047_client_hash.sql): device
ids cost nothing to mint, network addresses do. A client is a public IPv4 address or an
IPv6 /48, the prefix a subscriber's line is given at most (RFC 6177: /64 per network, /56
or /48 per site); one line or office is then one client, as a carrier's NAT is.

What is stored is ``events.client_hash``: BLAKE2b keyed with the day's salt over the site
and the network, 63 bits. The site is in it so that two sites' rows cannot be joined on it.
Each UTC day has its own salt: 32 random bytes in ``tagwerk.client_salts``, so that every
collector on the ClickHouse hashes a client alike. The first collector to need a day's
salt makes it, a day ahead; of two made at once the first made wins, and each collector
reads them again every ``LOOK`` seconds, so they agree long before the day begins. A day's
salt is deleted once the day is over, by ClickHouse's clock (a mutation, which rewrites the
table's parts; and a TTL, clickhouse/0051, should no collector look): with it, hashing the
2^32 IPv4 addresses would tell whose a hash is; without it, nobody can. Until then whoever
may read ``tagwerk.client_salts`` (an admin, a read-write SQL user, a backup) could: the
read-only SQL users cannot.

Hits get a hash only where they may get a device id: with analytics consent, from a public
address (not a proxy nobody declared trusted, not the shop's own systems). Without ClickHouse
at start, the process makes a salt of its own for the day, until a look finds the shared one
(a client may count twice meanwhile).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import secrets
import threading
import time
from ipaddress import IPv4Address

import orjson

from collector.storage import StorageError, Store
from collector.web.clientip import is_public, parse_address

log = logging.getLogger("tagwerk.client_hash")

__all__ = ["ClientSalts", "network", "today"]

DAY = 86400
EPOCH = dt.date(1970, 1, 1)
LOOK = 60.0  # seconds between reads of the shared salts
SALT_BYTES = 32
IPV6_PREFIX_BYTES = 6  # a /48
SALTS = """
SELECT toString(day) AS date, argMin(salt, (made, salt)) AS first FROM tagwerk.client_salts
WHERE day >= {first:Date} AND day <= {last:Date} GROUP BY day
"""
# Past days by ClickHouse's clock, one for every collector (one whose clock ran ahead
# deleted a salt another still used, which then made a second one for its day).
STALE = "SELECT count() AS n FROM tagwerk.client_salts WHERE day < today()"
FORGET = "ALTER TABLE tagwerk.client_salts DELETE WHERE day < today() SETTINGS mutations_sync = 1"


def today() -> dt.date:
    """Today in UTC."""
    return day_of(int(time.time() // DAY))


def day_of(number: int) -> dt.date:
    """The date of a day's number (days since 1970-01-01)."""
    return EPOCH + dt.timedelta(days=number)


@functools.lru_cache(maxsize=65536)
def network(address: str) -> bytes:
    """The client's network as bytes (an IPv4 address, an IPv6 /48), or b"" for an address
    that is not a public one."""
    if not address or not is_public(address):
        return b""
    parsed = parse_address(address)
    if parsed is None:
        return b""
    if isinstance(parsed, IPv4Address):
        return parsed.packed
    return parsed.packed[:IPV6_PREFIX_BYTES]


class ClientSalts:
    """The days' salts, today's and tomorrow's, as the collectors share them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._salts: dict[dt.date, bytes] = {}
        self._lock = threading.Lock()
        self._looked = float("-inf")
        # Today's number and salt, the hot path's (``hash``): one tuple, replaced whole, so
        # that no request pairs a day with another's salt.
        self._today: tuple[int, bytes] = (0, b"")

    def hash(self, site_id: str, address: str) -> int:
        """The hash of a hit from ``address`` today; 0 for no client."""
        day = int(time.time() // DAY)
        known, salt = self._today
        if day != known:
            salt = self.salt_of(day_of(day))
            self._today = (day, salt)
        return self.hash_of(site_id, address, salt)

    @staticmethod
    def hash_of(site_id: str, address: str, salt: bytes) -> int:
        net = network(address)
        if not net:
            return 0
        digest = hashlib.blake2b(site_id.encode() + b"\0" + net, key=salt, digest_size=8)
        return int.from_bytes(digest.digest(), "little") >> 1 or 1

    def salt_of(self, day: dt.date) -> bytes:
        """The day's salt: the shared one, else (not read yet) one of this process."""
        with self._lock:
            salt = self._salts.get(day)
            if salt is None:
                salt = self._salts[day] = secrets.token_bytes(SALT_BYTES)
            return salt

    def look(self, every: float = LOOK) -> None:
        """Read today's and tomorrow's shared salts (making those missing) and delete the
        past days', at most every ``every`` seconds. Logs what fails: the next look tries
        again."""
        if time.monotonic() - self._looked < every:
            return
        self._looked = time.monotonic()
        try:
            self._look()
        except StorageError as exc:
            log.warning("client salts: %s", exc)
        except Exception:  # (the caller's thread must outlive it)
            log.exception("client salts")

    def _look(self) -> None:
        first = today()
        days = [first, first + dt.timedelta(days=1)]
        shared = self._shared(days)
        missing = [day for day in days if day not in shared]
        if missing:
            self.store.insert("tagwerk.client_salts", b"".join(
                orjson.dumps({"day": day.isoformat(), "salt": secrets.token_hex(SALT_BYTES)})
                + b"\n" for day in missing))
            shared = self._shared(days)
        with self._lock:
            self._salts = {**shared, **{d: s for d, s in self._salts.items()
                                        if d >= first and d not in shared}}
            self._today = (0, b"")  # ``hash`` takes today's salt again
        if self.store.rows(STALE)[0]["n"]:
            self.store.execute(FORGET)

    def _shared(self, days: list[dt.date]) -> dict[dt.date, bytes]:
        rows = self.store.rows(SALTS, {"first": days[0].isoformat(),
                                       "last": days[-1].isoformat()})
        return {dt.date.fromisoformat(row["date"]): bytes.fromhex(row["first"]) for row in rows}
