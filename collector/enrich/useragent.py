"""User-Agent classification: device class, browser and OS family, bot flag.

Two answers, so that the request never waits for the accurate one:

- ``parse_agent(ua)``: the accurate answer. Device class and bot flag from Matomo's Device
  Detector rules (``collector.enrich.uarules``, ~10-20 ms), browser and OS families from ua-parser
  (``user-agents``, ~1 ms; the stored names stay as they were). Cached: LRU, 8192 entries,
  keyed by the UA cut to ``MAX_UA_LENGTH`` characters, so a client controls neither the
  cost of a parse nor the size of an entry.
- The endpoint matters (``browser_endpoint``): ``/collect``, ``/p.gif`` and the consent log
  are called by browsers running the tag and by e-mail clients loading a pixel, in which
  Matomo's rules recognise a platform, a device or the client; an agent in which they
  recognise nothing (``Agent.unnamed``: ``Monit/5.25.2``) is a program there, and flagged.
  The batch API's rows are not judged that way: the merchant's servers relay what they
  know, and a till's own ``tagwerk-pos/1.0`` is no bot.
- ``request_agent(ua)``: what a request uses (ingest's contexts). A cache hit is the
  accurate answer (a dict look-up, well under a microsecond). A miss is answered with
  ``guess(ua)`` (substring and regex tests; with the table entry ~20 µs, bench/useragent.py)
  carrying a ``pending`` key, and the UA waits in a bounded table (``MAX_PENDING``, oldest
  dropped first).

The request spools its rows with the guess (a 2xx still means the hit is on disk) and names
the pending rows in the record's metadata. The flusher, before it inserts, asks
``Resolver.agent(key)`` for the accurate answer and writes it into those rows (and drops
them for sites that drop bots). The resolver classifies in the flusher's thread, off every
request's path, at most ``RESOLVE_BUDGET`` seconds of work per batch (at least
``RESOLVE_MIN`` agents), rules loaded at the flusher's start: an attacker sending a
million distinct UAs gets the guess stored for most of them, and ingestion keeps its pace
(the table and the cache stay bounded, the flusher's extra work per batch too). After a
restart the pending keys of the old process mean nothing (each process has its own
prefix): those rows keep their guess. The consent log's rows keep the guess too (its
device class only).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import user_agents

from collector.enrich import uarules

__all__ = ["BOT_MARKERS", "MAX_UA_LENGTH", "Agent", "Resolver", "guess", "on_endpoint",
           "parse_agent", "request_agent"]

# Only this many characters are parsed and used as the cache key, so that a client
# sending huge headers can neither slow the regexes down nor bloat the cache.
MAX_UA_LENGTH = 512
CACHE_SIZE = 8192
# UAs seen by requests and not classified yet (each at most MAX_UA_LENGTH characters).
MAX_PENDING = 4096
# The flusher's classification work per batch: this many seconds (one parse may overrun
# it), but at least RESOLVE_MIN agents. At ~15 ms a parse and 4 batches a second at most,
# a flood of new UAs costs the flusher ~20% of a core, not the ingestion its pace.
RESOLVE_BUDGET = 0.05
RESOLVE_MIN = 4

# Case-insensitive substrings of automated clients that ua-parser does not flag as
# "Spider": headless browsers, HTTP libraries, monitoring and link-preview fetchers.
# No generic "bot": Matomo's generic bot rule finds the same crawlers on every corpus
# (tests/test_useragent.py) without flagging CUBOT phones; only the guess keeps it.
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


# The guess has no rules to tell a Googlebot from a CUBOT phone: it flags both, and the
# flusher's accurate answer corrects the phone.
_GUESS_BOT_MARKERS = (*BOT_MARKERS, "bot")

# The cheap guess's device tests, on the lower-cased UA (Android without "mobile" is a
# tablet: Chrome's reduced UA keeps only that difference).
_GUESS_TABLET = re.compile(r"ipad|tablet|kindle|silk/|playbook|android(?!.*mobile)")
_GUESS_MOBILE = re.compile(r"mobi|iphone|ipod|android|phone|opera mini")
_GUESS_DESKTOP = re.compile(r"windows|macintosh|mac os x|x11|cros|linux")
_CONTACT = re.compile(r"https?://|\bwww\.")


@dataclass(frozen=True, slots=True)
class Agent:
    device_class: str  # desktop, mobile, tablet, tv, console, wearable, bot or other
    browser: str  # ua-parser family, e.g. "Chrome", "Mobile Safari"; "" if unknown
    os: str  # ua-parser family, e.g. "Windows", "iOS", "Mac OS X"; "" if unknown
    is_bot: bool
    # Matomo's rules recognise no platform, device or client in it: a bot where only
    # browsers and e-mail clients call (``on_endpoint``), not on the batch API. Neither it
    # nor ``pending`` is stored, so neither takes part in equality.
    unnamed: bool = field(default=False, compare=False)
    # A guess's key for Resolver.agent; "" for an accurate answer.
    pending: str = field(default="", compare=False, repr=False)


_EMPTY = Agent(device_class="bot", browser="", os="", is_bot=True)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


class _Cache:
    """An LRU of accurate answers that can be read without computing one (``peek``)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize, self.hits, self.misses = maxsize, 0, 0
        self._data: OrderedDict[str, Agent] = OrderedDict()
        self._lock = threading.Lock()  # the flusher's thread writes too

    def peek(self, key: str) -> Agent | None:
        agent = self._data.get(key)
        if agent is not None:
            try:  # noqa: SIM105 (a try costs nothing here; contextlib.suppress does)
                self._data.move_to_end(key)
            except KeyError:  # evicted by the other thread meanwhile
                pass
        return agent

    def get(self, key: str) -> Agent:
        agent = self.peek(key)
        if agent is not None:
            self.hits += 1
            return agent
        self.misses += 1
        agent = _classify(key)
        with self._lock:
            agent = self._data.setdefault(key, agent)  # another thread's answer wins
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return agent

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self._data))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


