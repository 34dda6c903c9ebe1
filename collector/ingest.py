"""The ingestion endpoints: ``POST /collect``, ``GET /p.gif`` and ``POST /api/v1/batch``.

Each request is validated whole before anything is written: one bad event rejects the
request, so a sender never has to guess which part was stored. An accepted request is one
spool record, fsynced before the 2xx.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from collector.clientip import anonymize_ip, client_ip
from collector.events import Context, EventError, normalize
from collector.flusher import encode_record
from collector.geo import UNKNOWN
from collector.http import HTTPError, error_response, json_response, parse_json, read_body
from collector.service import Collector
from collector.sites import Site
from collector.spool import SpoolError, SpoolFull
from collector.useragent import parse_agent

COLLECT_MAX_BYTES = 256 * 1024
COLLECT_MAX_EVENTS = 100
BATCH_MAX_BYTES = 1024 * 1024
BATCH_MAX_EVENTS = 500
PIXEL_MAX_QUERY = 8 * 1024
PIXEL_MAX_FIELDS = 100
COLLECT_TYPES = ("application/json", "text/plain", "")

# The 43-byte transparent 1x1 GIF that nginx's empty_gif serves too.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
PIXEL_HEADERS = ((b"cache-control", b"no-store, max-age=0"),)


def _collector(request: Request) -> Collector:
    return request.app.state.collector


def _cors(site_origin: str | None) -> dict[str, str]:
    if not site_origin:
        return {}
    return {
        "Access-Control-Allow-Origin": site_origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


async def collect(request: Request) -> Response:
    c = _collector(request)
    origin = request.headers.get("origin")
    try:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in COLLECT_TYPES:
            raise HTTPError(415, "send application/json or text/plain", "content_type")
        data = parse_json(await read_body(request, COLLECT_MAX_BYTES))
        if not isinstance(data, dict):
            raise HTTPError(400, "expected a JSON object", "malformed")
        site = await _site(c, data.get("site"))
        if origin and not site.allows_origin(origin):
            raise HTTPError(403, f"origin {origin!r} is not allowed for this site", "origin")
        if "events" in data:
            events, extra = data["events"], data.keys() - {"site", "events"}
            if extra:
                raise HTTPError(400, f"unknown field {sorted(extra)[0]!r} beside 'events'",
                                "invalid", sorted(extra)[0])
            if not isinstance(events, list) or not events:
                raise HTTPError(400, "'events' must be a non-empty list", "invalid", "events")
            if len(events) > COLLECT_MAX_EVENTS:
                raise HTTPError(413, f"more than {COLLECT_MAX_EVENTS} events", "too_many")
        else:
            events = [data]
        ctx = _request_context(c, request, site, "web")
        accepted = await _accept(c, site, [(e, ctx) for e in events], "collect")
    except HTTPError as exc:
        c.metrics.hits_rejected.inc("collect", exc.reason)
        allowed = origin if origin and exc.reason != "origin" and c.sites.any_allows_origin(
            origin) else None
        return error_response(exc, _cors(allowed))
    return json_response({"accepted": accepted}, 202, _cors(origin))


async def collect_preflight(request: Request) -> Response:
    """CORS preflight: the site is in the body, not sent yet, so any site's origin passes here
    and the POST itself is checked against its own site."""
    origin = request.headers.get("origin", "")
    if not origin or not _collector(request).sites.any_allows_origin(origin):
        return json_response({"error": "origin not allowed"}, 403)
    headers = {
        **_cors(origin),
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "86400",
    }
    return Response(status_code=204, headers=headers)


async def pixel(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /p.gif``, as a bare ASGI app: the hottest path, one hit per request, so it
    skips Starlette's request and response objects (a third of its cost)."""
    c: Collector = scope["app_state"]["collector"]
    headers = _headers(scope)
    try:
        raw = _pixel_event(scope.get("query_string", b""))
        site = await _site(c, raw.get("site"))
        channel = raw.get("channel") if isinstance(raw.get("channel"), str) else "web"
        client = scope.get("client")
        ctx = _context(c, site, channel or "web", client[0] if client else "",
                       headers.get(b"x-forwarded-for"), headers.get(b"user-agent", b""))
        await _accept(c, site, [(raw, ctx)], "pixel")
        status, body, media = 200, PIXEL, b"image/gif"
    except HTTPError as exc:
        c.metrics.hits_rejected.inc("pixel", exc.reason)
        status, media = exc.status, b"application/json"
        body = orjson.dumps({"error": exc.message, **({"field": exc.field} if exc.field else {})})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", media), (b"content-length", str(len(body)).encode()),
        *PIXEL_HEADERS]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The few request headers the pixel reads (names arrive lower-cased in ASGI)."""
    return {k: v for k, v in scope["headers"] if k in (b"user-agent", b"x-forwarded-for")}


async def batch(request: Request) -> Response:
    c = _collector(request)
    try:
        site = await _authenticate(c, request)
        data = parse_json(await read_body(request, BATCH_MAX_BYTES))
        if isinstance(data, list):
            data = {"events": data}
        if not isinstance(data, dict) or not isinstance(data.get("events"), list):
            raise HTTPError(400, "expected {\"events\": [...]}", "malformed", "events")
        extra = data.keys() - {"site", "events"}
        if extra:
            raise HTTPError(400, f"unknown field {sorted(extra)[0]!r}", "invalid", sorted(extra)[0])
        if data.get("site", site.site_id) != site.site_id:
            raise HTTPError(403, "this key does not belong to that site", "auth", "site")
        events = data["events"]
        if not events:
            raise HTTPError(400, "'events' is empty", "invalid", "events")
        if len(events) > BATCH_MAX_EVENTS:
            raise HTTPError(413, f"more than {BATCH_MAX_EVENTS} events", "too_many", "events")
        peer = request.client.host if request.client else ""
        received = dt.datetime.now(dt.UTC)
        pairs = [(e, _server_context(c, site, e, peer, received)) for e in events]
        accepted = await _accept(c, site, pairs, "batch")
    except HTTPError as exc:
        c.metrics.hits_rejected.inc("batch", exc.reason)
        return error_response(exc)
    return json_response({"accepted": accepted}, 202)


# -- shared steps ---------------------------------------------------------------------------


async def _site(c: Collector, site_id: Any) -> Site:
    if not isinstance(site_id, str) or not site_id:
        raise HTTPError(400, "'site' is required", "invalid", "site")
    site = c.sites.get(site_id)
    if site is None:
        await run_in_threadpool(c.sites.refresh)
        site = c.sites.get(site_id)
    if site is None:
        raise HTTPError(404, f"unknown site {site_id[:64]!r}", "unknown_site", "site")
    return site


async def _authenticate(c: Collector, request: Request) -> Site:
    """The site whose write key is in ``Authorization`` (Bearer, or Basic with the key as
    user name, as Segment's SDKs send it)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = value.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            key = ""
    if not key:
        raise HTTPError(401, "send the site's write key as 'Authorization: Bearer KEY'", "auth",
                        headers={"WWW-Authenticate": 'Bearer realm="tagwerk"'})
    site = c.sites.by_write_key(key)
    if site is None:
        await run_in_threadpool(c.sites.refresh)
        site = c.sites.by_write_key(key)
    if site is None:
        raise HTTPError(401, "invalid write key", "auth",
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return site


def _request_context(c: Collector, request: Request, site: Site, channel: str) -> Context:
    return _context(c, site, channel, request.client.host if request.client else "",
                    request.headers.get("x-forwarded-for"), request.headers.get("user-agent", ""))


def _context(
    c: Collector,
    site: Site,
    channel: str,
    peer: str,
    forwarded_for: str | bytes | None,
    user_agent: str | bytes,
) -> Context:
    if isinstance(forwarded_for, bytes):
        forwarded_for = forwarded_for.decode("latin-1")
    if isinstance(user_agent, bytes):
        user_agent = user_agent.decode("latin-1")
    ip = client_ip(peer, forwarded_for, c.settings.networks)
    return Context(
        site_id=site.site_id,
        received_at=dt.datetime.now(dt.UTC),
        channel=channel,
        agent=parse_agent(user_agent),
        location=c.geo.lookup(anonymize_ip(ip)) if ip and c.geo.enabled else UNKNOWN,
        retention_days=site.retention_days,
    )


def _server_context(
    c: Collector, site: Site, event: Any, peer: str, received: dt.datetime
) -> Context:
    """A server-side sender may state the shopper's agent and address (never stored)."""
    agent_text = event.get("user_agent") if isinstance(event, dict) else None
    ip = event.get("ip") if isinstance(event, dict) else None
    return Context(
        site_id=site.site_id,
        received_at=received,
        channel="server",
        agent=parse_agent(agent_text) if isinstance(agent_text, str) else parse_agent("server"),
        location=(c.geo.lookup(anonymize_ip(ip)) if isinstance(ip, str) and c.geo.enabled
                  else UNKNOWN),
        retention_days=site.retention_days,
        trusted=True,
    )


async def _accept(c: Collector, site: Site, pairs: list[tuple[Any, Context]], endpoint: str) -> int:
    lines: list[bytes] = []
    given: list[tuple[str, str]] = []
    for index, (raw, ctx) in enumerate(pairs):
        try:
            row, sender_id = normalize(raw, ctx)
        except EventError as exc:
            where = f"events[{index}]" if len(pairs) > 1 else "event"
            field = f"{where}.{exc.field}" if exc.field else where
            raise HTTPError(400, f"{where}: {exc}", "invalid", field) from None
        if row["is_bot"] and site.drop_bots:
            c.metrics.bots_dropped.inc()
            continue
        if sender_id:
            given.append((row["event_id"], row["ts"]))
        lines.append(orjson.dumps(list(row.values())))
    if not lines:
        return 0
    try:
        await c.spool.append(encode_record(lines, site.site_id, given))
    except SpoolFull:
        raise HTTPError(503, "the collector's spool is full; retry later", "spool_full",
                        headers={"Retry-After": "5"}) from None
    except SpoolError:
        raise HTTPError(503, "the collector cannot write to disk; retry later", "spool_error",
                        headers={"Retry-After": "5"}) from None
    c.metrics.hits_accepted.inc(endpoint, by=len(lines))
    return len(lines)


def _pixel_event(query_string: bytes) -> dict[str, Any]:
    """A hit from a query string: ``site``, the event's fields by name, ``props.KEY`` for
    properties, ``consent`` comma-separated, ``items`` as JSON, ``ts`` in ISO or epoch-ms."""
    if len(query_string) > PIXEL_MAX_QUERY:
        raise HTTPError(414, f"query string longer than {PIXEL_MAX_QUERY} bytes", "too_large")
    parts = [p for p in query_string.split(b"&") if p]
    if len(parts) > PIXEL_MAX_FIELDS:
        raise HTTPError(400, f"more than {PIXEL_MAX_FIELDS} query parameters", "too_large")
    try:
        pairs = [(_unquote(k), _unquote(v)) for k, _, v in (p.partition(b"=") for p in parts)]
    except UnicodeDecodeError:
        raise HTTPError(400, "query string is not valid UTF-8", "invalid_utf8") from None
    event: dict[str, Any] = {}
    props: dict[str, str] = {}
    for key, value in pairs:
        if key.startswith("props."):
            target, name = props, key[6:]
        else:
            target, name = event, key
        if name in target:
            raise HTTPError(400, f"{key!r} given twice", "invalid", key)
        target[name] = value
    if props:
        event["props"] = props
    if "consent" in event:
        event["consent"] = [p for p in event["consent"].split(",") if p]
    if "ts" in event and event["ts"].isdigit():
        event["ts"] = int(event["ts"])
    if "items" in event:
        try:
            event["items"] = orjson.loads(event["items"])
        except orjson.JSONDecodeError:
            raise HTTPError(400, "'items' must be a JSON list", "invalid", "items") from None
    return event


def _unquote(raw: bytes) -> str:
    # parse_qsl costs twice as much; most values need no decoding at all.
    if b"%" in raw or b"+" in raw:
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    return raw.decode("utf-8")
