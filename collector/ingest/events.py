"""Turn one hit as sent (JSON object or query string) into one ``tagwerk.events`` row.

The wire format uses the column names as field names, so what a site sends and what a data
team queries read the same. Every field is checked for type and size; the first problem
raises ``EventError`` naming the field. Fields the collector derives (device class, geo,
``received_at``...) cannot be sent, except location by an authenticated server.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import math
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from collector.enrich.geo import UNKNOWN, Location
from collector.enrich.useragent import Agent
from collector.identifiers import BUILT_IN, MAX_ID, IdentifierError, clean, has_control, is_junk
from collector.identity.verify import verified
from collector.ingest.ids import uuid7
from collector.spool.record import EVENT_COLUMNS
from collector.storage import time_text
from collector.web.http import json_field, nesting
from collector.web.qvalues import LANG, MAX_LANG
from consent.enforce import ConsentRule, enforce_row
from consent.ids import CONSENT_ID
from consent.purposes import MAX_PURPOSES, is_purpose_id

TYPES = frozenset({"page", "track", "identify", "alias"})
CHANNELS = frozenset({"web", "app", "email", "qr", "pos", "callcenter", "server"})
# What a hit without a key (a browser, an app, an e-mail client) may say it came through:
# a till's or a call centre's hits come with the site's write key (the batch API), and a
# browser's "purchase in the store" would pass for one in the person's profile.
KEYLESS_CHANNELS = frozenset({"web", "app", "email", "qr"})
UTM = tuple(name for name in EVENT_COLUMNS if name.startswith("utm_"))  # in the row's order
NO_UTM = ("",) * len(UTM)

# Field -> longest accepted value, in characters.
STRING_LIMITS = {
    "event": 100, "device_id": 128, "session_id": 128, "user_id": 256,
    "url": 4096, "path": 2048, "title": 1024, "referrer": 4096,
    "utm_source": 256, "utm_medium": 256, "utm_campaign": 256, "utm_term": 256,
    "utm_content": 256, "language": MAX_LANG, "screen": 20, "order_id": 128, "coupon": 128,
    "country": 2, "region": 3, "city": 128,
}
NO_STRINGS = dict.fromkeys(STRING_LIMITS, "")
# Shops often number customers and orders: accept those as JSON numbers too.
NUMERIC_IDS = frozenset({"user_id", "order_id"})
ITEM_STRINGS = ("product_id", "name", "category", "brand", "variant")
ITEM_STRING_LIMIT = 256
ITEM_FIELDS = frozenset({*ITEM_STRINGS, "price", "quantity"})
MAX_ITEMS = 200
MAX_PROPS = 64
MAX_PROP_KEY = 128
MAX_PROP_VALUE = 2048
# A props value that is a list or an object is kept as its JSON text (queryable with
# ClickHouse's JSON functions): at most this deep (["a"] is 1, {"a": {"b": 1}} is 2). Deeper
# is refused before it is serialised (orjson stops at 255 levels, with an error).
MAX_PROP_DEPTH = 8
# Lists and objects in one event's props values, in all: each is walked before it is
# stored, and 64 props of [[[[[[[1]]]]]]] in each of 100 events took 45 ms a request.
MAX_NESTED_PROPS = 64
# A GA4 ecommerce object is 3 levels deep (ecommerce, items, an item); keys other than the
# mapped ones are ignored, but nothing deeper than this is taken, ignored or not.
MAX_ECOMMERCE_DEPTH = 8
# Lists and objects in one event's ecommerce object: its items and a few more each
# (60,000 empty lists in an ignored key took 50 ms a request to walk).
MAX_ECOMMERCE_NODES = 2 * MAX_ITEMS + 32
# Only an authenticated server may state where a hit happened (a store's POS, say).
SERVER_ONLY = frozenset({"country", "region", "city", "user_agent", "ip"})
ACCEPTED = frozenset(
    {"event_id", "site", "event", "type", "ts", "channel", "consent", "revenue", "currency",
     "items", "props", "ecommerce", "identifiers", "consent_id", "identity_token"}
    | set(STRING_LIMITS)
    | SERVER_ONLY
)
# Further identifiers of the person (``{"email": "<sha256>", "loyalty": "L-991"}``): device
# and user ids have their own fields.
MAX_IDENTIFIERS = 8
OWN_FIELDS = {"device": "device_id", "user": "user_id"}
# A GA4 ``ecommerce`` object fills these; an event gives one or the other, never both.
ECOMMERCE_FLAT = frozenset({"order_id", "revenue", "currency", "coupon", "items"})
# GA4 item key -> our item field; every other GA4 item key is ignored.
GA4_ITEM_STRINGS = (("item_id", "product_id"), ("item_name", "name"),
                    ("item_category", "category"), ("item_brand", "brand"),
                    ("item_variant", "variant"))
CURRENCY = re.compile(r"[A-Za-z]{3}")  # fullmatch, then upper-cased (ASCII only: "ﬀa" is no "FFA")
MIN_TS = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# Browser clocks run ahead; beyond this a browser's time is replaced by the server time, and
# a server's (the batch API's senders keep their own times) refused: its sender's bug.
MAX_CLOCK_AHEAD = dt.timedelta(days=1)
# A browser's time older than this is replaced by the time of receipt too: events are
# partitioned by month of ts, and hits spread over years made a part per month in every
# flush, for anyone to ask. Within it: a queue the tag stored offline, sent later.
MAX_BROWSER_AGE = dt.timedelta(days=31)
# The shapes of the place and language fields (fullmatch), and how the 400 names them.
FORMATS = {
    "country": (re.compile(r"[A-Za-z]{2}"), "an ISO 3166-1 alpha-2 code such as DE"),
    "region": (re.compile(r"[A-Za-z0-9]{1,3}"),
               "the code of an ISO 3166-2 subdivision, such as BE in DE-BE"),
    "language": (LANG, "a language tag such as en-US"),  # en_US becomes en-US first
}
# What the read API asks for by (``collector.identifiers.has_control``): with a control
# character in it, a stored value could never be asked for.
ITEM_CONTROL_FREE = ("product_id", "category")
ORDER_NAMESPACE = uuid.UUID("8f3b6a52-4c1e-4d8e-9a57-2f0d7c6e1b94")  # order_event_id's
MAX_REVENUE = Decimal("100000000000000")  # Decimal(18, 4) holds 14 integer digits


class EventError(ValueError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(slots=True)  # not frozen: a frozen __init__ is several times slower
class Context:
    """What the collector knows about the request a hit came in."""

    site_id: str
    received_at: dt.datetime
    channel: str
    agent: Agent
    location: Location = UNKNOWN
    retention_days: int = 0
    trusted: bool = False  # an authenticated server-side sender
    received_text: str = ""  # received_at as stored, formatted once per request
    # A web request's tw_consent cookie and Sec-GPC: they cap each hit's consent.
    consent_rule: ConsentRule | None = None
    # The tw_id device cookie: the device_id of the request's web hits. One minted for this
    # answer (tw_id_new) only fills in for a hit that names no device itself.
    tw_id: str = ""
    tw_id_new: bool = False
    # A browser request's preferred language (Accept-Language): the hits' language
    # where they name none. The tag sends none: navigator.language is the same preference.
    language: str = ""
    # The identifier kinds the site accepts (built-in ones and its own).
    identifier_kinds: tuple[str, ...] = BUILT_IN
    # The site's write key digest: browser identifies are verified with it (identity.verify).
    identity_key: str = ""
    # The browser's client, for hits with analytics consent (enrich/client_hash.py); 0: none.
    client_hash: int = 0

    def __post_init__(self) -> None:
        if not self.received_text:
            self.received_text = time_text(self.received_at)


def normalize(raw: Any, ctx: Context) -> tuple[dict[str, Any], bool]:
    """Validate one hit; return its row (keys in the order of
    ``collector.spool.record.EVENT_COLUMNS``) and whether
    ``event_id`` came from the sender."""
    if not isinstance(raw, dict):
        raise EventError("an event must be a JSON object")
    if not ACCEPTED.issuperset(raw):
        name = sorted(raw.keys() - ACCEPTED)[0]
        raise EventError(f"unknown field {name!r}", name)
    if not ctx.trusted and not SERVER_ONLY.isdisjoint(raw):
        name = sorted(SERVER_ONLY & raw.keys())[0]
        raise EventError(f"{name!r} may only be sent to the server-side batch API", name)
    if ctx.trusted:
        _shopper(raw)
    site = raw.get("site")
    if site is not None and site != ctx.site_id:
        raise EventError("every event must belong to the request's site", "site")

    given_id = raw.get("event_id")
    event_id = _uuid(given_id) if given_id is not None else uuid7()
    s = dict(NO_STRINGS)
    for name, value in raw.items():
        limit = STRING_LIMITS.get(name)
        if limit is None:
            continue
        # The common case inline (a call per field showed in the profile).
        s[name] = value if type(value) is str and len(value) <= limit else _string(raw, name, limit)
    if not s["event"]:
        raise EventError("'event' is required (a name such as page_view or purchase)", "event")
    if "_" in s["language"]:  # a POSIX locale (Java's, glibc's): the tag browsers send
        s["language"] = s["language"].replace("_", "-")
    for name, (pattern, shape) in FORMATS.items():
        if s[name] and not pattern.fullmatch(s[name]):
            raise EventError(f"{name!r} must be {shape}", name)
    if not s["event"].isprintable() and has_control(s["event"]):  # the common case inline
        raise EventError("'event' holds control characters", "event")
    type_ = raw.get("type") or ("page" if s["event"] == "page_view" else "track")
    if not isinstance(type_, str) or type_ not in TYPES:
        raise EventError(f"'type' must be one of {', '.join(sorted(TYPES))}", "type")
    # A placeholder ("undefined", "null", "0"...) identifies nobody: it is not kept.
    if s["user_id"] and is_junk(s["user_id"]):
        if type_ in ("identify", "alias"):
            raise EventError(f"{s['user_id'][:32]!r} is a placeholder, not a user_id",
                             "user_id")
        s["user_id"] = ""
    if s["device_id"] and is_junk(s["device_id"]):
        s["device_id"] = ""
    if type_ in ("identify", "alias") and not s["user_id"]:
        raise EventError(f"a {type_} event needs a user_id", "user_id")
    token = _token(raw) if "props" in raw or "identity_token" in raw else None
    # (taken out of props for every hit: stored, it would let anyone replay the claim)
    if type_ in ("identify", "alias") and not ctx.trusted and not _verified(token, s, ctx):
        type_ = "track"  # a browser's unverified claim: kept as an event, links nothing
    if "identifiers" in raw and not ctx.trusted and type_ not in ("identify", "alias"):
        raise EventError("from a browser, only an identify with a valid identity_token may "
                         "carry identifiers", "identifiers")
    identifiers = _identifiers(raw["identifiers"], ctx) if "identifiers" in raw else {}
    channel = raw.get("channel") or ctx.channel
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise EventError(f"'channel' must be one of {', '.join(sorted(CHANNELS))}", "channel")
    if channel not in KEYLESS_CHANNELS and not ctx.trusted:
        raise EventError(f"'channel' {channel} needs the site's write key (the batch API); "
                         f"without it: {', '.join(sorted(KEYLESS_CHANNELS))}", "channel")
    consent = _consent(raw.get("consent"))
    if ctx.consent_rule is not None:
        consent = ctx.consent_rule.effective(consent)
    if ctx.tw_id and channel == "web" and not (ctx.tw_id_new and s["device_id"]):
        s["device_id"] = ctx.tw_id

    url = s["url"]
    if url:
        path, utm = _url_parts(url)
        s["path"] = s["path"] or path
        if utm != NO_UTM:  # most page URLs carry none
            for name, value in zip(UTM, utm, strict=True):
                s[name] = s[name] or value
    referrer_host = _host(s["referrer"]) if s["referrer"] else ""

    location = ctx.location
    if ctx.trusted and (s["country"] or s["region"] or s["city"]):
        location = Location(s["country"].upper(), s["region"].upper(), s["city"])
    if "analytics" not in consent:
        # No consent: nothing that identifies a person or device, no finer place than a country.
        s["device_id"] = s["session_id"] = s["user_id"] = ""
        identifiers = {}
        location = Location(location.country, "", "")

    received_at = ctx.received_text
    row = {
        "event_id": event_id,  # first: the flusher finds it at a fixed offset in the line
        "site_id": ctx.site_id,
        "event": s["event"],
        "type": type_,
        "ts": (_ts(raw.get("ts"), ctx.received_at, received_at, ctx.trusted) if "ts" in raw
               else received_at),
        "received_at": received_at,
        "channel": channel,
        "device_id": s["device_id"],
        "session_id": s["session_id"],
        "user_id": s["user_id"],
        "consent": consent,
        "url": url,
        "path": s["path"],
        "title": s["title"],
        "referrer": s["referrer"],
        "referrer_host": referrer_host,
        "utm_source": s["utm_source"],
        "utm_medium": s["utm_medium"],
        "utm_campaign": s["utm_campaign"],
        "utm_term": s["utm_term"],
        "utm_content": s["utm_content"],
        "device_class": ctx.agent.device_class,
        "browser": ctx.agent.browser,
        "os": ctx.agent.os,
        "is_bot": ctx.agent.is_bot,
        "country": location.country,
        "region": location.region,
        "city": location.city,
        "language": s["language"] or ctx.language,
        "screen": s["screen"],
        "order_id": s["order_id"],
        # Fields most hits lack: their defaults without a call (what each helper gives None).
        "revenue": _decimal(raw["revenue"], "revenue") if "revenue" in raw else "0",
        "currency": _currency(raw["currency"]) if "currency" in raw else "",
        "coupon": s["coupon"],
        "items": _items(raw["items"]) if "items" in raw else [],
        "props": _props(raw["props"]) if "props" in raw else {},
        "retention_days": ctx.retention_days,
        "identifiers": identifiers,
        "consent_id": (_consent_id(raw.get("consent_id"), ctx)
                       if ctx.consent_rule is not None or "consent_id" in raw else ""),
        # Whether user_id decides whose the hit is: from an authenticated sender, or a
        # browser identify with a valid identity_token. A browser can put anyone's user id
        # on a hit; such a claim is kept for analytics, and the hit is attributed through
        # its device like any other (clickhouse/0023_user_verified.sql).
        "user_verified": ctx.trusted or type_ in ("identify", "alias"),
        "client_hash": ctx.client_hash if "analytics" in consent else 0,
    }
    ecommerce = raw.get("ecommerce")  # the only cost of GA4 e-commerce for other hits
    if ecommerce is not None:
        _ecommerce(ecommerce, raw, row)
    if "marketing" not in consent:
        enforce_row(row)  # no click ids
    if row["event"] == "purchase" and not is_junk(row["order_id"]):
        if ctx.trusted and given_id is None:  # a server's: the order alone
            row["event_id"] = order_event_id(ctx.site_id, row["order_id"])
            return row, True
        if not ctx.trusted and row["device_id"]:  # the tag's own id only guards its retries
            row["event_id"] = order_event_id(ctx.site_id, row["order_id"], row["device_id"])
            return row, True
    return row, given_id is not None


def order_event_id(site_id: str, order_id: str, device_id: str | None = None) -> str:
    """The event id of a purchase of ``order_id``: the same for every report of the order,
    so that the flusher's check of sender-given ids (``collector/spool/flusher.py``) keeps
    the first within a day and drops the others, as it drops a sender's retry (GA4 drops a
    repeated ``transaction_id`` too). Reported by a server that chose no id of its own: by
    the order alone (a till or a shop backend sending it twice). Reported by a browser: by
    the order and the device (a confirmation page reloaded), never by the order alone,
    since any visitor can send any order id and would suppress the real purchase; without
    a device id (no analytics consent) a browser's purchase is not deduplicated. The two
    sources have separate ids: a shop that sends each purchase from both counts it twice."""
    key = [site_id, order_id] if device_id is None else [site_id, order_id, device_id]
    return str(uuid.uuid5(ORDER_NAMESPACE, orjson.dumps(key).decode()))  # unambiguous


@functools.lru_cache(maxsize=8192)
def _url_parts(url: str) -> tuple[str, tuple[str, ...]]:
    """The path and UTM parameters of a page URL; cached, as shoppers view the same pages."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 literal
        raise EventError("'url' is not a valid URL", "url") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EventError("'url' must be an absolute http(s) URL", "url")
    query = dict(parse_qsl(parts.query)) if parts.query else {}
    return parts.path or "/", tuple(query.get(name, "")[: STRING_LIMITS[name]] for name in UTM)


