"""Identifiers erased for good: a hit naming one is dropped before it is spooled.

Kept as digests (``subject``), never in clear: HMAC-SHA256 with the installation's privacy
key (``key.py``). Tombstones written before digests were keyed (``keyed = false``) hold
plain SHA-256 digests and are matched as such. Each collector holds the digests of the
sites that have any in memory and refreshes them with the sites (every 2 s), so a hit of a
site without erasures costs one dict lookup; one of a site with erasures, an HMAC per
identifier on the hit (and a SHA-256 while the site has tombstones of the old form).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from typing import Any

import orjson

from collector.privacy import key as privacy_key
from collector.storage import Store


def _text(site_id: str, kind: str, ident: str) -> str:
    return f"tagwerk-erased\0{site_id}\0{kind}\0{ident}"


def plain_subject(site_id: str, kind: str, ident: str) -> str:
    """The digest of tombstones written before digests were keyed."""
    return hashlib.sha256(_text(site_id, kind, ident).encode()).hexdigest()


class Tombstones:
    def __init__(self, store: Store, key: bytes) -> None:
        self.store, self.key = store, key
        self._by_site: dict[str, frozenset[str]] = {}
        self._plain_by_site: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._key_checked = False

    def subject(self, site_id: str, kind: str, ident: str) -> str:
        """The digest that stands for an identifier in tombstones and audit rows."""
        return privacy_key.digest(self.key, _text(site_id, kind, ident))

    def load(self) -> bool:
        """Read every site's tombstones; whether there are new ones (erasures made through
        this or another collector since the last load). The first load checks the key
        against the one the other collectors use (``key.KeyMismatch``)."""
        if not self._key_checked:
            privacy_key.check(self.store, self.key)
            self._key_checked = True
        rows = self.store.rows(
            "SELECT site_id, keyed, groupArray(subject) AS subjects "
            "FROM tagwerk.privacy_tombstones GROUP BY site_id, keyed")
        keyed: dict[str, frozenset[str]] = {}
        plain: dict[str, frozenset[str]] = {}
        for row in rows:
            (keyed if row["keyed"] else plain)[row["site_id"]] = frozenset(row["subjects"])
        with self._lock:
            new = any(not subjects <= known.get(site, frozenset())
                      for loaded, known in ((keyed, self._by_site),
                                            (plain, self._plain_by_site))
                      for site, subjects in loaded.items())
            self._by_site, self._plain_by_site = keyed, plain
        return new

    def add(self, site_id: str, subjects: list[str], request_id: str) -> None:
        """Record new tombstones (``subject`` digests), in ClickHouse for every collector
        and here at once."""
        if not subjects:
            return
        now = dt.datetime.now(dt.UTC).isoformat(" ", "milliseconds")[:23]
        lines = [orjson.dumps({"site_id": site_id, "subject": s, "request_id": request_id,
                               "erased_at": now, "keyed": True}) for s in subjects]
        self.store.insert("tagwerk.privacy_tombstones", b"\n".join(lines), "JSONEachRow")
        with self._lock:
            self._by_site[site_id] = self._by_site.get(site_id, frozenset()) | set(subjects)

    def blocks(self, site_id: str, row: dict[str, Any]) -> bool:
        """Whether the (normalised) hit names an erased identifier."""
        erased = self._by_site.get(site_id)
        plain = self._plain_by_site.get(site_id)
        if not erased and not plain:
            return False
        named = [("user", row["user_id"]), ("device", row["device_id"]),
                 *row["identifiers"].items()]
        return any(value and ((erased and self.subject(site_id, kind, value) in erased)
                              or (plain and plain_subject(site_id, kind, value) in plain))
                   for kind, value in named)
