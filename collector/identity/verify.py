"""Identity verification for hits from browsers, as Intercom and others do it: a browser can
claim any user id, so an ``identify`` or ``alias`` from a page links identifiers only when
it carries ``identity_token``, made by the shop's server for that user id:

    token = hex(HMAC-SHA256(key=hex(SHA-256(WRITE_KEY)), message="{site}:{user_id}"))

Only the shop's server knows the write key; the collector keeps its SHA-256 digest (as it
keeps every key), which is what the HMAC is keyed with, so nothing new is stored, and a
new write key invalidates old tokens. Hits from the batch API (the write key itself) need
no token.
"""

from __future__ import annotations

import hashlib
import hmac

from collector.sites import hash_key

TOKEN_LENGTH = 64


def token(write_key_hash: str, site_id: str, user_id: str) -> str:
    message = f"{site_id}:{user_id}".encode()
    return hmac.new(write_key_hash.encode(), message, hashlib.sha256).hexdigest()


def token_for_key(write_key: str, site_id: str, user_id: str) -> str:
    """What the shop's server computes, from the write key itself."""
    return token(hash_key(write_key), site_id, user_id)


def verified(write_key_hash: str, site_id: str, user_id: str, given: str) -> bool:
    if not write_key_hash or len(given) != TOKEN_LENGTH:
        return False
    return hmac.compare_digest(token(write_key_hash, site_id, user_id), given.lower())