_cache = _Cache(CACHE_SIZE)


def parse_agent(ua: str, browser_endpoint: bool = False) -> Agent:
    """The accurate classification of a User-Agent header value (cached, LRU 8192), as sent
    to a browser endpoint or not (module docstring)."""
    # Truncate before the cache lookup: the key is what gets stored.
    return on_endpoint(_cache.get(ua[:MAX_UA_LENGTH]), browser_endpoint)


def on_endpoint(agent: Agent, browser_endpoint: bool) -> Agent:
    """The agent's answer where it was sent: an unnamed program is a bot on a browser
    endpoint."""
    if browser_endpoint and agent.unnamed:
        return Agent("bot", agent.browser, agent.os, True)
    return agent


# The cache belongs to the public name: tests and metrics read its statistics.
parse_agent.cache_info = _cache.info  # type: ignore[attr-defined]
parse_agent.cache_clear = _cache.clear  # type: ignore[attr-defined]


def _classify(ua: str) -> Agent:
    # Real browsers always send a UA; an empty one is a script.
    if not ua.strip():
        return _EMPTY
    parsed = user_agents.parse(ua)
    browser = _family(parsed.browser.family)
    os_family = _family(parsed.os.family)
    lowered = ua.lower()
    if parsed.is_bot or any(marker in lowered for marker in BOT_MARKERS):
        return Agent("bot", browser, os_family, True)
    # Our TV/console/wearable markers first: they name devices ua-parser misreads, and
    # Matomo agrees on them (tests/test_enrichment.py).
    device = _marker_class(ua, lowered)
    if device:
        return Agent(device, browser, os_family, False)
    device, automated, unnamed = uarules.classify(ua)
    if automated:
        return Agent("bot", browser, os_family, True)
    return Agent(device or _ua_parser_class(parsed), browser, os_family, False, unnamed)


def _marker_class(ua: str, lowered: str) -> str:
    if any(marker in lowered for marker in _TV_MARKERS) or _FIRE_TV.search(ua):
        return "tv"
    if any(marker in lowered for marker in _CONSOLE_MARKERS):
        return "console"
    if _WEARABLE.search(lowered):
        return "wearable"
    return ""


def _ua_parser_class(parsed: user_agents.parsers.UserAgent) -> str:
    """When Matomo's rules know no device type: ua-parser's flags."""
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


# --- the request's path --------------------------------------------------------------


