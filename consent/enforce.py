"""Consent enforced at the collector: which purposes a web hit really has, and what a row may
keep without ``marketing``.

The effective consent of a hit from a browser (``/collect``, ``/p.gif``) is

1. the hit's own ``consent`` list (what the tag believed);
2. intersected with the purposes of the ``tw_consent`` cookie when the request carries a
   valid one (credentialed CORS sends it): the tag cannot grant more than the person did.
   Without a valid cookie the hit's list stands: a site driven by another CMP need not use
   ours, and a malformed or stale cookie records no decision;
3. minus ``marketing`` when the request says ``Sec-GPC: 1``, unless the cookie records an
   explicit per-purpose choice of the person that grants marketing (``how`` is ``banner`` or
   ``api``). A ``gcm`` decision comes from another tool's defaults or mapping and a ``gpc``
   one was shaped by GPC itself, so neither overrides the signal. With GPC on, the banner's
   "accept all" leaves marketing off and records ``how = gpc``: a ``banner`` cookie with
   marketing therefore means the person switched it on by hand.

What the purposes then mean for a row: without ``analytics`` no identifier and no place finer
than the country (``collector.ingest.events.normalize`` does that, keyed on the effective consent);
without ``marketing`` no click id in any field that can carry a URL (:func:`enforce_row`).
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote_plus

from consent.cookie import ConsentCookie
from consent.purposes import MARKETING

# Query parameters that identify a person's ad click, or a person in a marketing tool, so
# that a platform can attribute a later conversion to them: marketing purposes, whatever the
# site itself uses them for. Compared lower-case.
CLICK_IDS = frozenset({
    # Google Ads and Marketing Platform: the click id, its iOS app/web variants, the
    # Display & Video 360 click id, Merchant Center's result id, and the cross-domain
    # linker that carries them (and the analytics client id) to another domain.
    "gclid", "gbraid", "wbraid", "dclid", "srsltid", "_gl",
    "fbclid", "igshid",  # Meta: Facebook click id, Instagram share id (names the sharer)
    "msclkid",  # Microsoft Advertising
    "ttclid",  # TikTok
    "twclid",  # X (Twitter)
    "li_fat_id",  # LinkedIn
    "epik",  # Pinterest
    "sccid",  # Snapchat (ScCid)
    "rdt_cid",  # Reddit
    "yclid", "ysclid",  # Yandex
    "ef_id",  # Adobe Advertising
    "irclickid", "cjevent",  # affiliate networks: Impact, CJ
    # E-mail tools: the recipient's id in the link, so a visit names the subscriber.
    "mc_eid", "_kx", "mkt_tok", "_hsenc", "_hsmi",
})
EXPLICIT = frozenset({"banner", "api"})  # a person's own per-purpose choice

# Fields of an event row that can carry a URL, a path or a query string: their click ids go.
URL_FIELDS = ("url", "path", "referrer")

# A cheap first test: a click-id name as a parameter (in the query, or in the fragment), or a
# parameter name with a percent escape in it (``%67clid``: decoded, it is ``gclid`` to
# whoever reads the URL, URLSearchParams as much as a server).
_HINT = re.compile(
    r"[?&#](?:(?:" + "|".join(sorted(map(re.escape, CLICK_IDS))) + r")(?:[=&#]|$)|[^=&#?]*%)",
    re.I,
)


def gpc_removes_marketing(gpc: bool, cookie: ConsentCookie | None) -> bool:
    """The GPC rule: with ``Sec-GPC: 1`` marketing goes, unless the person explicitly
    granted it (a ``banner`` or ``api`` decision that grants marketing)."""
    if not gpc:
        return False
    return not (cookie is not None and cookie.how in EXPLICIT and MARKETING in cookie.granted)


def effective_consent(
    consent: list[str], cookie: ConsentCookie | None, gpc: bool
) -> list[str]:
    """A hit's purposes after the cookie and GPC (order kept)."""
    return ConsentRule(cookie, gpc).effective(consent)


