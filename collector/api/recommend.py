"""Product lists for the shop's own pages, without a key (a read key must never reach a
browser), under the tag's paths:

- ``GET /t/{site}/recommend/top?window=24h&metric=views&limit=10&category=``
- ``GET /t/{site}/recommend/trending?window=1h&baseline=7d&limit=10``
- ``GET /t/{site}/recommend/related/{product_id}?kind=co_view&limit=10``

The same lists as ``products.py`` (as Algolia's search-only keys and Shopify's public
``recommendations/products.json`` do), with less in them and tighter bounds:

- no ``currency=``: ranked by revenue, a list is of the window's main currency (a rare
  currency's list over a short window could tell what one foreign customer bought);
- items carry ``product_id`` and ``score`` only, the score 1 / rank (1.0, 0.5, 0.3333...):
  a shop's views, sales and revenue are not for its visitors (a score relative to the
  first's count gave them away: one more view of a product moved its score by 1 / the
  first's count);
- ``limit`` at most 24, windows at most 7 days, baselines at most 28 (every answer is a
  bounded read of the aggregates);
- a related pair only when two persons viewed it, or two buyers bought it, together (the
  identity graph's persons: one shopper's visits and linked devices are one): one
  shopper's pair would show what they looked at or bought;
- CORS for the site's own origins only (credentialed, so the page's cookies come along);
  another origin gets a 403 without CORS headers; no Origin (a link, curl) is served too,
  as the lists are the same for anyone. A site that allows any origin (``*``) answers
  those with ``Access-Control-Allow-Origin: *``, without credentials and never
  personalised: any page could otherwise learn what a visitor bought by comparing;
- personalised only for the visitor's own device and consent: when the request carries a
  ``tw_consent`` cookie (valid for the site's current policy) that grants
  ``personalization``, and a ``tw_id`` device cookie, the products that visitor bought
  are left out: as a person, on any of their devices or in the store (the identity graph),
  counting only hits with personalization consent. Nothing about the device, the person
  or their purchases is in the answer;
- ``Cache-Control: public, max-age=60`` when not personalised, ``private, max-age=60``
  when personalised, always ``Vary: Cookie, Origin`` (a shared cache never serves one
  visitor's list to another, nor one origin's CORS answer to another);
- rate-limited per client IP, an IPv6 client per /64 and per /48 (behind
  ``--trusted-proxies``: the address they forwarded): ``RATE`` a second with bursts of
  ``BURST`` (a /48: ``PREFIX_SHARE`` times both), then 429 with ``Retry-After``.

Errors are JSON 4xx naming the parameter, ``no-store``; an unknown site is a 404, like
the tag's own paths (site ids are public: they are in every page's tag URL).
"""

from __future__ import annotations

import math
import time
from typing import Any
from weakref import WeakKeyDictionary

from starlette.requests import Request
from starlette.responses import Response

from collector.api import products
from collector.api.access import ApiError, json_response, log, refusal
from collector.api.query import params
from collector.identity import profile as profiles
from collector.ingest.webconsent import site_web
from collector.service import Collector
from collector.sites import Site
from collector.storage import StorageError
from collector.web import ratelimit
from collector.web.clientip import client_ip
from collector.web.http import error_response, header_safe
from collector.web.ratelimit import RateLimits
from consent.cookie import latest_consent, parse_device, read_cookies
from consent.purposes import PERSONALIZATION

PUBLIC = products.Bounds(max_limit=24, max_window=7 * 86400, max_baseline=28 * 86400,
                         min_support=2, settings=(("max_memory_usage", 256 << 20),
                                                  ("max_execution_time", 10)))
# Lists computed at once for these paths, per collector: anonymous clients choose the asks,
# and each may read a week of aggregates and events (probe 64: ten new asks a second from
# one address took the engine to its memory limit, and flushes failed). Answers already
# computed, or being computed for another client, take no slot; a client (its /64, or its
# IPv4 address: one office behind one NAT is one client) holds one slot at a time.
COMPUTING = 2
MAX_AGE = 60
RATE = 10.0  # requests a second per client IP, on average
BURST = 30.0
MAX_CLIENTS = 100_000  # IPs remembered; the least recently seen are forgotten first
# A /48's bucket, in /64s' (rate and burst): a subscriber's delegation is a /56 or a /48,
# 256 or 65,536 /64s, each of which would have had the whole limit (buckets).
PREFIX_SHARE = 16


_gates: WeakKeyDictionary[Collector, products.Gate] = WeakKeyDictionary()


def gate(collector: Collector) -> products.Gate:
    """The collector's ``COMPUTING`` slots for these lists, one a client."""
    found = _gates.get(collector)
    if found is None:
        found = _gates[collector] = products.Gate(COMPUTING)
    return found