@functools.lru_cache(maxsize=4096)
def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "")[:253]
    except ValueError:  # e.g. an invalid IPv6 literal
        return ""


def _string(raw: dict, name: str, limit: int) -> str:
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) and not (
        name in NUMERIC_IDS and isinstance(value, int) and not isinstance(value, bool)
    ):
        raise EventError(f"{name!r} must be a string", name)
    text = str(value)
    if len(text) > limit:
        raise EventError(f"{name!r} is longer than {limit} characters", name)
    return text


def _shopper(raw: dict) -> None:
    """What a server states about the shopper (used for enrichment, never stored): an agent
    text and an address, checked as the rest of the hit is, not dropped when malformed."""
    agent = raw.get("user_agent")
    if agent is not None and not isinstance(agent, str):
        raise EventError("'user_agent' must be a string", "user_agent")
    address = raw.get("ip")
    if address is not None:
        try:
            ipaddress.ip_address(address if isinstance(address, str) else "")
        except ValueError:
            raise EventError("'ip' must be an IPv4 or IPv6 address", "ip") from None


def _token(raw: dict) -> Any:
    """An identify's identity_token: top level, or in ``props`` as the tag sends it
    (``tagwerk('identify', id, {identity_token})``), taken out of them."""
    props = raw.get("props")
    in_props = props.pop("identity_token", None) if isinstance(props, dict) else None
    return raw.get("identity_token", in_props)