class ConsentRule:
    """What one web request says about consent: its valid ``tw_consent`` cookie, if any,
    and its ``Sec-GPC`` header. Applied to each hit of the request (on the hot path: the
    decision is taken once here, each hit costs a set comparison or two)."""

    __slots__ = ("cookie", "gpc", "_granted", "_no_marketing")

    def __init__(self, cookie: ConsentCookie | None, gpc: bool) -> None:
        self.cookie, self.gpc = cookie, gpc
        self._granted = cookie.granted if cookie is not None else None
        self._no_marketing = gpc_removes_marketing(gpc, cookie)

    def effective(self, consent: list[str]) -> list[str]:
        granted = self._granted
        if granted is not None and not granted.issuperset(consent):
            consent = [p for p in consent if p in granted]
        if self._no_marketing and MARKETING in consent:
            consent = [p for p in consent if p != MARKETING]
        return consent

    def __repr__(self) -> str:
        return f"ConsentRule(cookie={self.cookie!r}, gpc={self.gpc!r})"


def consent_rule(cookie: ConsentCookie | None, gpc: bool) -> ConsentRule | None:
    """None when the request has neither: its hits' lists stand as sent."""
    if cookie is None and not gpc:
        return None
    return ConsentRule(cookie, gpc)


@functools.lru_cache(maxsize=4096)
def strip_url(url: str) -> str:
    """``url`` (an absolute URL, a path or any text with a query) without click-id parameters:
    in its query string, in a query inside its fragment (as hash routers have), or in a
    fragment that is itself a parameter list (``#gclid=...``, ``#_gl=...`` of Google's
    linker in fragment mode). Names compare case-insensitively and percent-decoded
    (``%67clid`` is ``gclid``). Everything else stays byte for byte; a query or fragment left
    empty loses its ``?`` or ``#``."""
    if not _HINT.search(url):
        return url
    head, hash_, fragment = url.partition("#")
    head = _strip_query(head)
    if fragment:
        route, mark, query = fragment.partition("?")
        if "=" in route or "&" in route or _is_click_id(route):  # a parameter list itself
            route = _strip_params(route)
        fragment = _strip_query(route + mark + query) if mark else route
        if not fragment:
            hash_ = ""
    return head + hash_ + fragment


def _strip_query(text: str) -> str:
    base, mark, query = text.partition("?")
    if not mark:
        return text
    kept = _strip_params(query)
    if kept is query:
        return text  # nothing stripped: untouched, an empty query too
    return base + "?" + kept if kept else base


def _strip_params(params: str) -> str:
    """An ``&``-separated parameter list without its click ids ("" when none is left)."""
    parts = params.split("&")
    kept = [p for p in parts if not _is_click_id(p.partition("=")[0])]
    return params if len(kept) == len(parts) else "&".join(kept)


def _is_click_id(name: str) -> bool:
    name = name.lower()
    if name in CLICK_IDS:
        return True
    if "%" not in name and "+" not in name:
        return False
    return unquote_plus(name).lower() in CLICK_IDS  # errors="replace": never raises


def strip_props(props: dict[str, str]) -> dict[str, str]:
    """``props`` without click-id keys; values holding a URL, a path or a query (any value
    with a ``?`` or ``#``) lose their click-id parameters."""
    out = None
    for key, value in props.items():
        if _is_click_id(key):
            out = out if out is not None else dict(props)
            del out[key]
        elif "?" in value or "#" in value:
            clean = strip_url(value)
            if clean != value:
                out = out if out is not None else dict(props)
                out[key] = clean
    return props if out is None else out


def enforce_row(row: dict[str, Any]) -> dict[str, Any]:
    """Without ``marketing`` in the row's (effective) ``consent``: no click id in any field
    that can carry a URL or a query (``URL_FIELDS``: ``url``, ``path``, ``referrer``), nor in
    ``props`` (keys, and values with a query). Changes ``row`` in place and returns it."""
    if MARKETING in row["consent"]:
        return row
    for name in URL_FIELDS:
        value = row.get(name)
        if value and ("?" in value or "#" in value):
            row[name] = strip_url(value)
    if row["props"]:
        row["props"] = strip_props(row["props"])
    return row
