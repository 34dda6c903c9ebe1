"""Consent on the web ingestion paths: what a browser's request says (the ``tw_consent``
cookie, ``Sec-GPC``), and the ``tw_id`` device cookie the collector sets and reads.

``/collect`` and ``/p.gif`` call :func:`read` once per request; it puts the request's
:class:`~consent.enforce.ConsentRule` and its device id into the hits' ``Context``, and
``events.normalize`` applies them to each hit (see ``consent/enforce.py`` for the rule).
``/collect`` then asks :func:`answer` for the ``Set-Cookie`` of its 202, decided by the
effective consent of the request's last event (events are in the order they happened, so a
decision changed within a batch counts as changed):

- with ``analytics``: a request without a valid ``tw_id`` gets one, minted before the hits
  were normalised so that the device's first hit carries it too (where the page sent no
  device id of its own); a valid one is set again, for another 13 months, when it was last
  set on an earlier day (the day is in the cookie's value: no state, one comparison);
- without: never set; a ``tw_id`` the request carries is cleared (and its value was not
  stored: no identifier without analytics).

``/p.gif`` reads ``tw_id`` but sets and clears nothing: it answers e-mail clients and
no-JS pages, where a cookie set by an image would surprise more than help.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple

from collector.containers import Containers, Live
from collector.ingest.events import Context
from collector.sites import Site
from collector.web import clientip
from collector.web.clientip import Network
from collector.web.http import Hit
from consent.cookie import (
    DeviceCookie,
    consent_set_cookie,
    cookie_domain_ok,
    device_clear_cookie,
    device_set_cookie,
    latest_consent,
    new_device_id,
    parse_consent,
    parse_device,
    read_cookies,
)
from consent.enforce import ConsentRule
from consent.policy import DEFAULT_LIFETIMES
from consent.purposes import ANALYTICS, NECESSARY

log = logging.getLogger("tagwerk.consent")


class SiteWeb(NamedTuple):
    """What the site's live container says about cookies: the ``Domain`` of ``tw_id`` and
    the policy hash a ``tw_consent`` cookie must carry ("" = no check: a stale cookie can
    only narrow a hit's consent, never widen it)."""

    cookie_domain: str = ""
    policy: str = ""


def site_web(containers: Containers, site_id: str) -> SiteWeb:
    """From the last live container seen, without I/O: this runs for every hit, and the
    ``Domain`` must not flicker between answers (the browser would keep two ``tw_id``)."""
    live = containers.last_known(site_id)
    if live is None:
        return SiteWeb()
    return SiteWeb(_cookie_domain(live), live.policy)


def _cookie_domain(live: Live) -> str:
    domain = live.document["settings"].get("cookie_domain", "")
    return domain if not domain or _domain_ok(domain) else ""


@functools.lru_cache(maxsize=256)
def _domain_ok(domain: str) -> bool:
    """Whether a container's ``cookie_domain`` can go into a ``Set-Cookie`` header. The
    container's own validation should never let another through; if one does (a newline
    after it, say), the cookies are set without a Domain (the collector's host only)
    rather than with a broken header."""
    if cookie_domain_ok(domain):
        return True
    log.warning("cookie_domain %r cannot be sent in a header: cookies are set without it",
                domain)
    return False


class WebRequest(NamedTuple):
    device: DeviceCookie | None  # the request's valid tw_id
    device_sent: bool  # a tw_id came with the request, valid or not
    set_today: bool = False  # that tw_id was set today: no refresh due


NO_COOKIES = WebRequest(None, False)
MAX_CACHED_HEADER = 4096  # longer Cookie headers are parsed each time, not kept
GPC_ONLY = ConsentRule(None, True)


def read(hit: Hit, ctx: Context, sw: SiteWeb, events: list | None = None,
         cookies: bool = True) -> WebRequest:
    """Put the request's consent rule and device id into ``ctx``. ``events``: the raw events
    of a ``/collect`` request; when one asks for analytics and the request has no valid
    ``tw_id``, a new device id is minted (set by :func:`answer` if consent holds).
    ``cookies``: False for a page the site does not name (:func:`trusts`): its cookies are
    not read."""
    gpc = hit.headers.get("sec-gpc") == "1"
    header = hit.headers.get("cookie") if cookies else None
    if header and "tw_" in header:
        day = int(ctx.received_at.timestamp() // 86400)
        parse = _from_header if len(header) <= MAX_CACHED_HEADER else _from_header.__wrapped__
        ctx.consent_rule, web = parse(header, gpc, sw.policy, day)
    else:
        ctx.consent_rule, web = (GPC_ONLY if gpc else None), NO_COOKIES
    if web.device is not None:
        ctx.tw_id = web.device.device_id
    elif events and _asks_analytics(events):
        ctx.tw_id, ctx.tw_id_new = new_device_id(), True
    return web


@functools.lru_cache(maxsize=4096)
def _from_header(
    header: str, gpc: bool, policy: str, day: int
) -> tuple[ConsentRule | None, WebRequest]:
    """What a ``Cookie`` header says, cached: a browser sends the same header hit after hit,
    and parsing it costs more than the rest of the consent work. ``day`` (the age check of
    ``tw_consent`` is to the day here) keeps no answer cached past its date."""
    consent_values, device_values = read_cookies(header)
    cookie = latest_consent(consent_values, day * 86400, policy) if consent_values else None
    rule = ConsentRule(cookie, gpc) if cookie is not None or gpc else None
    web = NO_COOKIES
    if device_values:
        device = parse_device(device_values)
        web = WebRequest(device, True, device is not None and device.day == day)
    return rule, web


def _asks_analytics(events: list) -> bool:
    for event in events:
        consent = event.get("consent") if isinstance(event, dict) else None
        if isinstance(consent, list) and ANALYTICS in consent:
            return True
    return False


def trusts(site: Site, origin: str | None) -> bool:
    """Whether a request's cookies, and the ones its answer sets, are the collector's
    business: without an Origin (a page of the collector's own, a server), or from an origin
    the site names. An origin only ``*`` admits is any page: it may send hits, but must not
    read, renew or clear a visitor's ``tw_id`` or renew their ``tw_consent``."""
    return not origin or site.names_origin(origin)


def answer(
    hit: Hit, ctx: Context, sw: SiteWeb, web: WebRequest, last_event: Any,
    networks: tuple[Network, ...],
) -> str | None:
    """The ``Set-Cookie`` value for ``tw_id`` on a ``/collect`` answer, or None."""
    granted = last_event.get("consent") if isinstance(last_event, dict) else None
    consent = granted if isinstance(granted, list) else []
    if ctx.consent_rule is not None:
        consent = ctx.consent_rule.effective(consent)
    if ANALYTICS in consent:
        if web.set_today or ctx.agent.is_bot:
            return None
        today = int(ctx.received_at.timestamp() // 86400)
        if web.device is not None:
            return device_set_cookie(web.device.device_id, today, is_https(hit, networks),
                                     sw.cookie_domain)
        if ctx.tw_id_new:
            return device_set_cookie(ctx.tw_id, today, is_https(hit, networks),
                                     sw.cookie_domain)
        return None
    return clear(hit, sw, web, networks)


def clear(
    hit: Hit, sw: SiteWeb, web: WebRequest | None, networks: tuple[Network, ...]
) -> str | None:
    """The ``Set-Cookie`` that removes ``tw_id``, if the request carried one."""
    if web is None:
        _, sent = read_cookies(hit.headers.get("cookie"))
        if not sent:
            return None
    elif not web.device_sent:
        return None
    return device_clear_cookie(is_https(hit, networks), sw.cookie_domain)


def consent_renewal(
    hit: Hit, decision: dict[str, Any], live: Live | None, now: float,
    networks: tuple[Network, ...],
) -> str | None:
    """The ``Set-Cookie`` with which ``/consent`` sets again the ``tw_consent`` cookie the tag
    wrote for this decision, or None. Safari keeps a cookie written by script for at most 7
    days, one set by a first-party server for its whole lifetime: this way the decision
    lasts its 12 months (6 for a rejection) there too, instead of the banner asking every
    week. Only when the request carries that very cookie (the same consent id, policy,
    purposes and how): then the collector shares the page's cookie (same host, or the
    container's ``cookie_domain``) and replaces it; a collector on another site, which does
    not see it, sets no cookie of its own."""
    values, _ = read_cookies(hit.headers.get("cookie"))
    if not values:
        return None
    consent = live.document["consent"] if live else {}
    granted = frozenset(decision["granted"])
    for value in values:
        cookie = parse_consent(value, now, live.policy if live else "")
        if cookie is None or (cookie.consent_id, cookie.policy, cookie.how, cookie.granted) != (
            decision["consent_id"], decision["policy"], decision["how"], granted
        ):
            continue
        # The tag's rule (consent.js days()): the shorter lifetime when nothing but required
        # purposes was granted.
        required = {p["id"] for p in consent.get("purposes", ()) if p.get("required")}
        days = (consent.get("lifetime_days", DEFAULT_LIFETIMES[0])
                if granted - (required or {NECESSARY})
                else consent.get("rejection_lifetime_days", DEFAULT_LIFETIMES[1]))
        max_age = days * 86400 - max(0, int(now) - cookie.decided_at)
        if max_age <= 0:
            return None
        domain = _cookie_domain(live) if live else ""
        return consent_set_cookie(value, max_age, is_https(hit, networks), domain)
    return None


def is_https(hit: Hit, networks: tuple[Network, ...]) -> bool:
    """Whether the browser's request came over https (:func:`collector.web.clientip.is_https`)."""
    return clientip.is_https(hit.scope.get("scheme"), hit.headers.get("x-forwarded-proto"),
                             hit.peer, networks)
