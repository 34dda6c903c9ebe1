"""The ingestion endpoints: ``POST /collect``, ``GET /p.gif`` and ``POST /api/v1/batch``.

Each request is validated whole before anything is written: one bad event rejects the
request, so a sender never has to guess which part was stored. An accepted request is one
spool record, fsynced before the 2xx.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from typing import Any
from urllib.parse import unquote_plus

import orjson
from starlette.types import Send

from collector.ingest import webconsent
from collector.ingest.events import Context, EventError, normalize
from collector.ingest.geo import UNKNOWN
from collector.ingest.useragent import request_agent
from collector.service import Collector
from collector.sites import Site
from collector.spool.disk import SpoolError, SpoolFull
from collector.spool.record import encode_record
from collector.tag.consent_texts import accept_language
from collector.web.authorization import ASK_FOR_KEY, KEY_REFUSED, basic_credentials, bearer_token
from collector.web.clientip import anonymize_ip, client_ip
from collector.web.http import Hit, HTTPError, error_body, header_safe, parse_json, respond

COLLECT_MAX_BYTES = 256 * 1024
COLLECT_MAX_EVENTS = 100
BATCH_MAX_BYTES = 1024 * 1024
BATCH_MAX_EVENTS = 500
PIXEL_MAX_QUERY = 8 * 1024
PIXEL_MAX_FIELDS = 100
COLLECT_TYPES = ("application/json", "text/plain", "")

# The 43-byte transparent 1x1 GIF that nginx's empty_gif serves too.
ORIGIN_NOT_ALLOWED = error_body("origin not allowed")
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
PIXEL_HEADERS = {"Cache-Control": "no-store, max-age=0"}


def cors_headers(origin: str | None) -> dict[str, str]:
    """The CORS headers echoing ``origin`` (one the caller allowed); none for an origin
    that is not a safe header value (``check_origin`` refuses those with a 400)."""
    if not origin or not header_safe(origin):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


async def collect(c: Collector, hit: Hit, send: Send) -> None:
    """``POST /collect``: one event or a batch from the browser. Usually answered by the fast
    path in ``fasthttp.py`` instead (same steps)."""
    origin = hit.headers.get("origin")
    try:
        data, site = await browser_request(c, hit, origin, COLLECT_MAX_BYTES)
        record, count, headers = collect_hits(c, hit, data, site, origin)
        await _store(c, record, count, "collect")
    except HTTPError as exc:
        await browser_refusal(c, send, exc, origin, "collect")
        return
    await respond(send, 202, b'{"accepted":%d}' % count, headers=headers)


def collect_hits(
    c: Collector, hit: Hit, data: dict[str, Any], site: Site, origin: str | None
) -> tuple[bytes, int, dict[str, str]]:
    """A ``/collect`` body of a known site and allowed origin: its spool record, its count
    of hits, and the headers of the 202 (CORS, the ``tw_id`` cookie)."""
    if "events" in data:
        events, extra = data["events"], data.keys() - {"site", "events"}
        if extra:
            name = sorted(extra)[0]
            raise HTTPError(400, f"unknown field {name!r} beside 'events'", "invalid", name)
        if not isinstance(events, list) or not events:
            raise HTTPError(400, "'events' must be a non-empty list", "invalid", "events")
        if len(events) > COLLECT_MAX_EVENTS:
            raise HTTPError(413, f"more than {COLLECT_MAX_EVENTS} events", "too_many")
    else:
        events = [data]
    ctx = hit_context(c, site, "web", hit)
    sw = webconsent.site_web(c.containers, site.site_id)
    web = webconsent.read(hit, ctx, sw, events)  # tw_consent, Sec-GPC, tw_id
    record, count = prepare(c, site, [(e, ctx) for e in events])
    headers = cors_headers(origin)
    device_cookie = webconsent.answer(hit, ctx, sw, web, events[-1], c.settings.networks)
    if device_cookie:
        headers["Set-Cookie"] = device_cookie
    return record, count, headers


async def collect_preflight(c: Collector, hit: Hit, send: Send) -> None:
    """CORS preflight: the site is in the body, not sent yet, so any site's origin passes here
    and the POST itself is checked against its own site."""
    origin = hit.headers.get("origin", "")
    if origin and not header_safe(origin):
        await respond(send, 400, bad_origin().body())
        return
    if not origin or not c.sites.any_allows_origin(origin):
        await respond(send, 403, ORIGIN_NOT_ALLOWED)
        return
    await respond(send, 204, media=b"text/plain", headers={
        **cors_headers(origin),
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": "86400",
    })


async def pixel(c: Collector, hit: Hit, send: Send) -> None:
    """``GET /p.gif``: one hit in the query string; answers the GIF. GET without an
    unknown site usually takes the fast path in ``fasthttp.py`` instead (same steps)."""
    head = hit.method == "HEAD"
    try:
        raw = pixel_event(hit.query_string)
        site = await find_site(c, raw.get("site"))
        await _store(c, *pixel_record(c, hit, raw, site), "pixel")
    except HTTPError as exc:
        await respond(send, exc.status, exc.body(), headers=pixel_refusal_headers(c, exc),
                      head=head)
        return
    await respond(send, 200, PIXEL, b"image/gif", PIXEL_HEADERS, head=head)


def pixel_refusal_headers(c: Collector, exc: HTTPError) -> dict[str, str]:
    """Count a refused pixel; the headers of its answer."""
    c.metrics.hits_rejected.inc("pixel", exc.reason)
    return {**PIXEL_HEADERS, **exc.headers}


def pixel_record(c: Collector, hit: Hit, raw: dict[str, Any], site: Site) -> tuple[bytes, int]:
    """A pixel hit's spool record (empty when the site drops it) and its count of hits."""
    channel = raw.get("channel") if isinstance(raw.get("channel"), str) else "web"
    ctx = hit_context(c, site, channel or "web", hit)
    # Reads tw_id; mints and sets no cookie.
    webconsent.read(hit, ctx, webconsent.site_web(c.containers, site.site_id))
    return prepare(c, site, [(raw, ctx)])


