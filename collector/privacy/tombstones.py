"""Identifiers erased for good: a hit naming one is dropped before it is spooled; and spans
of time of shared identifiers: a hit naming one in such a span is dropped too.

Kept as digests (``subject``), never in clear: HMAC-SHA256 with the installation's privacy
key (``key.py``). Tombstones written before digests were keyed (``keyed = false``) hold
plain SHA-256 digests and are matched as such. Each collector holds the digests of the
sites that have any in memory and refreshes them with the sites (every 2 s), so a hit of a
site without erasures costs one dict lookup; one of a site with erasures, an HMAC per
identifier on the hit (and a SHA-256 while the site has tombstones of the old form).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import orjson

from collector.identity.graph import BEGINNING, END
from collector.privacy import key as privacy_key
from collector.storage import Store, time_text

ALWAYS = ((BEGINNING, END),)
Spans = tuple[tuple[str, str], ...]  # [from, to) as 'YYYY-MM-DD hh:mm:ss.sss' (UTC)


def _text(site_id: str, kind: str, ident: str) -> str:
    return f"tagwerk-erased\0{site_id}\0{kind}\0{ident}"


def plain_subject(site_id: str, kind: str, ident: str) -> str:
    """The digest of tombstones written before digests were keyed."""
    return hashlib.sha256(_text(site_id, kind, ident).encode()).hexdigest()


class Tombstones:
    def __init__(self, store: Store, key: bytes) -> None:
        self.store, self.key = store, key
        # site -> subject -> the spans it covers (ALWAYS for an identifier theirs alone)
        self._by_site: dict[str, dict[str, Spans]] = {}
        self._plain_by_site: dict[str, dict[str, Spans]] = {}
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
            "SELECT site_id, keyed, subject, groupArray((toString(from_ts), "
            "if(to_ts = 0, {end:String}, toString(to_ts)))) AS spans "  # 0: before spans
            "FROM tagwerk.privacy_tombstones GROUP BY site_id, keyed, subject", {"end": END})
        keyed: dict[str, dict[str, Spans]] = {}
        plain: dict[str, dict[str, Spans]] = {}
        for row in rows:
            spans = tuple(sorted(tuple(span) for span in row["spans"]))
            (keyed if row["keyed"] else plain).setdefault(row["site_id"], {})[
                row["subject"]] = spans
        with self._lock:
            new = any(not set(spans) <= set(known.get(site, {}).get(subject, ()))
                      for loaded, known in ((keyed, self._by_site),
                                            (plain, self._plain_by_site))
                      for site, subjects in loaded.items()
                      for subject, spans in subjects.items())
            self._by_site, self._plain_by_site = keyed, plain
        return new

    def add(self, site_id: str, subjects: dict[str, Spans], request_id: str) -> None:
        """Record new tombstones (``subject`` digests, each with the spans it covers), in
        ClickHouse for every collector and here at once."""
        if not subjects:
            return
        now = time_text()
        lines = [orjson.dumps({"site_id": site_id, "subject": s, "request_id": request_id,
                               "erased_at": now, "keyed": True, "from_ts": start,
                               "to_ts": end})
                 for s, spans in subjects.items() for start, end in spans]
        self.store.insert("tagwerk.privacy_tombstones", b"\n".join(lines), "JSONEachRow")
        with self._lock:
            known = dict(self._by_site.get(site_id, {}))
            for s, spans in subjects.items():
                known[s] = tuple(sorted({*known.get(s, ()), *spans}))
            self._by_site[site_id] = known

    def blocks(self, site_id: str, row: dict[str, Any]) -> bool:
        """Whether the (normalised) hit names an erased identifier at its time. On a shared
        identifier (the erased person's time on it), only a hit that no user id decides is
        theirs, as the erasure deletes them (``graph.row_parts``): another owner's verified
        user id makes it that owner's."""
        erased = self._by_site.get(site_id)
        plain = self._plain_by_site.get(site_id)
        if not erased and not plain:
            return False
        ts = row["ts"]
        decided = bool(row["user_id"]) and row.get("user_verified", False)
        named = [("user", row["user_id"]), ("device", row["device_id"]),
                 *row["identifiers"].items()]
        for kind, value in named:
            if not value:
                continue
            spans: Spans = ()
            if erased:  # an HMAC per identifier only for a site with keyed tombstones
                spans += erased.get(self.subject(site_id, kind, value), ())
            if plain:
                spans += plain.get(plain_subject(site_id, kind, value), ())
            for span in spans:
                if span[0] <= ts < span[1] and (not decided or kind == "user"
                                                or span == ALWAYS[0]):
                    return True
        return False
