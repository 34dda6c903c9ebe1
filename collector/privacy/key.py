"""The installation's privacy key: erasure digests (tombstones, audit rows) are HMAC-SHA256
keyed with it, so that someone who reads the tables but not the key cannot test them
against guessed identifiers (a customer number, an e-mail address's digest).

``TAGWERK_PRIVACY_KEY`` (at least 32 characters) names it; without it a random key is made
once in the data directory (``privacy.key``, readable by the owner only). Every collector
writing to one ClickHouse must use the same key, or none would see the others' tombstones:
ClickHouse keeps the fingerprint of the first key (an HMAC of a fixed text, which tells
nothing of the key), and a collector with another key refuses to start.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from collector.files import write_atomic
from collector.storage import Store

MIN_LENGTH = 32
FILE = "privacy.key"


class KeyMismatch(RuntimeError):
    pass


def load(configured: str, data_dir: Path) -> bytes:
    """The configured key, else the data directory's (made on first use)."""
    if configured:
        if len(configured) < MIN_LENGTH:
            raise ValueError(f"TAGWERK_PRIVACY_KEY must have at least {MIN_LENGTH} characters "
                             "(e.g. the output of: openssl rand -hex 32)")
        return configured.encode()
    path = Path(data_dir) / FILE
    if not path.exists():
        write_atomic(path, secrets.token_hex(32), durable=True)
    return path.read_text().strip().encode()


def digest(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def fingerprint(key: bytes) -> str:
    return digest(key, "tagwerk-privacy-key")


def check(store: Store, key: bytes) -> None:
    """Record the key's fingerprint if none is; refuse a key other than the first recorded
    (two collectors starting at once with different keys: the earlier row wins)."""
    mine = fingerprint(key)
    first = _first(store)
    if first is None:
        store.insert("tagwerk.privacy_key", f'{{"fingerprint": "{mine}"}}'.encode(),
                     "JSONEachRow")
        first = _first(store)
    if first != mine:
        raise KeyMismatch(
            "this collector's privacy key is not the one the others writing to this "
            "ClickHouse use, so erasures would not be honoured across them: give every "
            f"collector the same TAGWERK_PRIVACY_KEY, or copy {FILE} from the first one's "
            "data directory")


def _first(store: Store) -> str | None:
    rows = store.rows("SELECT fingerprint FROM tagwerk.privacy_key "
                      "ORDER BY created_at, fingerprint LIMIT 1")
    return rows[0]["fingerprint"] if rows else None