async def batch(c: Collector, hit: Hit, send: Send) -> None:
    """``POST /api/v1/batch``: server-side events with the site's write key."""
    try:
        site = await _authenticate(c, hit)
        data = parse_json(await hit.body(BATCH_MAX_BYTES))
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
        received = dt.datetime.now(dt.UTC)
        pairs = [(e, _server_context(c, site, e, received)) for e in events]
        accepted = await _accept(c, site, pairs, "batch")
    except HTTPError as exc:
        c.metrics.hits_rejected.inc("batch", exc.reason)
        await respond(send, exc.status, exc.body(), headers=exc.headers)
        return
    await respond(send, 202, b'{"accepted":%d}' % accepted)


# -- shared steps (also used by consentlog.py)


async def browser_request(
    c: Collector, hit: Hit, origin: str | None, limit: int
) -> tuple[dict[str, Any], Site]:
    """A browser's JSON POST: its body as an object, and its site, checked against the
    request's origin."""
    check_media(hit)
    data = browser_json(await hit.body(limit))
    site = await find_site(c, data.get("site"))
    check_origin(site, origin)
    return data, site


def check_media(hit: Hit) -> None:
    media = hit.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in COLLECT_TYPES:
        raise HTTPError(415, "send application/json or text/plain", "content_type")


