"""Drafts, immutable versions and releases in ClickHouse, and the live container."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import orjson

from collector.containers.document import (
    container_policy_hash,
    default_container,
    normalize,
    resolved_tag_path,
)
from collector.containers.errors import ContainerError, FieldError, NotFound, PreconditionFailed
from collector.containers.schema import LIVE_TTL, MAX_VERSION
from collector.containers.validate import Taken, check, check_note
from collector.sites import hash_key
from collector.storage import StorageError, Store, time_text

log = logging.getLogger("tagwerk.containers")

# -- versions in ClickHouse -------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    site_id: str
    document: dict[str, Any]
    policy: str
    updated_at: str | None  # None: never saved, the default container
    etag: str  # a strong entity-tag, quotes included: identifies this exact draft


@dataclass(frozen=True)
class Version:
    site_id: str
    version: int
    policy: str
    note: str
    created_at: str
    live: bool
    document: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"version": self.version, "policy": self.policy, "note": self.note,
               "created_at": self.created_at, "live": self.live}
        if self.document is not None:
            out["document"] = self.document
        return out


@dataclass(frozen=True)
class Live:
    """What ``/t/{site}.js`` serves: the live version, or the draft (version 0) before the
    first publish."""

    site_id: str
    version: int
    document: dict[str, Any]  # normalized
    policy: str
    digest: str  # of the stored document: identifies this container in caches


def _iso(value: str) -> str:
    """ClickHouse's ``2026-01-02 03:04:05.678`` as ISO 8601 UTC."""
    return value.replace(" ", "T") + "Z"


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _etag(text: str, updated_at: str | None) -> str:
    # The save time too: saving the same document again is a new draft (another edit may
    # have come and gone in between), and the stamps of this process never repeat.
    return '"' + _digest(f"{updated_at or ''}\n{text}")[:32] + '"'


_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')


def parse_if_match(value: str) -> frozenset[str] | None:
    """An ``If-Match`` field value (RFC 9110, 13.1.1): the strong entity-tags it lists, or
    None for ``*`` (there always is a draft, so it matches). Weak tags are dropped: they
    never match here. ValueError when it is not ``*`` or a list of entity-tags."""
    value = value.strip(" \t")
    if value == "*":
        return None
    strong: set[str] = set()
    pos, expect_tag, seen = 0, True, False
    while pos < len(value):
        if value[pos] in " \t":
            pos += 1
        elif value[pos] == ",":  # empty list elements are allowed (RFC 9110, 5.6.1)
            pos, expect_tag = pos + 1, True
        elif expect_tag and (match := _ENTITY_TAG.match(value, pos)):
            if not match.group(1):
                strong.add(match.group(0))
            pos, expect_tag, seen = match.end(), False, True
        else:
            raise ValueError('If-Match must be * or a list of entity-tags, e.g. "3f2a..."')
    if not seen:
        raise ValueError("If-Match is empty")
    return frozenset(strong)


def _precondition(draft: Draft, if_match: Collection[str] | None) -> None:
    if if_match is not None and draft.etag not in if_match:
        raise PreconditionFailed(draft.etag)


