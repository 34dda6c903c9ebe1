"""Device class and bot flag from Matomo's Device Detector rules (the ``device_detector`` port).

Matomo's rule set (LGPL-3.0, maintained by the Matomo project and used by Matomo and
Plausible) is what we trust for device types and bots, rather than lists of our own. Two
gaps of the Python port are closed here with Matomo's own rules and definitions:

- bots: the port pre-filters ``bots.yml`` with keyword lists that miss Matomo's generic
  detections (``...bot``, ``crawler``, ``monitor``...). We apply the whole ``bots.yml`` as
  Matomo's PHP does (each regex as ``(?:^|[^A-Z0-9_-])(?:REGEX)``, case-insensitive);
- desktop: Matomo's PHP calls a device of unknown type running a desktop OS a desktop;
  the port leaves it unknown (every ``X11; Linux`` browser).

Besides Matomo's bots, these are automated: clients Matomo names HTTP libraries or feed
readers (curl, python-requests, Miniflux...) on no known OS (AppleCoreMedia on tvOS is a
TV's player); and agents that give a contact address (``+https://...``, ``www.``, an
e-mail address, a domain name: browsers never do).

An agent in which Matomo's rules recognise nothing, no platform, no device and no client
(``Monit/5.25.2``, ``Goose/1.0.25``, but also a till's ``tagwerk-pos/1.0``), is reported as
``unnamed``, not automated: whether that makes it a bot depends on where it was sent
(``collector.enrich.useragent``: yes on the endpoints that only browsers and e-mail clients
call; no on the batch API, where the merchant's own systems relay what they know). Costs
~10-20 ms a call (bench/useragent.py): callers cache it and keep it off the request path.
"""

from __future__ import annotations

import importlib.resources
import threading
from typing import NamedTuple

import regex
import yaml_rs
from device_detector import DeviceDetector

__all__ = ["Verdict", "classify", "ready", "warm_up"]

# Matomo's device types -> our device classes (stored values stay as before).
DEVICE_CLASSES = {
    "desktop": "desktop",
    "smartphone": "mobile",
    "phablet": "mobile",
    "feature phone": "mobile",
    "tablet": "tablet",
    "tv": "tv",
    "console": "console",
    "wearable": "wearable",
}
# Client types that are programs, not people (Matomo's AppType values).
AUTOMATED_CLIENTS = frozenset({"library", "feed reader"})
# The port's client types for no client Matomo's rules know: none, or its own generic
# reading of a "name/version" token (not a rule of Matomo's).
UNKNOWN_CLIENTS = frozenset({"", "generic"})
# Matomo's DESKTOP_OS families.
DESKTOP_OS = frozenset({"AmigaOS", "IBM", "GNU/Linux", "Mac", "Unix", "Windows", "BeOS",
                        "Chrome OS", "Chromium OS", "OpenVMS"})
# A web or e-mail address: a URL, "www.", "name@host.tld", or a bare domain name that is not
# part of a reverse-DNS app id ("com.example.app").
CONTACT = regex.compile(
    r"https?://|\bwww\.|[\w.+-]+@[\w-]+\.[a-z]{2,}|(?<![.\w-])[a-z][a-z0-9-]*\.[a-z]{2,}\b(?![.\w/-])",
    regex.I,
)

_lock = threading.Lock()
_bots: regex.Pattern[str] | None = None
_warm_lock = threading.Lock()
# Set once the rules are loaded: until then a classification costs ~2 s, not ~10 ms.
ready = threading.Event()


def warm_up() -> None:
    """Load the rules (~2 s, once; the first ``classify`` call does it otherwise)."""
    with _warm_lock:
        if not ready.is_set():
            classify("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0.0.0 Safari/537.36")
            ready.set()


def _bot_rules() -> regex.Pattern[str]:
    global _bots
    with _lock:
        if _bots is None:
            path = importlib.resources.files("device_detector") / "regexes/upstream/bots.yml"
            rules = yaml_rs.loads(path.read_text(encoding="utf-8"))
            _bots = regex.compile(
                "|".join(rf"(?:^|[^A-Z0-9_\-])(?:{rule['regex']})" for rule in rules),
                regex.IGNORECASE,
            )
        return _bots


class Verdict(NamedTuple):
    device: str  # our device class; "" when Matomo's rules know no device type
    automated: bool  # a bot wherever it was sent
    unnamed: bool  # Matomo's rules know no platform, device or client in it


def classify(ua: str) -> Verdict:
    """What Matomo's rules say of a User-Agent (the caller falls back to its own device
    guess when they know no device type)."""
    if _bot_rules().search(ua) or CONTACT.search(ua):
        return Verdict("bot", True, False)
    # check_cache=False: we cache our answer; the port's own cache would keep whole parsers.
    parsed = DeviceDetector(ua, skip_bot_detection=True, check_cache=False).parse()
    device = _value(parsed.device_type())
    client = _value(parsed.client_type())
    os_name = parsed.os_name()
    if client in AUTOMATED_CLIENTS and not os_name:
        return Verdict("bot", True, False)
    unnamed = not os_name and not device and client in UNKNOWN_CLIENTS
    if not device and parsed.os and parsed.os.family() in DESKTOP_OS \
            and not parsed.uses_mobile_browser():
        device = "desktop"
    return Verdict(DEVICE_CLASSES.get(device, "other" if device else ""), False, unnamed)


def _value(member: object) -> str:
    """An enum member's value, or the string itself (the port mixes both)."""
    return str(getattr(member, "value", member) or "")