def browser_json(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise HTTPError(400, "expected a JSON object", "malformed")
    return data


def check_origin(site: Site, origin: str | None) -> None:
    if origin:
        if not origin.isascii() or not origin.isprintable():  # header_safe, inline
            raise bad_origin()
        if not site.allows_origin(origin):
            raise HTTPError(403, f"origin {origin!r} is not allowed for this site", "origin")


def bad_origin() -> HTTPError:
    """An ``Origin`` that could not be echoed in a header (a tab, a C1 control such as
    0x85 in latin-1: the HTTP parser lets these through): a browser never sends one."""
    return HTTPError(400, "the Origin header holds a control character", "invalid", "Origin")


async def browser_refusal(
    c: Collector, send: Send, exc: HTTPError, origin: str | None, endpoint: str
) -> None:
    """Answer a refused browser request."""
    await respond(send, exc.status, exc.body(), headers=refusal_headers(c, exc, origin, endpoint))


def refusal_headers(
    c: Collector, exc: HTTPError, origin: str | None, endpoint: str
) -> dict[str, str]:
    """Count a refused browser request; the headers of its answer: with CORS, so that the
    page can read why, unless the origin itself was the problem."""
    c.metrics.hits_rejected.inc(endpoint, exc.reason)
    allowed = (origin if origin and exc.reason != "origin"
               and c.sites.any_allows_origin(origin) else None)
    return {**exc.headers, **cors_headers(allowed)}


async def spool(c: Collector, record: bytes) -> None:
    """Append a record; 503 with Retry-After when the disk cannot take it."""
    try:
        await c.spool.append(record)
    except (SpoolFull, SpoolError) as exc:
        raise spool_refusal(exc) from None


def spool_refusal(exc: SpoolFull | SpoolError) -> HTTPError:
    if isinstance(exc, SpoolFull):
        return HTTPError(503, "the collector's spool is full; retry later", "spool_full",
                         headers={"Retry-After": "5"})
    return HTTPError(503, "the collector cannot write to disk; retry later", "spool_error",
                     headers={"Retry-After": "5"})


async def find_site(c: Collector, site_id: Any) -> Site:
    if not isinstance(site_id, str) or not site_id:
        raise HTTPError(400, "'site' is required", "invalid", "site")
    site = await c.sites.find(site_id)
    if site is None:
        raise HTTPError(404, f"unknown site {site_id[:64]!r}", "unknown_site", "site")
    return site


async def _authenticate(c: Collector, hit: Hit) -> Site:
    """The site whose write key is in ``Authorization`` (Bearer, or Basic with the key as
    user name, as Segment's SDKs send it)."""
    header = hit.headers.get("authorization", "")
    key = bearer_token(header)
    if not key:
        key = (basic_credentials(header) or ("", ""))[0]
    if not key:
        raise HTTPError(401, "send the site's write key as 'Authorization: Bearer KEY'", "auth",
                        headers=ASK_FOR_KEY)
    site = await c.sites.find_by_write_key(key)
    if site is None:
        raise HTTPError(401, "invalid write key", "auth",
                        headers=KEY_REFUSED)
    return site


def hit_context(c: Collector, site: Site, channel: str, hit: Hit) -> Context:
    ip = client_ip(hit.peer, hit.headers.get("x-forwarded-for"), c.settings.networks)
    return Context(
        site_id=site.site_id,
        received_at=dt.datetime.now(dt.UTC),
        channel=channel,
        agent=request_agent(hit.headers.get("user-agent", "")),
        location=c.geo.lookup(anonymize_ip(ip)) if ip and c.geo.enabled else UNKNOWN,
        retention_days=site.retention_days,
        identifier_kinds=site.identifier_kinds,
        identity_key=site.write_key_hash,
        language=preferred_language(hit.headers.get("accept-language", "")),
    )


@functools.lru_cache(maxsize=1024)
def preferred_language(header: str) -> str:
    """The preferred language of an ``Accept-Language`` header ("de-DE,de;q=0.9" -> "de-DE"),
    or "" (none, ``*``, malformed): the banner's texts negotiate with the same parser."""
    ranges = accept_language(header)
    return ranges[0] if ranges else ""


def _server_context(c: Collector, site: Site, event: Any, received: dt.datetime) -> Context:
    """A server-side sender may state the shopper's agent and address (never stored)."""
    agent_text = event.get("user_agent") if isinstance(event, dict) else None
    ip = event.get("ip") if isinstance(event, dict) else None
    return Context(
        site_id=site.site_id,
        received_at=received,
        channel="server",
        agent=request_agent(agent_text if isinstance(agent_text, str) else "server"),
        location=(c.geo.lookup(anonymize_ip(ip)) if isinstance(ip, str) and c.geo.enabled
                  else UNKNOWN),
        retention_days=site.retention_days,
        identifier_kinds=site.identifier_kinds,
        trusted=True,
    )


async def _accept(c: Collector, site: Site, pairs: list[tuple[Any, Context]], endpoint: str) -> int:
    record, count = prepare(c, site, pairs)
    await _store(c, record, count, endpoint)
    return count


async def _store(c: Collector, record: bytes, count: int, endpoint: str) -> None:
    if record:
        await spool(c, record)
        c.metrics.hits_accepted.inc(endpoint, by=count)


def prepare(c: Collector, site: Site, pairs: list[tuple[Any, Context]]) -> tuple[bytes, int]:
    """Validate and normalise a request's hits: its spool record (empty when the site
    drops them all) and the number of hits in it. Raises HTTPError naming the field."""
    lines: list[bytes] = []
    given: list[tuple[str, str]] = []
    guessed: dict[str, str] = {}
    for index, (raw, ctx) in enumerate(pairs):
        try:
            row, sender_id = normalize(raw, ctx)
        except EventError as exc:
            where = f"events[{index}]" if len(pairs) > 1 else "event"
            field = f"{where}.{exc.field}" if exc.field else where
            raise HTTPError(400, f"{where}: {exc}", "invalid", field) from None
        if c.tombstones.blocks(site.site_id, row):
            c.metrics.erased_dropped.inc()  # it names a person who was erased
            continue
        if row["is_bot"] and site.drop_bots:
            c.metrics.bots_dropped.inc()
            continue
        if site.drop_without_consent and not ctx.trusted and "analytics" not in row["consent"]:
            c.metrics.consent_dropped.inc()  # web hits only: a server states its own consent
            continue
        if sender_id:
            given.append((row["event_id"], row["ts"]))
        if ctx.agent.pending:  # a first guess: the flusher writes the accurate answer
            guessed[row["event_id"]] = ctx.agent.pending
        try:
            lines.append(orjson.dumps(list(row.values())))
        except orjson.JSONEncodeError:  # normalize lets nothing through that fails here
            where = f"events[{index}]" if len(pairs) > 1 else "event"
            field = f"{where}.{_unstorable(row)}"
            raise HTTPError(400, f"{field} cannot be stored as JSON", "invalid", field) from None
    if not lines:
        return b"", 0
    return encode_record(lines, site.site_id, given, guessed=guessed,
                         drop_bots=site.drop_bots), len(lines)


def _unstorable(row: dict[str, Any]) -> str:
    """The first column of ``row`` that orjson cannot serialise (for the error's field)."""
    for name, value in row.items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return name
    return "event"


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
                key = unquote_plus(key, errors="strict")
            if "%" in value or "+" in value:
                value = unquote_plus(value, errors="strict")
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


def _bad_utf8() -> HTTPError:
    return HTTPError(400, "query string is not valid UTF-8", "invalid_utf8")