def _verified(given: Any, s: dict[str, str], ctx: Context) -> bool:
    """Whether a browser's identify carries a valid identity_token. One that is present but
    wrong is a 400: the shop's signing is broken."""
    if given is None:
        return False
    if not isinstance(given, str) or not verified(ctx.identity_key, ctx.site_id,
                                                  s["user_id"], given):
        raise EventError("'identity_token' does not match this user_id (HMAC-SHA256 of "
                         "'site:user_id' keyed with the write key's SHA-256, in hex)",
                         "identity_token")
    return True


def _identifiers(value: Any, ctx: Context) -> dict[str, str]:
    if not isinstance(value, dict):
        raise EventError("'identifiers' must be an object of kind: id", "identifiers")
    if len(value) > MAX_IDENTIFIERS:
        raise EventError(f"'identifiers' holds more than {MAX_IDENTIFIERS} entries",
                         "identifiers")
    found = {}
    for kind, text in value.items():
        field = f"identifiers.{kind[:32]}"
        if kind in OWN_FIELDS:
            raise EventError(f"send the {kind} id as {OWN_FIELDS[kind]!r}; a second {kind} id "
                             "never links on its own (merge persons with the admin API)", field)
        if kind not in ctx.identifier_kinds:
            raise EventError(f"unknown identifier kind {kind[:32]!r} (this site has: "
                             f"{', '.join(ctx.identifier_kinds)})", field)
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)  # loyalty and till numbers
        if not isinstance(text, str) or len(text) > MAX_ID:
            raise EventError(f"{field!r} must be a string of at most {MAX_ID} characters", field)
        try:
            stored = clean(kind, text, field)
        except IdentifierError as exc:
            raise EventError(str(exc), field) from None
        if stored:
            found[kind] = stored
    return found