class Containers:
    """Drafts, versions and releases of every site's container, in ClickHouse.

    The live containers are kept in memory. Every ``ttl`` seconds one query tells whether
    any draft or release changed (in any process: the ``tagwerk container`` command, other
    collectors of a cluster); if so, the cache is dropped. Changes made through this object
    clear it at once.

    ``taken``: the route table's lookup (``collector.routes.taken``); a draft whose tag path
    a route answers is refused. Whoever saves containers for the collector to serve gives
    it (``create_app``, the ``tagwerk container`` command): without it routes go unchecked.
    """

    def __init__(self, store: Store, ttl: float = LIVE_TTL, taken: Taken | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.taken = taken
        self._live: dict[str, Live] = {}
        # Never forgotten, only replaced: what the hot path reads without I/O.
        self._known: dict[str, Live] = {}
        self._paths: dict[str, str] | None = None
        self._generation = b""
        self._epoch = 0  # counts the times the cache was dropped
        self._checked_until = 0.0
        self._lock = threading.Lock()  # one publish or rollback at a time in this process
        self._draft_locks: dict[str, threading.Lock] = {}  # site -> one draft write at a time
        self._paths_lock = threading.Lock()
        # Held from checking that a tag path is free to writing the row that takes it (a
        # draft, a version's release), for every site: two sites saving the same custom path
        # at once both passed the check (probe 41). Within this process: as for drafts, a
        # second process writing between the check and the row is not excluded.
        self._claim_lock = threading.Lock()
        self._fresh_lock = threading.Lock()
        self._stamp_lock = threading.Lock()
        self._last_ms = 0

    def _stamp(self) -> dt.datetime:
        """Now, strictly later than the previous stamp of this process (millisecond steps):
        the newest draft and the newest release win by time."""
        with self._stamp_lock:
            ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._last_ms = ms
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        # Through the insert path (a request body), not parameters: a document may be 256 KB.
        self.store.insert(f"tagwerk.{table}", orjson.dumps(row) + b"\n")

    # -- draft

    def draft(self, site_id: str) -> Draft:
        rows = self.store.rows(
            "SELECT document, policy_hash, updated_at FROM tagwerk.container_drafts FINAL "
            "WHERE site_id = {site:String}", {"site": site_id})
        if not rows:
            doc = default_container()
            return Draft(site_id, doc, container_policy_hash(doc), None,
                         _etag(orjson.dumps(doc).decode(), None))
        row = rows[0]
        updated_at = _iso(row["updated_at"])
        return Draft(site_id, orjson.loads(row["document"]), row["policy_hash"], updated_at,
                     _etag(row["document"], updated_at))

    def put_draft(self, site_id: str, document: Any, origins: Iterable[str] = (), *,
                  if_match: Collection[str] | None = None) -> Draft:
        """Validate and save the draft; ContainerError names the problems. With ``if_match``
        (strong ETags, see :func:`parse_if_match`), only while the draft is one of those:
        else PreconditionFailed, and nothing is saved."""
        check(document, origins, taken=self.taken, site_id=site_id)
        text = orjson.dumps(document).decode()
        policy = container_policy_hash(document)
        # The lock makes compare-and-save atomic within this process (unconditional saves
        # take it too, so none slips in between). ClickHouse has no compare-and-set: a save
        # by another process (``tagwerk container push``, another collector of a cluster)
        # landing between our read of the draft and our insert is overwritten all the same.
        # That window is two queries long (validation stays outside it); closing it would
        # need a transactional store or a single writer.
        lock = self._draft_locks.get(site_id) or self._draft_locks.setdefault(
            site_id, threading.Lock())
        with lock, self._claim_lock:
            if if_match is not None:
                _precondition(self.draft(site_id), if_match)
            self._check_tag_path_free(site_id, document)
            updated_at = time_text(self._stamp())
            self._insert("container_drafts", {
                "site_id": site_id, "document": text, "policy_hash": policy,
                "tag_path": resolved_tag_path(document, site_id), "updated_at": updated_at,
            })
        self.invalidate(site_id)
        return Draft(site_id, document, policy, _iso(updated_at), _etag(text, _iso(updated_at)))

    # -- versions

    def publish(self, site_id: str, note: str = "", origins: Iterable[str] = (), *,
                if_match: Collection[str] | None = None) -> Version:
        """Freeze the draft into the next version and make it live; with ``if_match``, only
        if the draft is one of those ETags (else PreconditionFailed, nothing is written)."""
        check_note(note)
        with self._lock, self._claim_lock:
            draft = self.draft(site_id)
            # What is frozen is this very read, so the version is exactly the draft whose
            # ETag matched, even if another process saves a new draft meanwhile.
            _precondition(draft, if_match)
            check(draft.document, origins, taken=self.taken, site_id=site_id)
            self._check_tag_path_free(site_id, draft.document)
            text = orjson.dumps(draft.document).decode()
            publish_id = str(uuid.uuid4())
            number = self._max_version(site_id) + 1
            for _ in range(10):
                stamp = self._stamp()
                self._insert("container_versions", {
                    "site_id": site_id, "version": number, "document": text,
                    "policy_hash": draft.policy,
                    "tag_path": resolved_tag_path(draft.document, site_id),
                    "note": note, "publish_id": publish_id,
                    "created_at": time_text(stamp),
                })
                # Another process may have published the same number at the same moment:
                # the first row is that version; the other publisher takes the next number.
                winner = self.store.rows(
                    "SELECT publish_id FROM tagwerk.container_versions "
                    "WHERE site_id = {site:String} AND version = {v:UInt32} "
                    "ORDER BY created_at, publish_id LIMIT 1", {"site": site_id, "v": number})
                if winner and winner[0]["publish_id"] == publish_id:
                    break
                number = self._max_version(site_id) + 1
                publish_id = str(uuid.uuid4())
            else:  # pragma: no cover - ten lost races in a row
                raise StorageError("could not publish: concurrent publishes kept winning")
            self._release(site_id, number, "publish", note)
            return Version(site_id, number, draft.policy, note, _iso(time_text(stamp)), True)

    def rollback(self, site_id: str, version: int, note: str = "") -> Version:
        """Make an earlier version live again (a new release; the version is unchanged)."""
        check_note(note)
        with self._lock, self._claim_lock:
            found = self.version(site_id, version)
            if found is None:
                raise NotFound(f"site {site_id!r} has no version {version}")
            # Its tag path may be another site's since: the same check as for a publish.
            self._check_tag_path_free(site_id, found.document or {})
            self._release(site_id, version, "rollback", note)
            return Version(site_id, version, found.policy, found.note, found.created_at, True)

    def _release(self, site_id: str, version: int, action: str, note: str) -> None:
        self._insert("container_releases", {
            "site_id": site_id, "version": version, "action": action, "note": note,
            "release_id": str(uuid.uuid4()), "released_at": time_text(self._stamp()),
        })
        self.invalidate(site_id)

    def _max_version(self, site_id: str) -> int:
        rows = self.store.rows(
            "SELECT max(version) AS v FROM tagwerk.container_versions "
            "WHERE site_id = {site:String}", {"site": site_id})
        return int(rows[0]["v"]) if rows else 0

    def live_version(self, site_id: str) -> int | None:
        """The live version number (not cached); None before the first publish."""
        rows = self.store.rows(
            "SELECT version FROM tagwerk.container_releases WHERE site_id = {site:String} "
            "ORDER BY released_at DESC, release_id DESC LIMIT 1", {"site": site_id})
        return int(rows[0]["version"]) if rows else None

    def versions(self, site_id: str) -> list[Version]:
        live = self.live_version(site_id)
        rows = self.store.rows(
            "SELECT version, policy_hash, note, created_at FROM tagwerk.container_versions "
            "WHERE site_id = {site:String} ORDER BY version, created_at, publish_id "
            "LIMIT 1 BY version", {"site": site_id})
        return [Version(site_id, int(r["version"]), r["policy_hash"], r["note"],
                        _iso(r["created_at"]), int(r["version"]) == live) for r in rows]

    def version(self, site_id: str, version: int) -> Version | None:
        if isinstance(version, bool) or not isinstance(version, int) or \
                not 1 <= version <= MAX_VERSION:
            return None
        rows = self.store.rows(
            "SELECT version, document, policy_hash, note, created_at "
            "FROM tagwerk.container_versions "
            "WHERE site_id = {site:String} AND version = {v:UInt32} "
            "ORDER BY created_at, publish_id LIMIT 1", {"site": site_id, "v": version})
        if not rows:
            return None
        r = rows[0]
        return Version(site_id, version, r["policy_hash"], r["note"], _iso(r["created_at"]),
                       self.live_version(site_id) == version, orjson.loads(r["document"]))

    def releases(self, site_id: str) -> list[dict[str, Any]]:
        """The release history, oldest first."""
        rows = self.store.rows(
            "SELECT version, action, note, released_at FROM tagwerk.container_releases "
            "WHERE site_id = {site:String} ORDER BY released_at, release_id", {"site": site_id})
        return [{"version": int(r["version"]), "action": r["action"], "note": r["note"],
                 "released_at": _iso(r["released_at"])} for r in rows]

    # -- what is served

    def _fresh(self) -> bool:
        """Forget the cached containers when any draft or release changed anywhere: one
        small query per ``ttl`` for all sites. False while ClickHouse cannot be asked (the
        cache is served as it is)."""
        if time.monotonic() < self._checked_until:
            return True
        with self._fresh_lock:
            if time.monotonic() < self._checked_until:
                return True
            try:
                rows = self.store.rows(
                    "SELECT (SELECT (toString(max(released_at)), count()) "
                    "FROM tagwerk.container_releases) AS releases, "
                    "(SELECT (toString(max(updated_at)), count()) "
                    "FROM tagwerk.container_drafts) AS drafts")
            except StorageError:
                self._checked_until = time.monotonic() + self.ttl
                return False
            generation = orjson.dumps(rows)
            if generation != self._generation:
                self._forget()
                self._generation = generation
            self._checked_until = time.monotonic() + self.ttl
            return True

    def live(self, site_id: str) -> Live:
        """The live container (cached); the draft or default before the first publish.
        While ClickHouse is unreachable, the last one seen is served."""
        self._fresh()
        cached = self._live.get(site_id)
        if cached is not None:
            return cached
        epoch = self._epoch
        live = self._load_live(site_id)
        if epoch == self._epoch:  # else it may have been read before a change: do not keep
            self._live[site_id] = live
            self._known[site_id] = live
        return live

    def last_known(self, site_id: str) -> Live | None:
        """The last live container loaded for the site, however old (no I/O)."""
        return self._known.get(site_id)

    async def served(self, site_id: str) -> Live | None:
        """:meth:`live` for the event loop: from memory when fresh, else read in a thread;
        None while ClickHouse cannot be read and nothing is cached."""
        live = self.cached_live(site_id)
        if live is not None:
            return live
        try:
            return await anyio.to_thread.run_sync(self.live, site_id)
        except StorageError as exc:
            log.warning("cannot read the container of %s: %s", site_id, exc)
            return None

    def cached_live(self, site_id: str) -> Live | None:
        """The live container if it is in memory and fresh (no I/O)."""
        if time.monotonic() >= self._checked_until:
            return None
        return self._live.get(site_id)

    def _load_live(self, site_id: str) -> Live:
        number = self.live_version(site_id)
        if number is not None:
            rows = self.store.rows(
                "SELECT document, policy_hash FROM tagwerk.container_versions "
                "WHERE site_id = {site:String} AND version = {v:UInt32} "
                "ORDER BY created_at, publish_id LIMIT 1", {"site": site_id, "v": number})
            if rows:
                text = rows[0]["document"]
                return Live(site_id, number, normalize(orjson.loads(text)),
                            rows[0]["policy_hash"], _digest(text))
        draft = self.draft(site_id)
        text = orjson.dumps(draft.document)
        return Live(site_id, 0, normalize(draft.document), draft.policy, _digest(text))

    def draft_live(self, site_id: str) -> Live:
        """The draft in the served form, for a preview link (not cached: it is being edited)."""
        draft = self.draft(site_id)
        text = orjson.dumps(draft.document)
        return Live(site_id, 0, normalize(draft.document), draft.policy, _digest(text))

    def invalidate(self, site_id: str) -> None:
        self._forget()

    def _forget(self) -> None:
        self._epoch += 1
        self._live.clear()
        self._paths = None

    def cached_tag_paths(self) -> dict[str, str] | None:
        """``custom_tag_paths()`` if it is in memory and fresh (no I/O)."""
        if time.monotonic() >= self._checked_until:
            return None
        return self._paths

    def custom_tag_paths(self) -> dict[str, str]:
        """Custom tag paths of the containers being served: path -> site id (cached)."""
        self._fresh()
        paths = self._paths
        if paths is None:
            with self._paths_lock:
                paths = self._paths
                if paths is None:
                    epoch = self._epoch
                    paths = self._load_paths()
                    if epoch == self._epoch:
                        self._paths = paths
        return paths

    def _load_paths(self) -> dict[str, str]:
        rows = self.store.rows(
            "SELECT r.site_id AS site_id, v.tag_path AS tag_path FROM "
            "(SELECT site_id, argMax(version, (released_at, release_id)) AS version "
            " FROM tagwerk.container_releases GROUP BY site_id) AS r "
            "INNER JOIN "
            "(SELECT site_id, version, argMin(tag_path, (created_at, publish_id)) AS tag_path "
            " FROM tagwerk.container_versions GROUP BY site_id, version) AS v "
            "ON r.site_id = v.site_id AND r.version = v.version "
            "WHERE v.tag_path != '' "
            "UNION ALL "
            "SELECT site_id, tag_path FROM tagwerk.container_drafts FINAL "
            "WHERE tag_path != '' AND site_id NOT IN "
            "(SELECT site_id FROM tagwerk.container_releases)")
        paths: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: r["site_id"]):
            paths.setdefault(row["tag_path"], row["site_id"])  # a clash: the first site wins
        return paths

    def _check_tag_path_free(self, site_id: str, document: Mapping[str, Any]) -> None:
        path = resolved_tag_path(document, site_id)
        if not path:
            return
        owner = self._load_paths().get(path, site_id)
        if owner != site_id:
            raise ContainerError([FieldError(
                "settings.tag_path", f"{path!r} is already the tag path of site {owner!r}")])


