"""The wire formats: each turns a request into plain data, and says how it is answered.

An adapter knows its format and nothing else: where the request's site and hits are
(``parse``, then ``events``), which checks come before its body is read (``check_head``),
what its channel is, and the kind of answer (a GIF, or ``202 {"accepted": n}`` with or
without CORS). What happens to the hits is ``accept.py``'s, whichever driver (``asgi.py``,
``fasthttp.py``) read the request. A new wire format is one more adapter here and one
line in the route table (``collector/routes.py``).
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import unquote_plus

import orjson

from collector.ingest.answers import (
    PIXEL,
    PIXEL_HEADERS,
    Answer,
    browser_refusal_headers,
    cors_headers,
)
from collector.service import Collector
from collector.sites import Site
from collector.web.http import Hit, HTTPError, parse_json

COLLECT_MAX_BYTES = 256 * 1024
COLLECT_MAX_EVENTS = 100
BATCH_MAX_BYTES = 1024 * 1024
BATCH_MAX_EVENTS = 500
CONSENT_MAX_BYTES = 8 * 1024
PIXEL_MAX_QUERY = 8 * 1024
PIXEL_MAX_FIELDS = 100
UNESCAPE_CACHED = 512  # characters: a longer escaped query part is not cached
COLLECT_TYPES = ("application/json", "text/plain", "")

_PIXEL_ANSWER: Answer = (200, PIXEL, b"image/gif", PIXEL_HEADERS)


def pixel_event(query_string: bytes) -> dict[str, Any]:
    """A hit from a query string: ``site``, the event's fields by name, ``props.KEY`` for
    properties, ``consent`` comma-separated, ``items`` as JSON, ``ts`` in ISO or epoch-ms."""
    if len(query_string) > PIXEL_MAX_QUERY:
        raise HTTPError(414, f"query string longer than {PIXEL_MAX_QUERY} bytes", "too_large")
    try:  # raw bytes must be UTF-8 as much as escaped ones
        parts = [p for p in query_string.decode().split("&") if p]
    except UnicodeDecodeError:
        raise _bad_utf8() from None
    if len(parts) > PIXEL_MAX_FIELDS:
        raise HTTPError(400, f"more than {PIXEL_MAX_FIELDS} query parameters", "too_large")
    event: dict[str, Any] = {}
    props: dict[str, str] = {}
    for part in parts:
        key, _, value = part.partition("=")
        try:  # most parts need no unescaping
            if "%" in key or "+" in key:
                key = _unescape(key)
            if "%" in value or "+" in value:
                value = _unescape(value)
        except UnicodeDecodeError:
            raise _bad_utf8() from None
        if key.startswith("props."):
            target, name = props, key[6:]
        else:
            target, name = event, key
        if name in target:
            raise HTTPError(400, f"{key!r} given twice", "invalid", key)
        target[name] = value
    if props:
        if "props" in event:  # not overwritten: the event's props come as props.KEY only
            raise HTTPError(400, "'props' and 'props.KEY' parameters together: give "
                            "properties as props.KEY", "invalid", "props")
        event["props"] = props
    if "consent" in event:
        event["consent"] = [p for p in event["consent"].split(",") if p]
    ts = event.get("ts")
    if ts is not None and ts.isdigit() and ts.isascii() and len(ts) <= 16:  # epoch-ms
        event["ts"] = int(ts)  # else a string: "²" or 5,000 digits are no ISO time either
    if "items" in event:
        try:
            event["items"] = orjson.loads(event["items"])
        except orjson.JSONDecodeError:
            raise HTTPError(400, "'items' must be a JSON list", "invalid", "items") from None
    return event


def _unescape(text: str) -> str:
    """An escaped part of a query string as text; raises UnicodeDecodeError if the bytes it
    escapes are not UTF-8. Short ones are cached: the same page URLs and campaign names come
    again and again (~0.2 us a hit instead of ~1.5 us for a URL)."""
    if len(text) > UNESCAPE_CACHED:
        return unquote_plus(text, errors="strict")
    return _unescape_cached(text)


@functools.lru_cache(maxsize=4096)  # at most ~4096 x 2 x 512 characters
def _unescape_cached(text: str) -> str:
    return unquote_plus(text, errors="strict")  # an error is raised, not cached


def _bad_utf8() -> HTTPError:
    return HTTPError(400, "query string is not valid UTF-8", "invalid_utf8")


class Adapter:
    """A wire format. ``name`` labels its metrics; ``body_limit`` is 0 when the hit is in
    the query string. ``keyed``: the site is the one of the write key in ``Authorization``
    (else the data's ``site``). ``web``: a browser's hits, enriched from the request and
    under its web consent (else a server's, trusted, ``channel`` "server"). ``cookies``: the
    answer sets or clears ``tw_id``. ``cors``: the origin is checked against the site's and
    every answer carries CORS headers."""

    name = ""
    body_limit = 0
    keyed = False
    web = True
    cookies = False
    cors = False
    head_checks = False  # check_head has checks (else the drivers skip the call)

    def check_head(self, hit: Hit) -> None:
        """Refuse what the head alone says is wrong, before the body is read."""

    def parse(self, payload: bytes) -> dict[str, Any]:
        """The request's data from its body (or query string): ``site`` and the hits."""
        raise NotImplementedError

    def events(self, data: dict[str, Any], site: Site) -> list[Any]:
        """The raw hits of ``data``, a request of ``site``."""
        return [data]

    def channel(self, data: dict[str, Any]) -> str:
        return "web"

    def accepted(self, count: int, origin: str | None, cookie: str | None) -> Answer:
        """The answer to an accepted request of ``count`` hits."""
        headers = cors_headers(origin) if self.cors else {}
        if cookie:
            headers["Set-Cookie"] = cookie
        return 202, b'{"accepted":%d}' % count, b"application/json", headers or None

    def refused(self, c: Collector, exc: HTTPError, origin: str | None) -> dict[str, str]:
        """Count a refused request; the headers of its answer."""
        if self.cors:
            return browser_refusal_headers(c, exc, origin, self.name)
        c.metrics.hits_rejected.inc(self.name, exc.reason)
        return exc.headers


class BrowserJSON(Adapter):
    """A browser's JSON POST (``text/plain`` too: sendBeacon and no preflight)."""

    cors = True
    head_checks = True

    def check_head(self, hit: Hit) -> None:
        media = hit.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in COLLECT_TYPES:
            raise HTTPError(415, "send application/json or text/plain", "content_type")

    def parse(self, payload: bytes) -> dict[str, Any]:
        data = parse_json(payload)
        if not isinstance(data, dict):
            raise HTTPError(400, "expected a JSON object", "malformed")
        return data


class Collect(BrowserJSON):
    """``POST /collect``: one event, or ``{"site", "events": [...]}``, from the tag."""

    name = "collect"
    body_limit = COLLECT_MAX_BYTES
    cookies = True

    def events(self, data: dict[str, Any], site: Site) -> list[Any]:
        if "events" not in data:
            return [data]
        events, extra = data["events"], data.keys() - {"site", "events"}
        if extra:
            name = sorted(extra)[0]
            raise HTTPError(400, f"unknown field {name!r} beside 'events'", "invalid", name)
        if not isinstance(events, list) or not events:
            raise HTTPError(400, "'events' must be a non-empty list", "invalid", "events")
        if len(events) > COLLECT_MAX_EVENTS:
            raise HTTPError(413, f"more than {COLLECT_MAX_EVENTS} events", "too_many")
        return events


class Consent(BrowserJSON):
    """``POST /consent``: one consent decision (``consentlog.py`` makes its row)."""

    name = "consent"
    body_limit = CONSENT_MAX_BYTES


class Pixel(Adapter):
    """``GET /p.gif``: one hit in the query string, answered with a GIF. It reads ``tw_id``
    but sets no cookie, and checks no origin (an image sends none)."""

    name = "pixel"

    # The query string's own parser, without a method in between: one call less per hit.
    parse = staticmethod(pixel_event)  # type: ignore[assignment]

    def channel(self, data: dict[str, Any]) -> str:
        channel = data.get("channel")
        return channel if isinstance(channel, str) and channel else "web"

    def accepted(self, count: int, origin: str | None, cookie: str | None) -> Answer:
        return _PIXEL_ANSWER

    def refused(self, c: Collector, exc: HTTPError, origin: str | None) -> dict[str, str]:
        c.metrics.hits_rejected.inc(self.name, exc.reason)
        return {**PIXEL_HEADERS, **exc.headers}


class Batch(Adapter):
    """``POST /api/v1/batch``: ``{"events": [...]}`` or a bare list, from a server holding the
    site's write key."""

    name = "batch"
    body_limit = BATCH_MAX_BYTES
    keyed = True
    web = False

    def parse(self, payload: bytes) -> dict[str, Any]:
        data = parse_json(payload)
        if isinstance(data, list):
            data = {"events": data}
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise HTTPError(400, "expected {\"events\": [...]}", "malformed", "events")
        extra = data.keys() - {"site", "events"}
        if extra:
            raise HTTPError(400, f"unknown field {sorted(extra)[0]!r}", "invalid", sorted(extra)[0])
        return data

    def events(self, data: dict[str, Any], site: Site) -> list[Any]:
        if data.get("site", site.site_id) != site.site_id:
            raise HTTPError(403, "this key does not belong to that site", "auth", "site")
        events = data["events"]
        if not events:
            raise HTTPError(400, "'events' is empty", "invalid", "events")
        if len(events) > BATCH_MAX_EVENTS:
            raise HTTPError(413, f"more than {BATCH_MAX_EVENTS} events", "too_many", "events")
        return events


PIXEL_HIT = Pixel()
COLLECT = Collect()
BATCH = Batch()
CONSENT = Consent()
