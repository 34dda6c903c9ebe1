"""User-Agent classification: device class, browser and OS family, bot flag."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import user_agents

__all__ = ["BOT_MARKERS", "MAX_UA_LENGTH", "Agent", "parse_agent"]

# Only this many characters are parsed and used as the cache key, so that a client
# sending huge headers can neither slow the regexes down nor bloat the cache.
MAX_UA_LENGTH = 512

# Case-insensitive substrings of automated clients that ua-parser does not flag as
# "Spider": headless browsers, HTTP libraries, monitoring and link-preview fetchers.
# The generic "bot" also matches the phone brand "Cubot": accepted, it is rare.
BOT_MARKERS: tuple[str, ...] = (
    "headlesschrome",
    "phantomjs",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "httpx",
    "aiohttp",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww",
    "scrapy",
    "lighthouse",
    "pingdom",
    "uptimerobot",
    "statuscake",
    "bot",
    "crawler",
    "spider",
    "slurp",
    "facebookexternalhit",
    "preview",
)

# Matched against the lower-cased UA. These are checked before ua-parser's own
# mobile/tablet/PC flags because those misfire on them: Android TV sticks send
# "Mobile Safari", Xbox sends "Windows NT", Wear OS sends "Android ... Mobile".
# Tizen and webOS phones and watches are long gone; their UAs now mean a TV.
_TV_MARKERS = (
    "smarttv",
    "smart-tv",
    "smart tv",
    "tizen",
    "web0s",
    "webos tv",
    "appletv",
    "apple tv",
    "googletv",
    "google tv",
    "android tv",
    "androidtv",
    "hbbtv",
    "bravia",
    "roku",
)
# Fire TV models are "AFT" plus capitals (AFTMM, AFTSSS); matched case-sensitively
# as a whole UA token, since a bare "aft" substring would hit ordinary words.
_FIRE_TV = re.compile(r"[;(]\s*AFT[A-Z0-9]+[\s;)]")
_CONSOLE_MARKERS = ("playstation", "xbox", "nintendo")
# A whole word, so that e.g. "watchdog" in a tool's UA does not make it a wearable.
_WEARABLE = re.compile(r"\bwatch\b|\bwear ?os\b")


@dataclass(frozen=True, slots=True)
class Agent:
    device_class: str  # desktop, mobile, tablet, tv, console, wearable, bot or other
    browser: str  # ua-parser family, e.g. "Chrome", "Mobile Safari"; "" if unknown
    os: str  # ua-parser family, e.g. "Windows", "iOS", "Mac OS X"; "" if unknown
    is_bot: bool


_EMPTY = Agent(device_class="bot", browser="", os="", is_bot=True)


def parse_agent(ua: str) -> Agent:
    """Classify a User-Agent header value. Results are cached (LRU, 8192 entries)."""
    # Truncate before the cache lookup: the key is what gets stored.
    return _parse_truncated(ua[:MAX_UA_LENGTH])


@functools.lru_cache(maxsize=8192)
def _parse_truncated(ua: str) -> Agent:
    # Real browsers always send a UA; an empty one is a script.
    if not ua.strip():
        return _EMPTY
    parsed = user_agents.parse(ua)
    browser = _family(parsed.browser.family)
    os = _family(parsed.os.family)
    lowered = ua.lower()
    if parsed.is_bot or any(marker in lowered for marker in BOT_MARKERS):
        return Agent("bot", browser, os, True)
    return Agent(_device_class(ua, lowered, parsed), browser, os, False)


# The cache belongs to the public name: tests and metrics read its statistics.
parse_agent.cache_info = _parse_truncated.cache_info  # type: ignore[attr-defined]
parse_agent.cache_clear = _parse_truncated.cache_clear  # type: ignore[attr-defined]


def _device_class(ua: str, lowered: str, parsed: user_agents.parsers.UserAgent) -> str:
    if any(marker in lowered for marker in _TV_MARKERS) or _FIRE_TV.search(ua):
        return "tv"
    if any(marker in lowered for marker in _CONSOLE_MARKERS):
        return "console"
    if _WEARABLE.search(lowered):
        return "wearable"
    if parsed.is_tablet:
        return "tablet"
    if parsed.is_mobile:
        return "mobile"
    if parsed.is_pc:
        return "desktop"
    return "other"


def _family(family: str | None) -> str:
    # ua-parser reports "Other" when it recognised nothing; store that as unknown.
    return "" if not family or family == "Other" else family
