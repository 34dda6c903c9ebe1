"""Sites: who may send hits, from which origins, with which keys and settings.

Keys are random tokens shown once at creation; only their SHA-256 digests are stored
(the tokens carry 192 random bits, so a fast hash is enough).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import anyio.to_thread
import orjson

from collector.files import write_atomic
from collector.identifiers import BUILT_IN, KIND
from collector.storage import StorageError, Store

MISS_RELOAD_AGE = 0.25
# /t/banner.js, /t/debug.js, /t/decide.js...: a site of that name would never get its tag.
RESERVED_IDS = frozenset({"banner", "debug", "decide"})
SITE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch
KEY_KINDS = ("write", "read", "admin")
# An identifier linked to more persons than this stops linking (a QA device, a shared code).
IDENTITY_MAX_PERSONS = 20
# Every column of a site row, in the order of the inserts that write a new version.
COLUMNS = ("site_id, name, origins, write_key_hash, read_key_hash, admin_key_hash, "
           "retention_days, drop_bots, drop_without_consent, identifier_kinds, "
           "identity_max_persons, deleted, created_at, updated_at")


@dataclass(frozen=True)
class Site:
    site_id: str
    name: str = ""
    origins: tuple[str, ...] = ()
    write_key_hash: str = ""
    read_key_hash: str = ""
    admin_key_hash: str = ""
    retention_days: int = 0
    drop_bots: bool = False
    # Web hits without analytics consent are dropped instead of stored without identifiers.
    drop_without_consent: bool = False
    # The identifier kinds the site accepts: the built-in ones, then its own.
    identifier_kinds: tuple[str, ...] = BUILT_IN
    identity_max_persons: int = IDENTITY_MAX_PERSONS
    _patterns: tuple[re.Pattern, ...] = field(default=(), compare=False, repr=False)

    def allows_origin(self, origin: str) -> bool:
        """Exact origins, ``*``, or ``https://*.shop.example`` for any subdomain."""
        return any(p.fullmatch(origin) for p in self._patterns)

    def names_origin(self, origin: str) -> bool:
        """Whether ``origin`` is one of the site's own (``*`` does not count): the only
        origins trusted with a visitor's cookies and what they reveal."""
        return any(p.fullmatch(origin) for o, p in zip(self.origins, self._patterns,
                                                        strict=False) if o != "*")

    def has_page(self, url: str) -> bool:
        """Whether ``url`` is a page on one of the site's own origins (``*`` does not count):
        the only places a link of ours may send a browser."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            return False
        return "*" not in self.origins and self.names_origin(
            f"{parts.scheme}://{parts.netloc.lower()}")

    def key_matches(self, kind: str, key: str) -> bool:
        stored = getattr(self, f"{kind}_key_hash")
        return bool(stored) and hmac.compare_digest(stored, hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(kind: str) -> str:
    return f"tw_{kind}_{secrets.token_urlsafe(24)}"


def normalize_origin(origin: str) -> str:
    """``https://Shop.example/`` -> ``https://shop.example``; ValueError if not an origin."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    return f"{parts.scheme}://{host}"


def _origin_pattern(origin: str) -> re.Pattern:
    if origin == "*":
        return re.compile(r".*")
    scheme, host = origin.split("://", 1)
    if host.startswith("*."):
        return re.compile(re.escape(scheme) + r"://[a-z0-9.-]+\." + re.escape(host[2:]))
    return re.compile(re.escape(origin))


def _site_from_row(row: dict) -> Site:
    origins = tuple(row["origins"])
    return Site(
        site_id=row["site_id"],
        name=row["name"],
        origins=origins,
        write_key_hash=row["write_key_hash"],
        read_key_hash=row["read_key_hash"],
        admin_key_hash=row["admin_key_hash"],
        retention_days=int(row["retention_days"]),
        drop_bots=bool(row["drop_bots"]),
        drop_without_consent=bool(row.get("drop_without_consent", False)),  # older snapshots
        identifier_kinds=(*BUILT_IN, *row.get("identifier_kinds", ())),
        identity_max_persons=int(row.get("identity_max_persons", IDENTITY_MAX_PERSONS)),
        _patterns=tuple(_origin_pattern(o) for o in origins),
    )