class Previews:
    """Preview links for drafts: whoever holds the link sees the site's draft container;
    minting one needs the admin key (api/container.py).

    A token is ``twp_``, a random nonce and a MAC of the nonce (HMAC-SHA256 keyed with
    :func:`preview_key`, derived from the privacy key every collector of one ClickHouse
    shares): a made-up or altered token is refused before any query, so that a cookie anyone
    can send costs no ClickHouse query. A token that passes is looked up (stored as its
    SHA-256): its rows keep expiry and ending authoritative. Ending a token adds a row that
    expires it now; a token is valid until the earliest expiry of its rows. Tokens minted
    before MACs (a bare random string) are refused: they lived at most 24 hours.
    """

    MAX_MINUTES = 24 * 60
    PREFIX = "twp_"
    NONCE = 24  # characters: 18 random bytes
    MAC = 24  # characters: 18 bytes of the HMAC, 144 bits
    LENGTH = len(PREFIX) + NONCE + MAC
    # How long a looked-up token is believed: a token ended through another collector is
    # refused here within it.
    RECHECK = LIVE_TTL
    MAX_REMEMBERED = 10_000

    def __init__(self, store: Store, privacy_key: bytes) -> None:
        self.store = store
        self._key = preview_key(privacy_key)
        # token hash -> (site or None, believed until): only for tokens with a valid MAC,
        # so forged ones cannot fill it.
        self._seen: dict[str, tuple[str | None, float]] = {}

    def _mac(self, nonce: str) -> str:
        mac = hmac.new(self._key, nonce.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:self.MAC * 3 // 4]).decode()

    def authentic(self, token: str) -> bool:
        """Whether ``token`` was minted with this installation's key (no I/O)."""
        if len(token) != self.LENGTH or not token.startswith(self.PREFIX) or \
                not token.isascii():
            return False
        nonce, mac = token[len(self.PREFIX):-self.MAC], token[-self.MAC:]
        return hmac.compare_digest(self._mac(nonce).encode(), mac.encode())

    def create(self, site_id: str, minutes: int = 60) -> tuple[str, dt.datetime]:
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not (
            1 <= minutes <= self.MAX_MINUTES
        ):
            raise ContainerError([FieldError(
                "minutes", f"a whole number of minutes from 1 to {self.MAX_MINUTES}")])
        nonce = secrets.token_urlsafe(self.NONCE * 3 // 4)
        token = self.PREFIX + nonce + self._mac(nonce)
        now = dt.datetime.now(dt.UTC)
        expires = now + dt.timedelta(minutes=minutes)
        self._insert(site_id, hash_key(token), expires, now)
        return token, expires

    def site_of(self, token: str) -> str | None:
        """The site a valid, unexpired, not ended token previews, or None. A token without
        this installation's MAC is refused without a query."""
        if not self.authentic(token):
            return None
        digest = hash_key(token)
        now = time.time()
        seen = self._seen.get(digest)
        if seen is not None and seen[1] > now:
            return seen[0]
        found = self._lookup(digest)
        site_id = found[0] if found else None
        until = min(found[1], now + self.RECHECK) if found else now + self.RECHECK
        self._remember(digest, site_id, until)
        return site_id

    def end(self, token: str) -> bool:
        """End a preview on every collector: a row that expires the token now. False when
        it was not a valid token."""
        if not self.authentic(token):
            return False
        digest = hash_key(token)
        found = self._lookup(digest)
        if found is not None:
            now = dt.datetime.now(dt.UTC)
            # Expired now, not long ago: the table's TTL (expiry + 1 day) keeps this row at
            # least as long as the token's own row could still be valid (24 hours at most).
            self._insert(found[0], digest, now, now)
        self._remember(digest, None, time.time() + self.RECHECK)
        return found is not None

    def _lookup(self, digest: str) -> tuple[str, float] | None:
        """(site, expiry in epoch seconds) of an unexpired token, from ClickHouse."""
        rows = self.store.rows(
            "SELECT any(site_id) AS site_id, toUnixTimestamp64Milli(min(expires_at)) AS expires "
            "FROM tagwerk.container_previews WHERE token_hash = {h:String} "
            "GROUP BY token_hash HAVING min(expires_at) > now64(3)", {"h": digest})
        return (rows[0]["site_id"], int(rows[0]["expires"]) / 1000) if rows else None

    def _insert(self, site_id: str, digest: str, expires: dt.datetime,
                now: dt.datetime) -> None:
        self.store.insert("tagwerk.container_previews", orjson.dumps({
            "site_id": site_id, "token_hash": digest,
            "expires_at": time_text(expires), "created_at": time_text(now),
        }) + b"\n")

    def _remember(self, digest: str, site_id: str | None, until: float) -> None:
        if len(self._seen) >= self.MAX_REMEMBERED:
            self._seen.clear()
        self._seen[digest] = (site_id, until)


def preview_key(privacy_key: bytes) -> bytes:
    """The key of preview tokens' MACs: derived from the privacy key (which every collector
    of one ClickHouse shares), so that a MAC tells nothing of it, nor serves as an erasure
    digest."""
    return hmac.new(privacy_key, b"preview-token", hashlib.sha256).digest()
