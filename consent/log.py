"""A consent decision as posted to ``/consent``, checked and turned into a
``tagwerk.consent_log`` row.

The body is ``{"site", "consent_id", "granted", "denied", "policy", "how", "url"}``
(DESIGN.md §3); ``url`` may be left out, every other field is required, and any other field
is refused. Each problem raises ``DecisionError`` naming the field. The row holds no IP
address: the collector adds only the device class and the country.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from consent.cookie import HOW
from consent.enforce import strip_url
from consent.ids import CONSENT_ID, POLICY_HASH
from consent.purposes import MARKETING, MAX_PURPOSES, is_purpose_id

# The stored row, in this order (the spool keeps rows as JSON arrays).
COLUMNS = ("consent_id", "ts", "received_at", "site_id", "granted", "denied", "policy", "how",
           "url", "device_class", "country")
FIELDS = frozenset({"site", "consent_id", "granted", "denied", "policy", "how", "url"})
REQUIRED = ("consent_id", "granted", "denied", "policy", "how")
MAX_URL = 4096


class DecisionError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def decision_row(
    data: dict[str, Any], site_id: str, received_text: str, device_class: str, country: str
) -> dict[str, Any]:
    """The ``consent_log`` row of one decision (keys in ``COLUMNS`` order).

    ``received_text``: the collector's time, formatted as stored. It is the decision's
    ``ts`` as well: the log is evidence, and the browser's clock is not.
    """
    unknown = data.keys() - FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise DecisionError(f"unknown field {name!r}", name)
    for name in REQUIRED:
        if name not in data:
            raise DecisionError(f"{name!r} is required", name)
    consent_id = data["consent_id"]
    if not isinstance(consent_id, str) or not CONSENT_ID.fullmatch(consent_id):
        raise DecisionError("'consent_id' must be 32 hexadecimal digits", "consent_id")
    policy = data["policy"]
    if not isinstance(policy, str) or not POLICY_HASH.fullmatch(policy):
        raise DecisionError("'policy' must be 16 hexadecimal digits", "policy")
    how = data["how"]
    if not isinstance(how, str) or how not in HOW:
        raise DecisionError(f"'how' must be one of {', '.join(sorted(HOW))}", "how")
    granted = _purposes(data["granted"], "granted")
    denied = _purposes(data["denied"], "denied")
    both = set(granted) & set(denied)
    if both:
        raise DecisionError(f"{sorted(both)[0]!r} is both granted and denied", "denied")
    url = _url(data.get("url"))
    if url and MARKETING not in granted:
        url = strip_url(url)  # the decision itself must not keep what it refused
    return {
        "consent_id": consent_id.lower(),
        "ts": received_text,
        "received_at": received_text,
        "site_id": site_id,
        "granted": granted,
        "denied": denied,
        "policy": policy.lower(),
        "how": how,
        "url": url,
        "device_class": device_class,
        "country": country,
    }


def _purposes(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise DecisionError(f"{name!r} must be a list of purpose ids", name)
    if len(value) > MAX_PURPOSES:
        raise DecisionError(f"{name!r} has more than {MAX_PURPOSES} purposes", name)
    for purpose in value:
        if not is_purpose_id(purpose):
            raise DecisionError(f"{name!r} holds an invalid purpose id", name)
    if len(set(value)) != len(value):
        raise DecisionError(f"{name!r} names a purpose twice", name)
    return sorted(value)


def _url(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise DecisionError("'url' must be a string", "url")
    if len(value) > MAX_URL:
        raise DecisionError(f"'url' is longer than {MAX_URL} characters", "url")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise DecisionError("'url' is not a valid URL", "url") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DecisionError("'url' must be an absolute http(s) URL", "url")
    return value


def in_force(decisions: list[tuple[str, Any]], times: Iterable[str]) -> list[Any]:
    """Of one consent id's decisions, ``(time, decision)`` sorted by time, those in force at
    ``times`` (the hits collected under the id): at each, the latest at or before it, else
    the first (a hit that raced ahead of its decision). Each once, in time order. A shared
    browser keeps one id for whoever uses it: a later person's decision is not an earlier
    one's. Times are ClickHouse's text (``YYYY-MM-DD hh:mm:ss.fff``), compared as such."""
    if not decisions:
        return []
    moments = [moment for moment, _ in decisions]
    chosen = sorted({max(bisect_right(moments, t) - 1, 0) for t in times})
    return [decisions[i][1] for i in chosen]
