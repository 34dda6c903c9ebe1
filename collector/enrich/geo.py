"""IP geolocation from a MaxMind DB with the GeoLite2/GeoIP2 City layout."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import maxminddb

__all__ = ["CACHE_SIZE", "UNKNOWN", "GeoIP", "Location"]

# Hits arrive with anonymised (/24, /48) addresses, so few distinct keys are hot.
CACHE_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Location:
    country: str  # ISO 3166-1 alpha-2, "" if unknown
    region: str  # ISO 3166-2 code of the first subdivision without the country, e.g. "BE"
    city: str  # English city name, "" if unknown


UNKNOWN = Location("", "", "")


class GeoIP:
    """Look up locations in a MaxMind DB; ``path=None`` disables geolocation."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._reader = None if path is None else _open(path)
        # Per instance rather than on the method: a method cache would be shared by
        # all instances and would keep closed readers alive.
        self._cached_lookup = functools.lru_cache(maxsize=CACHE_SIZE)(self._lookup)

    @property
    def enabled(self) -> bool:
        return self._reader is not None

    def lookup(self, ip: str) -> Location:
        """Return the location of ``ip``; UNKNOWN if it is malformed or not in the DB."""
        return self._cached_lookup(ip)

    def cache_info(self) -> functools._CacheInfo:
        return self._cached_lookup.cache_info()

    def close(self) -> None:
        reader, self._reader = self._reader, None
        self._cached_lookup.cache_clear()
        if reader is not None:
            reader.close()

    def _lookup(self, ip: str) -> Location:
        reader = self._reader
        if reader is None or not ip:
            return UNKNOWN
        try:
            record = reader.get(ip)
        except Exception:
            # Best effort: a hit is never dropped or failed because of geolocation.
            # ValueError (malformed ip, IPv6 in an IPv4 DB, reader closed) is the
            # expected case; corrupt records raise InvalidDatabaseError and others.
            return UNKNOWN
        if not isinstance(record, Mapping):
            return UNKNOWN
        subdivisions = record.get("subdivisions")
        first = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
        names = _get(record.get("city"), "names")
        return Location(
            country=_str(_get(record.get("country"), "iso_code")),
            region=_str(_get(first, "iso_code")),
            city=_str(_get(names, "en")),
        )


def _open(path: str | os.PathLike[str]) -> maxminddb.Reader:
    # Misconfiguration must stop the collector at start, not fail on every hit.
    if not os.path.isfile(path):
        raise ValueError(f"GeoIP database not found: {os.fspath(path)!r}")
    try:
        # AUTO picks the C extension (mmap'd, ~6x faster uncached than the pure-Python
        # reader) and falls back to what the platform supports.
        return maxminddb.open_database(path, maxminddb.MODE_AUTO)
    except Exception as exc:
        # Garbage files raise anything from InvalidDatabaseError to TypeError.
        raise ValueError(
            f"GeoIP database {os.fspath(path)!r} is not a readable MaxMind DB: {exc}"
        ) from exc


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
