"""The one step sequence from a request's plain data to its spool record.

Whatever the wire format (``adapters.py``) and whoever read the request (``asgi.py``,
``fasthttp.py``):

1. the site: by the write key in ``Authorization`` (``site_by_key``, before the body is
   read) or by the data's ``site`` (``find_site``): :func:`read`, or :func:`read_now`
   without waiting (the fast path);
2. :func:`accept`: the origin checked against the site's, the adapter's own checks of the
   hits, the request's ``Context`` (address, agent, language; ``webconsent``: the consent
   cookie, ``Sec-GPC``, ``tw_id``), each hit validated and normalised (``events``) and
   dropped where a rule says so (erased person, bot, no consent), and the rows encoded as
   one spool record (``collector.spool.record``);
3. the driver hands the record to the spool (``spool``, or ``Spool.submit`` on the fast
   path) and answers 2xx once it is on disk.

Each request is checked whole before anything is written: one bad hit refuses the request,
so a sender never has to guess which part was stored.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any

import orjson

from collector.enrich.geo import UNKNOWN
from collector.enrich.useragent import request_agent
from collector.ingest import webconsent
from collector.ingest.adapters import Adapter
from collector.ingest.events import Context, EventError, normalize
from collector.service import Collector
from collector.sites import Site
from collector.spool.disk import SpoolError, SpoolFull
from collector.spool.record import encode_record
from collector.web.authorization import ASK_FOR_KEY, KEY_REFUSED, basic_credentials, bearer_token
from collector.web.clientip import anonymize_ip, client_ip, is_public
from collector.web.http import Hit, HTTPError, decode_body
from collector.web.qvalues import accept_language
from collector.web.ratelimit import RateLimits, buckets

# A browser's events and items a second per client, and its burst (``spend``): a page
# sends a few events, a product list up to 200 items each; an office or a carrier's NAT is
# many visitors. An IPv6 client's /48 has BUDGET_PREFIX_SHARE times its /64's.
BUDGET_RATE = 2_000.0
BUDGET_BURST = 20_000.0
BUDGET_PREFIX_SHARE = 4

# -- 1. the site ------------------------------------------------------------------------------


async def read(
    c: Collector, adapter: Adapter, hit: Hit, body: bytes | None = None
) -> tuple[Site, dict[str, Any]]:
    """The request's site and data, in the order its checks answer: the write key, the
    head, the body (read from ``hit`` unless given, as read by the fast path), the site."""
    site = await site_by_key(c, hit) if adapter.keyed else None
    if adapter.head_checks:
        adapter.check_head(hit)
    if adapter.web:
        check_budget(c, hit)
    if not adapter.body_limit:
        payload = hit.query_string
    elif body is None:
        payload = await hit.body(adapter.body_limit)
    else:
        payload = decode_body(hit.headers, body, adapter.body_limit)
    data = adapter.parse(payload)
    if site is None:
        site = await find_site(c, data.get("site"))
    return site, data


def read_now(
    c: Collector, adapter: Adapter, hit: Hit, payload: bytes
) -> tuple[Site, dict[str, Any]] | None:
    """:func:`read` without waiting, for the fast path, on the request's query string or
    body as sent: None when its key or site is not known yet (:func:`read` then waits for
    a reload of the sites). The same checks in the same order."""
    site = c.sites.by_write_key(write_key(hit)) if adapter.keyed else None
    if adapter.keyed and site is None:
        return None
    if adapter.head_checks:
        adapter.check_head(hit)
    if adapter.web:
        check_budget(c, hit)
    if adapter.body_limit:
        payload = decode_body(hit.headers, payload, adapter.body_limit)
    data = adapter.parse(payload)
    if site is None:
        site_id = data.get("site")
        site = c.sites.get(site_id) if isinstance(site_id, str) else None
        if site is None:
            return None
    return site, data


async def find_site(c: Collector, site_id: Any) -> Site:
    if site_id is not None and not isinstance(site_id, str):
        raise HTTPError(400, "'site' must be a string", "invalid", "site")
    if not site_id:
        raise HTTPError(400, "'site' is required", "invalid", "site")
    site = await c.sites.find(site_id)
    if site is None:
        raise HTTPError(404, f"unknown site {site_id[:64]!r}", "unknown_site", "site")
    return site


def write_key(hit: Hit) -> str:
    """The write key in ``Authorization`` (Bearer, or Basic with the key as user name, as
    Segment's SDKs send it); 401 without one."""
    header = hit.headers.get("authorization", "")
    key = bearer_token(header)
    if not key:
        key = (basic_credentials(header) or ("", ""))[0]
    if not key:
        raise HTTPError(401, "send the site's write key as 'Authorization: Bearer KEY'", "auth",
                        headers=ASK_FOR_KEY)
    return key


async def site_by_key(c: Collector, hit: Hit) -> Site:
    """The site whose write key the request carries."""
    site = await c.sites.find_by_write_key(write_key(hit))
    if site is None:
        raise HTTPError(401, "invalid write key", "auth", headers=KEY_REFUSED)
    return site


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


# -- 2. accept ------------------------------------------------------------------------------


def accept(
    c: Collector, adapter: Adapter, hit: Hit, site: Site, data: dict[str, Any],
    origin: str | None,
) -> tuple[bytes, int, str | None]:
    """A request of a known site: its spool record (empty when the site drops every hit),
    its count of hits, and the ``Set-Cookie`` of its answer (``tw_id``), if any. Raises
    HTTPError naming the field of the first problem."""
    if adapter.cors:
        check_origin(site, origin)
    events = adapter.events(data, site)
    if not adapter.web:
        received = dt.datetime.now(dt.UTC)
        contexts = [server_context(c, site, event, received) for event in events]
        if not contexts:
            return b"", 0, None
        record, count = events_record(c, site, events, contexts[0], contexts)
        return record, count, None
    ip = client_address(c, hit)
    spend(c, ip, events)
    ctx = hit_context(c, site, adapter.channel(data), hit, ip)
    if not ctx.client_hash:  # (an operator's missing proxy declaration shows here)
        c.metrics.hits_without_client.inc(by=len(events))
    sw = webconsent.site_web(c.containers, site.site_id)
    trusted = webconsent.trusts(site, origin)
    if not adapter.cookies or not trusted:
        # Reads tw_id (not from a page the site does not name); mints and sets no cookie.
        webconsent.read(hit, ctx, sw, cookies=trusted)
        record, count = events_record(c, site, events, ctx)
        return record, count, None
    web = webconsent.read(hit, ctx, sw, events)  # tw_consent, Sec-GPC, tw_id
    record, count = events_record(c, site, events, ctx)
    return record, count, webconsent.answer(hit, ctx, sw, web, events[-1], c.settings.networks)


def client_address(c: Collector, hit: Hit) -> str:
    """The browser's address: the peer's, or the one a trusted proxy forwarded ("" if
    none is known); worked out once a request (the budget's check asks first)."""
    if hit.client is None:
        hit.client = client_ip(hit.peer, hit.headers.get("x-forwarded-for"),
                               c.settings.networks)
    return hit.client


def hit_context(c: Collector, site: Site, channel: str, hit: Hit, ip: str) -> Context:
    return Context(
        site_id=site.site_id,
        received_at=dt.datetime.now(dt.UTC),
        channel=channel,
        # Only browsers and e-mail clients call these endpoints (useragent's docstring).
        agent=request_agent(hit.headers.get("user-agent", ""), browser_endpoint=True),
        location=c.geo.lookup(anonymize_ip(ip)) if ip and c.geo.enabled else UNKNOWN,
        retention_days=site.retention_days,
        identifier_kinds=site.identifier_kinds,
        identity_key=site.write_key_hash,
        language=preferred_language(hit.headers.get("accept-language", "")),
        client_hash=c.client_salts.hash(site.site_id, ip),
    )


def spend(c: Collector, ip: str, events: list[Any]) -> None:
    """Count a browser request's events and items against its client's budget
    (``BUDGET_RATE`` a second, up to ``BUDGET_BURST``): past it, a 429 with Retry-After.
    Storing an event of 200 items costs about 2 ms of CPU, and one host sending 250 KB
    bodies of 11,000 items each kept a core busy and every site's hits minutes from
    queryable. A client is a public address (``web/ratelimit.py``, ``clientip.is_public``:
    another is not held)."""
    if not ip or not is_public(ip):
        return
    cost = 0
    for event in events:
        if isinstance(event, dict):
            items = event.get("items")
            ecommerce = event.get("ecommerce")
            if isinstance(ecommerce, dict) and isinstance(ecommerce.get("items"), list):
                items = ecommerce["items"]
            cost += 1 + (len(items) if isinstance(items, list) else 0)
    wait = BUDGETS.of(c).wait_all(_client(ip), cost=cost)
    if wait:
        raise _over_budget(wait)


def check_budget(c: Collector, hit: Hit) -> None:
    """A 429 for a client that spent its budget, before its body is read or parsed."""
    ip = client_address(c, hit)
    if ip and is_public(ip):
        wait = BUDGETS.of(c).waiting(_client(ip))
        if wait:
            raise _over_budget(wait)


def _over_budget(wait: float) -> HTTPError:
    seconds = math.ceil(wait)
    return HTTPError(429, f"more than {BUDGET_RATE:.0f} events and items a second from one "
                     f"client; retry in {seconds} s", "rate_limited",
                     headers={"Retry-After": str(seconds)})


BUDGETS = RateLimits(BUDGET_RATE, BUDGET_BURST)  # each collector's


@functools.lru_cache(maxsize=65536)
def _client(ip: str) -> tuple[tuple[str, float], ...]:
    return buckets(ip, BUDGET_PREFIX_SHARE)


@functools.lru_cache(maxsize=1024)
def preferred_language(header: str) -> str:
    """The preferred language of an ``Accept-Language`` header ("de-DE,de;q=0.9" -> "de-DE"),
    or "" (none, ``*``, malformed): the banner's texts negotiate with the same parser."""
    ranges = accept_language(header)
    return ranges[0] if ranges else ""


def server_context(c: Collector, site: Site, event: Any, received: dt.datetime) -> Context:
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


def events_record(
    c: Collector, site: Site, events: list[Any], ctx: Context,
    contexts: list[Context] | None = None,
) -> tuple[bytes, int]:
    """Validate and normalise a request's hits (in the context ``ctx``, or each in its own
    of ``contexts``): its spool record (empty when the site drops them all) and the number
    of hits in it. Raises HTTPError naming the field."""
    lines: list[bytes] = []
    given: list[tuple[str, str]] = []
    guessed: dict[str, str] = {}
    for index, raw in enumerate(events):
        if contexts is not None:
            ctx = contexts[index]
        try:
            row, sender_id = normalize(raw, ctx)
        except EventError as exc:
            where = f"events[{index}]" if len(events) > 1 else "event"
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
            where = f"events[{index}]" if len(events) > 1 else "event"
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


# -- 3. the spool ----------------------------------------------------------------------------


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