class Sites:
    """The site registry, cached in memory and reloaded from ClickHouse now and then.

    Sites may be created by another process (``tagwerk site create``): the collector
    reloads the registry every ``refresh_seconds`` and when it meets an unknown id or key.
    """

    def __init__(
        self, store: Store, snapshot: Path | None = None, refresh_seconds: float = 10.0
    ) -> None:
        self.store = store
        # Saved after each load, so that the collector can start while ClickHouse is down.
        self.snapshot_path = snapshot
        self.refresh_seconds = refresh_seconds
        self._sites: dict[str, Site] = {}
        self._by_write_key: dict[str, Site] = {}
        self._loaded_at = 0.0
        self._load_started = 0.0
        self._lock = threading.Lock()
        # One load at a time: a reload and an admin's change each read the table and then
        # set the sites and write the snapshot; interleaved, the older read could land last.
        self._load_lock = threading.Lock()
        self._reloading: asyncio.Task | None = None  # the reload callers of find share

    def load(self) -> None:
        with self._load_lock:
            rows = self.store.rows(
                "SELECT site_id, name, origins, write_key_hash, read_key_hash, admin_key_hash, "
                "retention_days, drop_bots, drop_without_consent, identifier_kinds, "
                "identity_max_persons FROM tagwerk.sites FINAL WHERE NOT deleted"
            )
            previous = self._sites
            self._set({row["site_id"]: _site_from_row(row) for row in rows})
            if self.snapshot_path and (self._sites != previous
                                       or not self.snapshot_path.exists()):
                write_atomic(self.snapshot_path, orjson.dumps(rows))

    def load_snapshot(self) -> bool:
        """Serve the sites saved by the last successful load; False if there is none."""
        if not self.snapshot_path or not self.snapshot_path.exists():
            return False
        rows = orjson.loads(self.snapshot_path.read_bytes())
        self._set({row["site_id"]: _site_from_row(row) for row in rows})
        return True

    def _set(self, sites: dict[str, Site]) -> None:
        self._sites = sites
        self._by_write_key = {s.write_key_hash: s for s in sites.values() if s.write_key_hash}
        self._loaded_at = time.monotonic()

    def get(self, site_id: str) -> Site | None:
        return self._sites.get(site_id)

    async def find(self, site_id: str) -> Site | None:
        """The site, reloading once (in a thread) when it is not known yet: it may have been
        created a moment ago by another process. A malformed id is never looked up."""
        if not SITE_ID.fullmatch(site_id):
            return None
        site = self._sites.get(site_id)
        if site is None:
            await self._reloaded()
            site = self._sites.get(site_id)
        return site

    async def find_by_write_key(self, key: str) -> Site | None:
        site = self.by_write_key(key)
        if site is None:
            await self._reloaded()
            site = self.by_write_key(key)
        return site

    async def _reloaded(self) -> None:
        """Until a reload that started after this call is done (``refresh``, in a thread).
        The callers meanwhile share it rather than hold a worker thread each: site ids
        are public, and a flood of made-up ones would take the pool the API's reads use."""
        asked = time.monotonic()
        loop = asyncio.get_running_loop()
        while self._load_started <= asked:
            task = self._reloading
            if task is None or task.done() or task.get_loop() is not loop:
                task = self._reloading = loop.create_task(
                    anyio.to_thread.run_sync(self.refresh))
            await asyncio.shield(task)

    def ids(self) -> list[str]:
        return list(self._sites)

    def by_write_key(self, key: str) -> Site | None:
        return self._by_write_key.get(hash_key(key))

    def refresh(self) -> None:
        """Reload now, for an unknown site id or key: it may have been created a moment ago
        by another process. Blocking: call it from a thread.

        Reloads run one at a time, at most one per ``MISS_RELOAD_AGE`` seconds (a caller
        waits for its turn rather than being refused), and a reload that started after a
        caller asked serves that caller too, so a flood of unknown ids costs a few reloads.
        """
        asked = time.monotonic()
        with self._lock:
            if self._load_started > asked:
                return
            time.sleep(max(0.0, self._loaded_at + MISS_RELOAD_AGE - time.monotonic()))
            self._reload_quietly()

    def any_allows_origin(self, origin: str) -> bool:
        return any(site.allows_origin(origin) for site in self._sites.values())

    def reload(self) -> None:
        """The periodic reload; keeps serving what it knows while storage is down."""
        with self._lock:
            self._reload_quietly()

    def _reload_quietly(self) -> None:
        self._load_started = time.monotonic()
        try:
            self.load()
        except StorageError:
            self._loaded_at = time.monotonic()

    def create(
        self,
        site_id: str,
        origins: list[str] | tuple[str, ...] = (),
        name: str = "",
        retention_days: int = 0,
        drop_bots: bool = False,
        drop_without_consent: bool = False,
        identifier_kinds: list[str] | tuple[str, ...] = (),
        identity_max_persons: int = IDENTITY_MAX_PERSONS,
    ) -> tuple[Site, dict[str, str]]:
        """Create a site; return it and its keys in clear (shown this once only).
        ``identifier_kinds``: the site's own identifier kinds, beyond the built-in ones."""
        if site_id in RESERVED_IDS:
            raise ValueError(f"site id {site_id!r} is reserved (it names a file under /t/)")
        if not SITE_ID.fullmatch(site_id):
            raise ValueError("site id: 1-63 characters of a-z, 0-9, '_' and '-', starting "
                             "with a letter or digit")
        if not 0 <= retention_days <= 65535:
            raise ValueError("retention_days must be between 0 (forever) and 65535")
        clean = [normalize_origin(o) for o in origins]
        kinds = _own_kinds(identifier_kinds)
        if not 1 <= identity_max_persons <= 10_000:
            raise ValueError("identity_max_persons must be between 1 and 10000")
        self.load()
        if site_id in self._sites:
            raise ValueError(f"site {site_id!r} exists already")
        keys = {kind: new_key(kind) for kind in KEY_KINDS}
        now = dt.datetime.now(dt.UTC)
        row = {
            "site_id": site_id,
            "name": name or site_id,
            "origins": clean,
            "write_key_hash": hash_key(keys["write"]),
            "read_key_hash": hash_key(keys["read"]),
            "admin_key_hash": hash_key(keys["admin"]),
            "retention_days": retention_days,
            "drop_bots": drop_bots,
            "drop_without_consent": drop_without_consent,
            "identifier_kinds": kinds,
            "identity_max_persons": identity_max_persons,
            "created_at": now,
            "updated_at": now,
        }
        self.store.execute(
            f"INSERT INTO tagwerk.sites ({COLUMNS}) VALUES "
            "({site_id:String}, {name:String}, {origins:Array(String)}, "
            "{write_key_hash:String}, {read_key_hash:String}, {admin_key_hash:String}, "
            "{retention_days:UInt16}, {drop_bots:Bool}, {drop_without_consent:Bool}, "
            "{identifier_kinds:Array(String)}, {identity_max_persons:UInt16}, false, "
            "{created_at:DateTime64(3, 'UTC')}, "
            "{updated_at:DateTime64(3, 'UTC')})",
            row,
        )
        self.load()
        return self._sites[site_id], keys

    def set_origins(self, site_id: str, origins: list[str] | tuple[str, ...]) -> Site:
        """Replace a site's allowed origins (a new row version; the keys stay)."""
        clean = [normalize_origin(o) for o in origins]
        self.store.execute(
            f"INSERT INTO tagwerk.sites ({COLUMNS}) SELECT site_id, name, "
            "{origins:Array(String)}, write_key_hash, read_key_hash, admin_key_hash, "
            "retention_days, drop_bots, drop_without_consent, identifier_kinds, "
            "identity_max_persons, deleted, created_at, "
            "now64(3, 'UTC') FROM tagwerk.sites FINAL WHERE site_id = {site_id:String}",
            {"site_id": site_id, "origins": clean},
        )
        self.load()
        site = self._sites.get(site_id)
        if site is None:
            raise ValueError(f"unknown site {site_id!r}")
        return site


def _own_kinds(kinds: list[str] | tuple[str, ...]) -> list[str]:
    own = list(dict.fromkeys(kinds))
    for kind in own:
        if not KIND.fullmatch(kind) or kind in BUILT_IN:
            raise ValueError(f"identifier kind {kind!r}: a-z, 0-9 and '_', starting with a "
                             f"letter, at most 32, other than the built-in {', '.join(BUILT_IN)}")
    if len(own) > 16:
        raise ValueError("a site has at most 16 identifier kinds of its own")
    return own
