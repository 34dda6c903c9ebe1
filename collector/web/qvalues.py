"""Quality values of HTTP content negotiation (RFC 9110 section 12.4.2), one parser for every
header that weighs its items with ``q=``: ``Accept-Language`` (the banner's texts, the
hit's language), ``Accept-Encoding`` (the tag's files, the SQL interface's answers)."""

from __future__ import annotations

import math

__all__ = ["weighted"]


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
