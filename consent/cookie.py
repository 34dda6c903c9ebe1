"""The cookies of DESIGN.md: ``tw_consent`` (written by the tag) and ``tw_id`` (by the collector).

``tw_consent`` is ``v1.<consent id>.<policy hash>.<granted>.<unix seconds>.<how>``:

- consent id: 32 hex digits (stored lower-case, as ``/consent`` stores it);
- policy hash: 16 hex digits (``consent.policy.policy_hash``);
- granted: purpose ids, comma-separated (``%2C`` too: ``encodeURIComponent`` writes that),
  each at most once, possibly none (a rejection of everything optional);
- unix seconds: when the person decided. Expiry is the browser's business (the cookie's own
  lifetime); the collector refuses only a time more than ``MAX_AGE_DAYS`` away from now,
  which no real cookie has;
- how: ``banner``, ``api``, ``gcm`` or ``gpc``.

Anything else is malformed, and a malformed cookie means "no decision" (``None``): never an
exception, whatever the bytes. Everything here is pure and cheap; the collector calls it on
every web hit that carries a cookie.

``tw_id`` is ``<22 URL-safe base64 characters: 128 random bits>.<unix day it was set>``. The
id is the device id; the day lets the collector refresh the cookie's lifetime at most once a
day per device without remembering anything itself.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import secrets
import threading
from dataclasses import dataclass

from consent.ids import CONSENT_ID_PATTERN, POLICY_HASH_PATTERN
from consent.purposes import MAX_PURPOSES, PURPOSE_PATTERN

CONSENT_COOKIE = "tw_consent"
DEVICE_COOKIE = "tw_id"
HOW = frozenset({"banner", "api", "gcm", "gpc"})
MAX_AGE_DAYS = 3650
MAX_COOKIE_LENGTH = 600  # a real value is well under 200 characters
DEVICE_MAX_AGE = 34_128_000  # 13 months: 395 days
_CONSENT = re.compile(
    rf"v1\.({CONSENT_ID_PATTERN})\.({POLICY_HASH_PATTERN})\.((?:{PURPOSE_PATTERN}(?:,{PURPOSE_PATTERN})*)?)"
    r"\.([0-9]{1,12})\.(banner|api|gcm|gpc)"
)
_OURS = re.compile(rf"(?:^|;)[ \t]*({CONSENT_COOKIE}|{DEVICE_COOKIE})=([^;]*)")
_DEVICE = re.compile(r"^([A-Za-z0-9_-]{22})(?:\.([0-9]{1,7}))?$")


@dataclass(frozen=True, slots=True)
class ConsentCookie:
    consent_id: str
    policy: str
    granted: frozenset[str]
    decided_at: int  # unix seconds
    how: str


def parse_consent(value: str, now: float, policy: str = "") -> ConsentCookie | None:
    """A valid ``tw_consent`` value, or None. ``policy``: the container's current policy
    hash when the collector knows it ("" skips that check); a cookie for another policy is
    stale: the banner asks again, so it records no decision that still holds."""
    if not isinstance(value, str) or len(value) > MAX_COOKIE_LENGTH:
        return None
    cookie = _parse_consent(value)
    if cookie is None or abs(now - cookie.decided_at) > MAX_AGE_DAYS * 86400:
        return None
    if policy and cookie.policy != policy.lower():
        return None
    return cookie


@functools.lru_cache(maxsize=8192)  # a browser sends the same value with every hit
def _parse_consent(value: str) -> ConsentCookie | None:
    if len(value) >= 2 and value[0] == value[-1] == '"':  # RFC 6265 allows a quoted value
        value = value[1:-1]
    if "%" in value:
        value = value.replace("%2C", ",").replace("%2c", ",")
    match = _CONSENT.fullmatch(value)
    if match is None:
        return None
    consent_id, policy_hash, granted_text, seconds, how = match.groups()
    granted = granted_text.split(",") if granted_text else []
    if len(granted) > MAX_PURPOSES or len(set(granted)) != len(granted):
        return None
    return ConsentCookie(consent_id.lower(), policy_hash.lower(), frozenset(granted),
                         int(seconds), how)


def latest_consent(values: list[str], now: float, policy: str = "") -> ConsentCookie | None:
    """The newest valid decision among the ``tw_consent`` values a request carries (a
    browser sends two when, say, ``cookie_domain`` changed): the person's latest word."""
    best = None
    for value in values:
        cookie = parse_consent(value, now, policy)
        if cookie is not None and (best is None or cookie.decided_at > best.decided_at):
            best = cookie
    return best