def _consent_id(value: Any, ctx: Context) -> str:
    """The consent decision the hit was collected under: the request's ``tw_consent``
    cookie's, else the one the sender names (a server relaying a decision of our log)."""
    cookie = ctx.consent_rule.cookie if ctx.consent_rule is not None else None
    if cookie is not None:
        return cookie.consent_id
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not CONSENT_ID.fullmatch(value):
        raise EventError("'consent_id' must be 32 hexadecimal digits", "consent_id")
    return value.lower()


def _uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise EventError("'event_id' must be a UUID string", "event_id")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise EventError("'event_id' is not a valid UUID", "event_id") from None


def _ts(value: Any, received_at: dt.datetime, received_text: str, server: bool) -> str:
    if value is None or value == "":
        return received_text
    if isinstance(value, bool):
        raise EventError("'ts' must be an ISO 8601 time or epoch milliseconds", "ts")
    if isinstance(value, int | float):
        try:
            moment = dt.datetime.fromtimestamp(value / 1000, dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise EventError("'ts' is out of range", "ts") from None
    elif isinstance(value, str) and len(value) <= 40:
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EventError("'ts' is not an ISO 8601 time", "ts") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    else:
        raise EventError("'ts' must be an ISO 8601 time or epoch milliseconds", "ts")
    if moment < MIN_TS:
        raise EventError("'ts' is before the year 2000", "ts")
    if moment > received_at + MAX_CLOCK_AHEAD:
        if server:
            raise EventError("'ts' is more than a day ahead of the collector's clock", "ts")
        moment = received_at
    elif not server and moment < received_at - MAX_BROWSER_AGE:
        moment = received_at
    return time_text(moment)


def _consent(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PURPOSES:
        raise EventError("'consent' must be a list of granted purposes", "consent")
    for purpose in value:
        if not is_purpose_id(purpose):
            raise EventError("'consent' holds an invalid purpose name", "consent")
    return sorted(set(value))


def _decimal(value: Any, name: str) -> str:
    if value is None or value == "":
        return "0"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise EventError(f"{name!r} must be a number", name)
    if isinstance(value, float):  # the common case, without Decimal's cost
        if not math.isfinite(value) or abs(value) >= 1e14:  # MAX_REVENUE
            raise EventError(f"{name!r} is out of range", name)
        return f"{value:.4f}"
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise EventError(f"{name!r} must be a number", name) from None
    try:
        # Rounded first: 99999999999999.99995 is in range, and 100000000000000.0000 is not
        # (ClickHouse refused the flush that held it).
        in_range = number.is_finite() and abs(number) < MAX_REVENUE and abs(
            number := number.quantize(Decimal("0.0001"))) < MAX_REVENUE
    except ArithmeticError:  # an exponent past the context's: abs() overflows
        in_range = False
    if not in_range:
        raise EventError(f"{name!r} is out of range", name)
    return str(number)


def _currency(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not CURRENCY.fullmatch(value):
        raise EventError("'currency' must be an ISO 4217 code such as EUR", "currency")
    return value.upper()


def _items(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EventError("'items' must be a list of objects", "items")
    if len(value) > MAX_ITEMS:
        raise EventError(f"'items' has more than {MAX_ITEMS} entries", "items")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise EventError(f"items[{i}] must be an object", f"items[{i}]")
        if not ITEM_FIELDS.issuperset(item):
            name = sorted(item.keys() - ITEM_FIELDS)[0]
            raise EventError(f"items[{i}]: unknown field {name!r}", f"items[{i}]")
        clean: dict[str, Any] = {}
        for name in ITEM_STRINGS:
            text = item.get(name)
            # The common case inline (a call per field showed in the profile).
            clean[name] = ("" if text is None else text
                           if type(text) is str and len(text) <= ITEM_STRING_LIMIT
                           else _item_string(item, name, i))
        if not (clean["product_id"].isprintable() and clean["category"].isprintable()):
            for name in ITEM_CONTROL_FREE:
                if has_control(clean[name]):
                    raise EventError(f"items[{i}].{name} holds control characters",
                                     f"items[{i}].{name}")
        price = item.get("price")
        clean["price"] = (f"{price:.4f}" if type(price) is float and abs(price) < 1e14
                          else _decimal(price, f"items[{i}].price"))
        quantity = item.get("quantity", 1)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not (
            0 <= quantity < 2**32
        ):
            raise EventError(f"items[{i}].quantity must be a whole number >= 0", f"items[{i}]")
        # The views compute a line's revenue in the columns' decimal type: an overflow
        # there made the engine drop the views' rows of the whole insert, everyone's.
        if quantity > 1 and abs(Decimal(clean["price"])) * quantity >= MAX_REVENUE:
            raise EventError(f"items[{i}]: price x quantity is out of range", f"items[{i}]")
        clean["quantity"] = quantity
        out.append(clean)
    return out


def _item_string(item: dict, name: str, i: int) -> str:
    try:
        return _string(item, name, ITEM_STRING_LIMIT)
    except EventError as exc:
        raise EventError(f"items[{i}].{exc}", f"items[{i}].{name}") from None


def _ecommerce(value: Any, raw: dict, row: dict[str, Any]) -> None:
    """Map a GA4 ``ecommerce`` object (as pushed to GTM's dataLayer) onto the row's
    order_id, revenue, currency, coupon and items, as the tag used to do in JavaScript.
    Keys other than those mapped (shipping, tax, item_list_id...) are ignored."""
    if not isinstance(value, dict):
        raise EventError("'ecommerce' must be a JSON object (a GA4 ecommerce object; "
                         "a query string cannot carry one)", "ecommerce")
    if not ECOMMERCE_FLAT.isdisjoint(raw):
        name = sorted(ECOMMERCE_FLAT & raw.keys())[0]
        raise EventError(f"'ecommerce' and {name!r} in one event: give either ecommerce or "
                         "the flat fields", "ecommerce")
    deep = nesting(value, MAX_ECOMMERCE_DEPTH, MAX_ECOMMERCE_NODES)
    if deep.path is not None:
        field = f"ecommerce.{json_field(deep.path, MAX_ECOMMERCE_DEPTH)}"  # a key first
        field = field.rstrip(".")
        if deep.too_many:
            raise EventError(f"'ecommerce' holds more than {MAX_ECOMMERCE_NODES} lists and "
                             "objects", "ecommerce")
        raise EventError(f"{field} is nested deeper than {MAX_ECOMMERCE_DEPTH} levels", field)
    order_id = value.get("transaction_id")
    if order_id is not None:
        if isinstance(order_id, bool) or not isinstance(order_id, str | int):
            raise EventError("'ecommerce.transaction_id' must be a string",
                             "ecommerce.transaction_id")
        order_id = str(order_id)
        if len(order_id) > STRING_LIMITS["order_id"]:
            raise EventError("'ecommerce.transaction_id' is longer than "
                             f"{STRING_LIMITS['order_id']} characters", "ecommerce.transaction_id")
        row["order_id"] = order_id
    row["revenue"] = _decimal(value.get("value"), "ecommerce.value")
    currency = value.get("currency")
    try:
        row["currency"] = _currency(currency)
    except EventError:
        raise EventError("'ecommerce.currency' must be an ISO 4217 code such as EUR",
                         "ecommerce.currency") from None
    coupon = value.get("coupon")
    if coupon is not None:
        if not isinstance(coupon, str):
            raise EventError("'ecommerce.coupon' must be a string", "ecommerce.coupon")
        if len(coupon) > STRING_LIMITS["coupon"]:
            raise EventError(f"'ecommerce.coupon' is longer than {STRING_LIMITS['coupon']} "
                             "characters", "ecommerce.coupon")
        row["coupon"] = coupon
    ga4_items = value.get("items")
    if ga4_items is None:
        return  # row["items"] is already []
    if not isinstance(ga4_items, list):
        raise EventError("'ecommerce.items' must be a list of objects", "ecommerce.items")
    items = []
    # One past the limit is enough for _items to refuse a longer list.
    for i, item in enumerate(ga4_items[: MAX_ITEMS + 1]):
        if not isinstance(item, dict):
            raise EventError(f"ecommerce.items[{i}] must be an object", f"ecommerce.items[{i}]")
        mapped: dict[str, Any] = {ours: _ga4_string(item, key, i) for key, ours in GA4_ITEM_STRINGS}
        mapped["price"] = item.get("price")
        mapped["quantity"] = _ga4_quantity(item.get("quantity"))
        items.append(mapped)
    try:  # the limits and row format of items stay those of the flat field
        row["items"] = _items(items)
    except EventError as exc:
        field = exc.field or "items"
        raise EventError(str(exc).replace("items", "ecommerce.items", 1),
                         f"ecommerce.{field}") from None


def _ga4_string(item: dict, key: str, i: int) -> str:
    """A GA4 item id or name: a string, or a number as its string form (1.0 as "1", as in
    JavaScript); missing or null is ""."""
    value = item.get(key)
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError(f"'ecommerce.items[{i}].{key}' must be a string or a number",
                         f"ecommerce.items[{i}].{key}")
    elif isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        text = str(int(value))
    else:
        text = str(value)
    if len(text) > ITEM_STRING_LIMIT:
        raise EventError(f"'ecommerce.items[{i}].{key}' is longer than {ITEM_STRING_LIMIT} "
                         "characters", f"ecommerce.items[{i}].{key}")
    return text


def _ga4_quantity(value: Any) -> Any:
    """JavaScript's ``~~quantity || 1``: the whole number part of a number or numeric string,
    1 when that is 0 or less (negatives too), or when missing, null or not numeric. Beyond
    the quantity column's range (2**32) _items refuses it, rather than wrapping as ``~~``."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return value if value >= 1 else 1
    if isinstance(value, str):
        if not value.isascii() or "_" in value:  # float() takes these; JavaScript does not
            return 1
        try:
            value = float(value)
        except ValueError:
            return 1
    if isinstance(value, float) and math.isfinite(value) and value >= 1:
        return int(value)
    return 1


def _props(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError("'props' must be an object", "props")
    if len(value) > MAX_PROPS:
        raise EventError(f"'props' has more than {MAX_PROPS} keys", "props")
    out = {}
    nested = 0  # lists and objects in the values so far
    for key, item in value.items():
        if len(key) > MAX_PROP_KEY:
            raise EventError(f"a 'props' key is longer than {MAX_PROP_KEY} characters", "props")
        if item is None:
            continue
        if isinstance(item, str):
            text = item
        elif isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, int | float):
            text = str(item)
        else:  # lists and objects stay queryable with ClickHouse's JSON functions
            text, nested = _nested_prop(key, item, nested)
        if len(text) > MAX_PROP_VALUE:
            raise EventError(f"props.{key} is longer than {MAX_PROP_VALUE} characters", "props")
        out[key] = text
    return out


def _nested_prop(key: str, value: Any, nested: int) -> tuple[str, int]:
    """A list or object props value as JSON text, and the lists and objects of the event's
    props so far (``nested`` before it); deeper than ``MAX_PROP_DEPTH``, or past
    ``MAX_NESTED_PROPS`` in the event's props, is refused before any of it is serialised,
    having walked at most that many."""
    field = f"props.{key}"
    found = nesting(value, MAX_PROP_DEPTH, MAX_NESTED_PROPS - nested)
    if found.too_many:
        raise EventError(f"'props' holds more than {MAX_NESTED_PROPS} lists and objects",
                         field)
    if found.path is not None:
        raise EventError(f"props.{key} is nested deeper than {MAX_PROP_DEPTH} levels", field)
    nested += found.containers
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits (never from the parser)
        raise EventError(f"props.{key} cannot be stored as JSON", field) from None
    if len(text) > MAX_PROP_VALUE:
        raise EventError(f"props.{key} is longer than {MAX_PROP_VALUE} characters", field)
    return text, nested