def guess(ua: str) -> Agent:
    """A cheap first answer (a few µs): the bot markers and simple device tests. Browser and
    OS stay unknown: the flusher fills in the accurate answer. It does not judge unnamed
    programs: its tests place no app's HTTP client (``MyApp/1.2 CFNetwork/1410 Darwin/22``),
    and a person's hit that the flusher cannot correct (budget spent) must not be dropped."""
    if not ua.strip():
        return _EMPTY
    lowered = ua.lower()
    if any(marker in lowered for marker in _GUESS_BOT_MARKERS) or _CONTACT.search(lowered):
        return Agent("bot", "", "", True)
    device = _marker_class(ua, lowered)
    if not device:
        if _GUESS_TABLET.search(lowered):
            device = "tablet"
        elif _GUESS_MOBILE.search(lowered):
            device = "mobile"
        elif _GUESS_DESKTOP.search(lowered):
            device = "desktop"
        else:
            device = "other"
    return Agent(device, "", "", False)


class _Pending:
    """UAs that requests met before the cache had them, by key; bounded, oldest first out."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        # key -> (UA, browser endpoint) and back: the endpoint decides the answer.
        self._by_key: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._by_ua: dict[tuple[str, bool], Agent] = {}
        self._lock = threading.Lock()
        # Keys of another process (a restart) must never resolve here.
        self._prefix = os.urandom(4).hex() + ":"
        self._counter = itertools.count()

    def add(self, ua: str, browser_endpoint: bool) -> Agent:
        """The guess for ``ua`` sent to such an endpoint, with a key the flusher can resolve."""
        entry = (ua, browser_endpoint)
        agent = self._by_ua.get(entry)
        if agent is not None:
            return agent
        with self._lock:
            agent = self._by_ua.get(entry)
            if agent is None:
                key = f"{self._prefix}{next(self._counter):x}"
                first = guess(ua)
                agent = Agent(first.device_class, first.browser, first.os, first.is_bot,
                              pending=key)
                self._by_key[key] = entry
                self._by_ua[entry] = agent
                while len(self._by_key) > self.maxsize:
                    _, old = self._by_key.popitem(last=False)
                    self._by_ua.pop(old, None)
        return agent

    def entry(self, key: str) -> tuple[str, bool] | None:
        """The UA of a key, and whether it was sent to a browser endpoint."""
        return self._by_key.get(key)

    def __len__(self) -> int:
        return len(self._by_key)


_pending = _Pending(MAX_PENDING)


def request_agent(ua: str, browser_endpoint: bool = False) -> Agent:
    """What a request stores: the accurate answer when cached, else the guess (with a
    ``pending`` key the flusher resolves). Never parses. ``browser_endpoint``: sent to an
    endpoint only browsers and e-mail clients call (module docstring)."""
    key = ua[:MAX_UA_LENGTH]
    agent = _cache.peek(key)
    if agent is not None:
        return on_endpoint(agent, browser_endpoint) if agent.unnamed else agent
    return _pending.add(key, browser_endpoint)


class Resolver:
    """The flusher's side: accurate answers for pending keys, within a time budget per batch."""

    def __init__(self, budget: float = RESOLVE_BUDGET, minimum: int = RESOLVE_MIN) -> None:
        self.budget, self.minimum = budget, minimum
        self._deadline = 0.0
        self._left = 0

    def start_batch(self) -> None:
        self._deadline = time.monotonic() + self.budget
        self._left = self.minimum

    def agent(self, key: str) -> Agent | None:
        """The accurate answer for a guess's key; None when the key is unknown here (another
        process's, or dropped from the table) or the batch's budget is spent."""
        entry = _pending.entry(key)
        if entry is None:
            return None
        ua, browser_endpoint = entry
        agent = _cache.peek(ua)
        if agent is None:
            if not uarules.ready.is_set():  # loading the rules is not a batch's work
                uarules.warm_up()
                self._deadline = time.monotonic() + self.budget
            if self._left <= 0 and time.monotonic() > self._deadline:
                return None
            self._left -= 1
            agent = parse_agent(ua)  # cached now: later requests hit
        # The key stays (until the table drops it): other rows of the batch may name it.
        return on_endpoint(agent, browser_endpoint)