def buckets(address: str) -> tuple[tuple[str, float], ...]:
    """The buckets a client counts in here (``ratelimit.buckets``: its /48 with
    ``PREFIX_SHARE``)."""
    return ratelimit.buckets(address, PREFIX_SHARE)


LIMITS = RateLimits(RATE, BURST, MAX_CLIENTS)  # each collector's


def cors(site: Site, origin: str | None) -> dict[str, str]:
    """CORS headers for an allowed origin; an Origin that is not the site's is refused.
    Credentials only for the site's own origins: one let in by ``*`` alone could be any
    page, and with the visitor's cookies it would read what they bought (``trusted``)."""
    if origin is None:
        return {}
    if not header_safe(origin):  # it is echoed in a header
        raise ApiError(400, "the Origin header holds a control character", "Origin")
    if not site.allows_origin(origin):
        raise ApiError(403, f"origin {origin[:100]!r} is not allowed for this site", "Origin")
    if not site.names_origin(origin):
        return {"Access-Control-Allow-Origin": "*"}
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}


def trusted(site: Site, origin: str | None) -> bool:
    """Whether the request may be personalised: from the site's own pages (no Origin: a
    same-origin request or a link; else one of the site's own origins, not ``*``)."""
    return origin is None or site.names_origin(origin)


def visitor_device(request: Request, collector: Collector, site: Site) -> str:
    """The requesting device's id when its own cookies grant personalisation, else ""."""
    header = request.headers.get("cookie")
    consent_values, device_values = read_cookies(header)
    if not consent_values or not device_values:
        return ""
    policy = site_web(collector.containers, site.site_id).policy
    consent = latest_consent(consent_values, time.time(), policy)
    if consent is None or PERSONALIZATION not in consent.granted:
        return ""
    device = parse_device(device_values)
    return device.device_id if device is not None else ""


def ranked(answer: dict[str, Any]) -> dict[str, Any]:
    """Items as product ids scored by their rank alone (counts stay private), as of the
    minute (to the millisecond, it dated the last order placed: probe 44)."""
    scored = [{"product_id": item["product_id"], "score": round(1 / rank, 4)}
              for rank, item in enumerate(answer["items"], 1)]
    as_of = answer["as_of"]  # ISO 8601: 2026-11-20T17:30:12.345Z
    return {"items": scored, "as_of": f"{as_of[:16]}:00Z" if as_of else None}


async def _serve(request: Request, accepted: tuple[str, ...], make: Any) -> Response:
    collector: Collector = request.app.state.collector
    origin = request.headers.get("origin")
    headers: dict[str, str] = {"Vary": "Cookie, Origin"}
    try:
        site = await collector.sites.find(request.path_params["site"])
        if site is None:
            raise ApiError(404, "unknown site", "site")
        headers.update(cors(site, origin))
        peer = request.client.host if request.client else ""
        ip = client_ip(peer, request.headers.get("x-forwarded-for"), collector.settings.networks)
        wait = LIMITS.of(collector).wait_all(buckets(ip))
        if wait:
            raise ApiError(429, "too many requests; slow down", "",
                           {"Retry-After": str(max(1, math.ceil(wait)))})
        values = params(request, accepted)
        ask = make(request, values)
        device = visitor_device(request, collector, site) if trusted(site, origin) else ""
        exclude: tuple[str, ...] = ()
        if device:  # what the person of this device bought, on any device or channel
            exclude = await products.kept_products(collector, site, "device", device,
                                                   (profiles.PURCHASE,))
        answer = await products.answers(collector).get(site, ask, exclude, gate(collector),
                                                       client=buckets(ip)[0][0])
    except ApiError as exc:
        error = refusal(exc)
        error.headers.update({k: v for k, v in headers.items() if k not in error.headers})
        return error
    except StorageError as exc:
        log.warning("%s: storage error: %s", request.url.path[:200], exc)
        return error_response(503, "storage unavailable; try again",
                              headers={**headers, "Retry-After": "5"})
    cache = f"{'private' if device else 'public'}, max-age={MAX_AGE}"
    return json_response(ranked(answer), headers={**headers,
                                                    "X-Content-Type-Options": "nosniff"},
                         cache=cache)


async def top(request: Request) -> Response:
    return await _serve(request, products.TOP_PARAMS,
                        lambda r, v: products.top_ask(v, PUBLIC, time.time()))


async def trending(request: Request) -> Response:
    return await _serve(request, products.TRENDING_PARAMS,
                        lambda r, v: products.trending_ask(v, PUBLIC, time.time()))


async def related(request: Request) -> Response:
    return await _serve(request, products.RELATED_PARAMS,
                        lambda r, v: products.related_ask(r, v, PUBLIC))