def read_cookies(header: str | None) -> tuple[list[str], list[str]]:
    """The ``tw_consent`` and ``tw_id`` values in a ``Cookie`` header (each name may appear
    more than once). Other cookies are skipped without being decoded."""
    consent: list[str] = []
    device: list[str] = []
    if not header or "tw_" not in header:
        return consent, device
    # One scan in C: a browser's Cookie header often holds dozens of other cookies.
    for name, value in _OURS.findall(header):
        (consent if name == CONSENT_COOKIE else device).append(value.strip())
    return consent, device


@dataclass(frozen=True, slots=True)
class DeviceCookie:
    device_id: str
    day: int  # unix day when the collector last set it; 0 if unknown


def parse_device(values: list[str]) -> DeviceCookie | None:
    """The first valid ``tw_id`` value, or None."""
    for value in values:
        device = _parse_device(value) if len(value) <= 30 else None  # 22 + "." + 7 digits
        if device is not None:
            return device
    return None


@functools.lru_cache(maxsize=8192)
def _parse_device(value: str) -> DeviceCookie | None:
    match = _DEVICE.fullmatch(value)
    return DeviceCookie(match.group(1), int(match.group(2) or 0)) if match else None


class _RandomPool:
    """Random bytes from the OS, fetched 4 KiB at a time: one ``getrandom`` call per 256
    device ids instead of one per id (a syscall per first hit showed in the profile).
    Still unpredictable: only the batching changes, not the source."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._data = b""
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._data = b""  # a child must not hand out its parent's bytes

    def take(self, n: int) -> bytes:
        with self._lock:
            if len(self._data) < n:
                self._data = secrets.token_bytes(self.size)
            chunk, self._data = self._data[:n], self._data[n:]
        return chunk


_pool = _RandomPool()


def new_device_id() -> str:
    """128 random bits, URL-safe base64 without padding: 22 characters."""
    return base64.urlsafe_b64encode(_pool.take(16)).rstrip(b"=").decode()


# What a cookie value may hold here: RFC 6265 cookie-octets (no space, no semicolon or
# backslash, a quote only around the whole value) and the comma, which the tag writes in
# tw_consent and browsers take; no control character.
_COOKIE_VALUE = re.compile(r'"?[!#-:<-\[\]-~]*"?')
COOKIE_DOMAIN = re.compile(r"\.?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def cookie_domain_ok(domain: str) -> bool:
    """Whether ``domain`` can be a cookie's ``Domain`` attribute ("" = none)."""
    return not domain or (len(domain) <= 253 and COOKIE_DOMAIN.fullmatch(domain) is not None)


def _set_cookie(name: str, value: str, attributes: str, domain: str) -> str:
    """A ``Set-Cookie`` value. The value and Domain never come from a request unchecked;
    this refuses (ValueError) anything else all the same: a CR or LF would end the header
    and start another, a ``;`` would add an attribute."""
    if not _COOKIE_VALUE.fullmatch(value) or not cookie_domain_ok(domain):
        raise ValueError(f"refusing to set cookie {name} to {value!r} for {domain!r}")
    return f"{name}={value}; {attributes}{f'; Domain={domain}' if domain else ''}"


def device_set_cookie(device_id: str, day: int, secure: bool, domain: str = "") -> str:
    """The ``Set-Cookie`` value that (re)sets ``tw_id`` for 13 months."""
    return _set_cookie(DEVICE_COOKIE, f"{device_id}.{day}",
                       f"Path=/; Max-Age={DEVICE_MAX_AGE}; HttpOnly; SameSite=Lax"
                       f"{'; Secure' if secure else ''}", domain)


def consent_set_cookie(value: str, max_age: int, secure: bool, domain: str = "") -> str:
    """The ``Set-Cookie`` value with which the collector sets ``tw_consent`` again: the tag's
    own cookie (the same value, Path and Domain, readable by script: the tag reads it) for
    the decision's remaining lifetime."""
    return _set_cookie(CONSENT_COOKIE, value, f"Path=/; Max-Age={int(max_age)}; SameSite=Lax"
                       f"{'; Secure' if secure else ''}", domain)


def device_clear_cookie(secure: bool, domain: str = "") -> str:
    """The ``Set-Cookie`` value that removes ``tw_id`` (same Path and Domain as when set)."""
    return _set_cookie(DEVICE_COOKIE, "", "Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 "
                       f"00:00:00 GMT; HttpOnly; SameSite=Lax{'; Secure' if secure else ''}",
                       domain)
