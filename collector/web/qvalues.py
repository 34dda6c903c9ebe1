"""Quality values of HTTP content negotiation (RFC 9110 section 12.4.2), one parser for every
header that weighs its items with ``q=``: ``Accept-Language`` (the banner's texts, the
hit's language), ``Accept-Encoding`` (the tag's files, the SQL interface's answers)."""

from __future__ import annotations

import math
import re

__all__ = ["LANG", "MAX_LANG", "accept_language", "weighted"]

# BCP 47 in its common shape ("de", "de-AT", "zh-Hant-TW"); the banner sends nothing else.
LANG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")  # fullmatch
MAX_LANG = 35
MAX_ACCEPT_LANGUAGE = 1000  # longer headers are ignored, not parsed
MAX_RANGES = 20


def weighted(header: str, limit: int | None = None) -> list[tuple[str, float]]:
    """The items of a comma-separated header with their weights, in the header's order:
    ``"de-DE, de;q=0.9"`` -> ``[("de-DE", 1.0), ("de", 0.9)]``; at most the first ``limit``
    items. The item keeps its case; the ``q`` parameter's name is case-insensitive (``Q=0``
    refuses too). Without ``q`` an item weighs 1; a ``q`` that is not a finite number
    (``q=x``, ``q=nan``) weighs 0, as a negative one does: a weight of 0 or less means "not
    acceptable". Empty items are skipped."""
    items: list[tuple[str, float]] = []
    for part in header.split(",")[:limit]:
        name, _, params = part.partition(";")
        name = name.strip()
        if not name:
            continue
        q = 1.0
        if params:
            for param in params.split(";"):
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    q = _qvalue(value)
        items.append((name, q))
    return items


def _qvalue(text: str) -> float:
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if math.isfinite(q) else 0.0


def accept_language(header: str) -> list[str]:
    """The language ranges of an ``Accept-Language`` header, best first (q > 0; ``*`` and
    malformed entries skipped). Ties keep the header's order."""
    if not header or len(header) > MAX_ACCEPT_LANGUAGE:
        return []
    ranges: list[tuple[float, int, str]] = []
    for i, (tag, q) in enumerate(weighted(header, MAX_RANGES)):
        if q > 0 and tag != "*" and len(tag) <= MAX_LANG and LANG.fullmatch(tag):
            ranges.append((-q, i, tag))
    return [tag for _, _, tag in sorted(ranges)]
