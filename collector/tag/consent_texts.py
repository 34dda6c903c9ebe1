"""The consent banner's texts in one language: ``GET /t/{site}/consent.json?lang=de``.

The banner (``js_snippet/src/banner.js``) is loaded only when it has to ask, and fetches
its texts from here rather than having every language inlined in the tag. The answer is
the site's live container (the draft or the default before the first publish, see
``Containers.live``) reduced to one language::

    {"lang": "de", "title": ..., "body": ..., "accept_all": ..., "reject_all": ...,
     "settings": ..., "save": ..., "gpc": ...,
     "purposes": [{"id": "necessary", "required": true, "name": ..., "description": ...}]}

``purposes`` are the container's purposes in its order. ``gpc`` is the short note the
banner shows when the browser sends Global Privacy Control (built in, not a container
text). The language is negotiated from ``lang``, then ``Accept-Language``, then ``en``
(which every container has). Public: read cross-origin by the banner on the shop's pages,
without credentials; cached for five minutes, with an ETag.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from collector.containers import Live
from collector.service import Collector
from collector.tag.serving import Asset, error, respond_asset
from collector.web.qvalues import LANG, MAX_LANG, accept_language

log = logging.getLogger("tagwerk.consent_texts")

FALLBACK = "en"
TEXT_KEYS = ("title", "body", "accept_all", "reject_all", "settings", "save")
HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "public, max-age=300",
    "Vary": "Accept-Encoding, Accept-Language",
}
MAX_CACHED = 256

# The note under Global Privacy Control (DESIGN.md section 3): "accept all" leaves
# marketing off; only an explicit choice in the settings switches it on.
GPC_NOTES = {
    "en": "Your browser sends a Global Privacy Control signal: marketing stays off unless "
          "you switch it on here in the settings.",
    "de": "Ihr Browser sendet das Signal Global Privacy Control: Marketing bleibt aus, "
          "es sei denn, Sie schalten es hier in den Einstellungen ein.",
    "fr": "Votre navigateur envoie le signal Global Privacy Control : le marketing reste "
          "désactivé, sauf si vous l'activez ici dans les paramètres.",
    "es": "Su navegador envía la señal Global Privacy Control: el marketing permanece "
          "desactivado salvo que lo active aquí en la configuración.",
    "it": "Il tuo browser invia il segnale Global Privacy Control: il marketing resta "
          "disattivato, a meno che tu non lo attivi qui nelle impostazioni.",
    "nl": "Uw browser verstuurt het signaal Global Privacy Control: marketing blijft uit, "
          "tenzij u het hier in de instellingen inschakelt.",
}


def _match(tag: str, available: Iterable[str]) -> str | None:
    """The available language for one language tag: exact (any case), then the tag with
    subtags cut off from the end (``de-AT-x`` -> ``de-AT`` -> ``de``), then any variant of
    the same primary language (``de`` -> ``de-AT``)."""
    by_lower = {a.lower(): a for a in available}
    parts = tag.lower().split("-")
    for n in range(len(parts), 0, -1):
        found = by_lower.get("-".join(parts[:n]))
        if found is not None:
            return found
    primary = parts[0]
    variants = sorted(a for low, a in by_lower.items() if low.split("-")[0] == primary)
    return variants[0] if variants else None


def negotiate(lang: str | None, header: str, available: Iterable[str]) -> str:
    """The language to answer in: ``lang``, else the best of ``Accept-Language``, else
    English (every valid container has it), else the first available."""
    available = list(available)
    for tag in ([lang] if lang else []) + accept_language(header):
        found = _match(tag, available)
        if found is not None:
            return found
    if FALLBACK in available:
        return FALLBACK
    return available[0] if available else FALLBACK


def texts_for(consent: Mapping[str, Any], lang: str) -> dict[str, Any]:
    """The banner's texts in ``lang`` (a key of ``consent["texts"]``). A text missing in
    that language (documents stored before a purpose was added) falls back to English,
    then to the purpose id."""
    texts = consent.get("texts") or {}
    chosen = texts.get(lang) or {}
    english = texts.get(FALLBACK) or {}
    out: dict[str, Any] = {"lang": lang}
    for key in TEXT_KEYS:
        out[key] = chosen.get(key) or english.get(key) or ""
    primary = lang.split("-")[0].lower()
    out["gpc"] = GPC_NOTES.get(primary, GPC_NOTES[FALLBACK])
    names = chosen.get("purposes") or {}
    names_en = english.get("purposes") or {}
    out["purposes"] = []
    for purpose in consent.get("purposes") or []:
        pid = purpose["id"]
        entry = names.get(pid) or names_en.get(pid) or {}
        out["purposes"].append({
            "id": pid,
            "required": bool(purpose.get("required", False)),
            "name": entry.get("name") or pid,
            "description": entry.get("description") or "",
        })
    return out


def _error(status: int, message: str) -> Response:
    return error(status, message, {"Access-Control-Allow-Origin": "*"})


class ConsentTexts:
    """Answers built once per site, container and language, kept in memory (LRU)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple, Asset] = OrderedDict()
        self._lock = threading.Lock()

    def asset(self, live: Live, lang: str) -> Asset:
        key = (live.site_id, live.version, live.digest, lang)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        body = orjson.dumps(texts_for(live.document["consent"], lang))
        asset = Asset.build(body, "application/json")
        with self._lock:
            self._cache[key] = asset
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return asset


_TEXTS = ConsentTexts()


async def consent_json(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    site_id = request.path_params["site"]
    lang = request.query_params.get("lang")
    if lang is not None and (len(lang) > MAX_LANG or not LANG.fullmatch(lang)):
        return _error(400, "lang: not a language tag such as 'en', 'de' or 'de-AT'")
    if await collector.sites.find(site_id) is None:
        return _error(404, f"unknown site {site_id[:64]!r}")
    live = await collector.containers.served(site_id)
    if live is None:
        return _error(503, "the container cannot be read now; try again")
    texts = live.document["consent"].get("texts") or {}
    chosen = negotiate(lang, request.headers.get("accept-language", ""), texts)
    asset = _TEXTS.asset(live, chosen)
    return respond_asset(request, asset, {**HEADERS, "Content-Language": chosen})

