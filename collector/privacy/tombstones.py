"""Identifiers erased for good: a hit naming one is dropped before it is spooled.

Kept as digests (``subject``), never in clear. Each collector holds the digests of the
sites that have any in memory and refreshes them with the sites (every 2 s), so a hit of a
site without erasures costs one dict lookup; one of a site with erasures, a SHA-256 per
identifier on the hit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from typing import Any

import orjson

from collector.storage import Store


def subject(site_id: str, kind: str, ident: str) -> str:
    return hashlib.sha256(f"tagwerk-erased\0{site_id}\0{kind}\0{ident}".encode()).hexdigest()


class Tombstones:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_site: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def load(self) -> bool:
        """Read every site's tombstones; whether there are new ones (erasures made through
        this or another collector since the last load)."""
        rows = self.store.rows(
            "SELECT site_id, groupArray(subject) AS subjects FROM tagwerk.privacy_tombstones "
            "GROUP BY site_id")
        loaded = {row["site_id"]: frozenset(row["subjects"]) for row in rows}
        with self._lock:
            new = any(not subjects <= self._by_site.get(site, frozenset())
                      for site, subjects in loaded.items())
            self._by_site = loaded
        return new

    def add(self, site_id: str, subjects: list[str], request_id: str) -> None:
        """Record new tombstones, in ClickHouse for every collector and here at once."""
        if not subjects:
            return
        now = dt.datetime.now(dt.UTC).isoformat(" ", "milliseconds")[:23]
        lines = [orjson.dumps({"site_id": site_id, "subject": s, "request_id": request_id,
                               "erased_at": now}) for s in subjects]
        self.store.insert("tagwerk.privacy_tombstones", b"\n".join(lines), "JSONEachRow")
        with self._lock:
            self._by_site[site_id] = self._by_site.get(site_id, frozenset()) | set(subjects)

    def blocks(self, site_id: str, row: dict[str, Any]) -> bool:
        """Whether the (normalised) hit names an erased identifier."""
        erased = self._by_site.get(site_id)
        if not erased:
            return False
        named = [("user", row["user_id"]), ("device", row["device_id"]),
                 *row["identifiers"].items()]
        return any(value and subject(site_id, kind, value) in erased for kind, value in named)
