"""The ``Authorization`` header (RFC 9110 section 11.6.2), read the same way by every endpoint
that takes a key: ``Bearer KEY`` (the data and container APIs, the server-side batch),
``Basic base64(user:password)`` (Segment's SDKs send the write key as the user name; the
SQL interface's users)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["ASK_FOR_KEY", "KEY_REFUSED", "basic_credentials", "bearer_token",
           "split_authorization"]

# The WWW-Authenticate header of a 401 (RFC 6750 section 3): no key was sent, or the key
# sent is not one this endpoint takes.
ASK_FOR_KEY = {"WWW-Authenticate": 'Bearer realm="tagwerk"'}
KEY_REFUSED = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def split_authorization(header: str) -> tuple[str, str]:
    """The scheme as sent (compare it lower-cased: schemes are case-insensitive) and the
    credentials after the first space, stripped: ``"Bearer  k "`` -> ``("Bearer", "k")``."""
    scheme, _, credentials = header.partition(" ")
    return scheme, credentials.strip()


def bearer_token(header: str) -> str:
    """The token of ``Bearer TOKEN``, or "" for any other header."""
    scheme, credentials = split_authorization(header)
    return credentials if scheme.lower() == "bearer" else ""


def basic_credentials(header: str) -> tuple[str, str] | None:
    """User and password of ``Basic base64(user:password)`` (no colon: all of it is the
    user), or None when the scheme is another or the credentials are not strict base64 of
    UTF-8 text."""
    scheme, credentials = split_authorization(header)
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password
