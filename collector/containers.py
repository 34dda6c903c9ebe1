"""Containers: a site's tags, triggers, variables and consent settings as one JSON document
(js_snippet/DESIGN.md, section 1), validated here, versioned in ClickHouse.

A site has one draft; ``publish`` freezes it into version N+1 and makes it live;
``rollback N`` makes version N live again. Every publish and rollback is a row of the
release history, and the live version is the latest release. A site that has published
nothing yet is served its draft (or the default container), so a new site works at once.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from collector.storage import StorageError, Store
from consent.policy import policy_hash
from consent.purposes import BUILT_IN, NECESSARY, PURPOSE_ID

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_ITEMS = 200  # tags, triggers, variables each
MAX_PURPOSES = 20
MAX_LANGUAGES = 40
MAX_CONDITIONS = 20
MAX_TAG_TRIGGERS = 50
MAX_REGEX = 200
MAX_URL = 2048
MAX_SELECTOR = 500
MAX_HTML = 64 * 1024
MAX_NOTE = 1000
MAX_VERSION = 2**32 - 1
LIVE_TTL = 2.0  # seconds between checks whether any container changed (see Containers)
MAX_ERRORS = 100

ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
DATA_LAYER_KEY = re.compile(r"^[A-Za-z0-9_$]+(\.[A-Za-z0-9_$]+)*$")
COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
ATTRIBUTE = re.compile(r"^[A-Za-z_:][-A-Za-z0-9_:.]*$")
EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
COOKIE_DOMAIN = re.compile(r"^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
TAG_PATH = re.compile(r"^/[A-Za-z0-9._~/{}-]*\.js$")
POLICY_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
VAR_REF = re.compile(r"\{\{([^{}]*)\}\}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_BUT_NEWLINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
ABSOLUTE_URL = re.compile(r"(?:https?:)?//[^\s\"'<>()]+", re.I)

DEFAULT_TAG_PATH = "/t/{site}.js"
# Paths the collector answers itself: a custom tag path must not shadow them.
RESERVED_PATHS = ("/collect", "/p.gif", "/consent", "/healthz", "/readyz", "/metrics")
RESERVED_PREFIXES = ("/api/", "/t/banner.", "/t/debug.")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")

VARIABLE_TYPES: dict[str, tuple[str, ...]] = {
    # type: its fields beside id and type (all required)
    "url": ("part",),
    "query": ("name",),
    "data_layer": ("key",),
    "cookie": ("name",),
    "element_text": ("selector",),
    "element_attribute": ("selector", "attribute"),
    "constant": ("value",),
}
URL_PARTS = ("href", "host", "path", "query", "hash")
TRIGGER_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required fields, optional fields) beside id, type and conditions
    "page_view": ((), ()),
    "history_change": ((), ()),
    "click": ((), ("selector",)),
    "link_click": ((), ("selector",)),
    "outbound_link": ((), ()),
    "file_download": ((), ()),
    "form_submit": ((), ("selector",)),
    "scroll_depth": (("percent",), ()),
    "timer": (("interval_ms",), ("limit",)),
    "element_visible": (("selector",), ("ratio",)),
    "custom_event": (("event",), ()),
}
OPERATORS = ("equals", "not_equals", "contains", "starts_with", "ends_with", "matches",
             "greater_than", "less_than")
TAG_TYPES = {"pixel": "url", "script": "src", "html": "html"}
AUTO = ("page_views", "spa", "clicks", "outbound_links", "downloads", "scroll_depth", "forms",
        "ecommerce")
TEXT_KEYS = {"title": 200, "body": 5000, "accept_all": 64, "reject_all": 64, "settings": 64,
             "save": 64}

DEFAULT_SETTINGS: dict[str, Any] = {
    "endpoint": "/collect",
    "tag_path": DEFAULT_TAG_PATH,
    "cookie_domain": "",
    "session_timeout_minutes": 30,
    "auto": {"page_views": True, "spa": True, "clicks": False, "outbound_links": True,
             "downloads": True, "scroll_depth": True, "forms": True, "ecommerce": True},
    "download_extensions": ["pdf", "zip", "csv", "xlsx", "docx", "mp3", "mp4", "dmg", "exe"],
    "scroll_thresholds": [25, 50, 75, 90],
}
DEFAULT_CONSENT: dict[str, Any] = {
    "lifetime_days": 365,
    "rejection_lifetime_days": 182,
    "policy_version": "1",
}


# -- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    field: str  # a JSON path: tags[2].purpose; "" for the document itself
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "error": str(self)}


class ContainerError(ValueError):
    """A container was refused; ``errors`` name every problem found, in document order."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @property
    def field(self) -> str:
        return self.errors[0].field if self.errors else ""


class NotFound(LookupError):
    """An unknown version."""


# -- validation -------------------------------------------------------------------------------


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Checker:
    """Walks a document and records problems; every check returns the value if it is usable."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.errors: list[FieldError] = []
        self.origins = tuple(o for o in origins if o != "*")

    def fail(self, path: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(FieldError(path, message))

    # -- shapes

    def obj(self, value: Any, path: str, required: Sequence[str] = (),
            optional: Sequence[str] = ()) -> dict | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be an object, not {_type_name(value)}")
            return None
        known = (*required, *optional)
        for name in required:
            if name not in value:
                self.fail(_key(path, name), "is required")
        for name in value:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1) if len(name) <= 64 else ()
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail(_key(path, name[:64]), f"unknown key{hint}")
        return value

    def array(self, value: Any, path: str, max_items: int, min_items: int = 0) -> list | None:
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {_type_name(value)}")
            return None
        if len(value) > max_items:
            self.fail(path, f"at most {max_items} entries (got {len(value)})")
            return None
        if len(value) < min_items:
            self.fail(path, "must not be empty" if min_items == 1 else
                      f"at least {min_items} entries")
        return value

    def string(self, value: Any, path: str, max_len: int, min_len: int = 1,
               pattern: re.Pattern | None = None, expected: str = "",
               newlines: bool = False) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {_type_name(value)}")
            return None
        if len(value) < min_len:
            self.fail(path, "must not be empty")
            return None
        if len(value) > max_len:
            self.fail(path, f"at most {max_len} characters (got {len(value)})")
            return None
        if pattern is not None and not pattern.match(value):
            self.fail(path, f"{value[:80]!r} is not {expected}")
            return None
        if (CONTROL_BUT_NEWLINES if newlines else CONTROL).search(value):
            self.fail(path, "must not contain control characters")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {_type_name(value)}")
            return None
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, not {_type_name(value)}")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be between {lo} and {hi} (got {value})")
            return None
        return value

    def number(self, value: Any, path: str, lo: float, hi: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"must be a number, not {_type_name(value)}")
            return None
        if not lo <= value <= hi:
            self.fail(path, f"must be between {lo} and {hi} (got {value})")
            return None
        return value

    def enum(self, value: Any, path: str, options: Sequence[str]) -> str | None:
        if not isinstance(value, str) or value not in options:
            shown = f"{value[:40]!r}" if isinstance(value, str) else _type_name(value)
            self.fail(path, f"must be one of {', '.join(options)} (got {shown})")
            return None
        return value

    def ident(self, value: Any, path: str) -> str | None:
        return self.string(value, path, 64, pattern=ID,
                           expected="an id (a-z, 0-9, '_', '-'; starting with a letter or digit; "
                           "at most 64 characters)")

    def unique_ids(self, items: list, path: str) -> dict[str, int]:
        """The list's valid ids, each with its index; duplicates reported."""
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                continue
            ident = self.ident(item["id"], f"{path}[{i}].id")
            if ident is None:
                continue
            if ident in seen:
                self.fail(f"{path}[{i}].id", f"duplicate id '{ident}' (also {path}[{seen[ident]}])")
            else:
                seen[ident] = i
        return seen

    # -- URLs

    def url(self, value: Any, path: str, variables: Mapping[str, int] | None,
            allow_relative: bool = True) -> str | None:
        """An https URL (http only for localhost), or a path on the site itself
        (``/...``); ``{{id}}`` references to variables in its path and query."""
        text = self.string(value, path, MAX_URL)
        if text is None:
            return None
        if re.search(r"\s", text):
            self.fail(path, "must not contain spaces (URL-encode them)")
            return None
        refs = VAR_REF.findall(text)
        rest = VAR_REF.sub("", text)
        if "{{" in rest or "}}" in rest:
            self.fail(path, "unbalanced '{{' or '}}': write {{variable_id}}")
            return None
        if refs and variables is None:
            self.fail(path, "variables ({{...}}) are not allowed here")
            return None
        for ref in refs:
            if ref not in (variables or {}):
                self.fail(path, f"unknown variable '{ref[:64]}' in {{{{{ref[:64]}}}}}")
        if text.startswith("/") and not text.startswith("//"):
            if not allow_relative:
                self.fail(path, "must be an absolute https URL")
                return None
            return text
        parts = urlsplit(VAR_REF.sub("x", text))
        if parts.scheme not in ("https", "http") or not parts.netloc:
            self.fail(path, "must be an https URL" +
                      (" or a path starting with '/'" if allow_relative else ""))
            return None
        netloc_end = len(parts.scheme) + 3 + len(parts.netloc)
        if "{{" in text[:netloc_end]:
            self.fail(path, "variables are allowed only in the path and query")
            return None
        if "@" in parts.netloc:
            self.fail(path, "must not contain a user name or password")
            return None
        if parts.scheme == "http" and (parts.hostname or "") not in LOCAL_HOSTS:
            self.fail(path, "must be https (http only for localhost and 127.0.0.1)")
            return None
        return text

    def own_url(self, url: str) -> bool:
        """Whether a URL is the site's own: a path, or on one of the site's origins."""
        if url.startswith("/") and not url.startswith("//"):
            return True
        parts = urlsplit(url if "://" in url else "https:" + url)
        host = (parts.hostname or "").lower()
        origin = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        for allowed in self.origins:
            scheme, _, allowed_host = allowed.partition("://")
            if allowed == origin:
                return True
            if allowed_host.startswith("*.") and parts.scheme.lower() == scheme and \
                    host.endswith(allowed_host[1:]):
                return True
        return False


def validate(document: Any, origins: Iterable[str] = ()) -> list[FieldError]:
    """Every problem of a container document, in document order; [] if it is valid.

    ``origins``: the site's origins; a tag for the purpose ``necessary`` may load only from
    them (or from a path on the page's own site).
    """
    c = _Checker(origins)
    try:
        size = len(orjson.dumps(document))
    except (TypeError, orjson.JSONEncodeError) as exc:
        return [FieldError("", f"not a JSON document: {exc}")]
    if size > MAX_DOCUMENT_BYTES:
        return [FieldError("", f"the container is {size} bytes; at most {MAX_DOCUMENT_BYTES}")]
    doc = c.obj(document, "", required=("consent",),
                optional=("settings", "variables", "triggers", "tags"))
    if doc is None:
        return c.errors
    if "settings" in doc:
        _check_settings(c, doc["settings"])
    purposes = _check_consent(c, doc["consent"]) if "consent" in doc else {}
    variables = _check_variables(c, doc.get("variables", []))
    triggers = _check_triggers(c, doc.get("triggers", []), variables)
    _check_tags(c, doc.get("tags", []), triggers, variables, purposes)
    return c.errors


def check(document: Any, origins: Iterable[str] = ()) -> None:
    """Raise ContainerError naming every problem, if there is any."""
    errors = validate(document, origins)
    if errors:
        raise ContainerError(errors)


def _check_settings(c: _Checker, value: Any) -> None:
    s = c.obj(value, "settings", optional=tuple(DEFAULT_SETTINGS))
    if s is None:
        return
    if "endpoint" in s:
        c.url(s["endpoint"], "settings.endpoint", None)
    if "tag_path" in s:
        _check_tag_path(c, s["tag_path"])
    if "cookie_domain" in s:
        domain = c.string(s["cookie_domain"], "settings.cookie_domain", 253, min_len=0)
        if domain and not COOKIE_DOMAIN.match(domain):  # "": the page's host only
            c.fail("settings.cookie_domain",
                   f"{domain[:80]!r} is not a domain such as '.shop.example'")
    if "session_timeout_minutes" in s:
        c.integer(s["session_timeout_minutes"], "settings.session_timeout_minutes", 1, 1440)
    if "auto" in s and (auto := c.obj(s["auto"], "settings.auto", optional=AUTO)) is not None:
        for name in AUTO:
            if name in auto:
                c.boolean(auto[name], f"settings.auto.{name}")
    if "download_extensions" in s:
        path = "settings.download_extensions"
        for i, ext in enumerate(c.array(s["download_extensions"], path, 50) or ()):
            c.string(ext, f"{path}[{i}]", 10, pattern=EXTENSION,
                     expected="a file extension (a-z, 0-9, without the dot)")
    if "scroll_thresholds" in s:
        path = "settings.scroll_thresholds"
        seen: set[int] = set()
        for i, percent in enumerate(c.array(s["scroll_thresholds"], path, 20) or ()):
            if c.integer(percent, f"{path}[{i}]", 1, 100) is not None:
                if percent in seen:
                    c.fail(f"{path}[{i}]", f"{percent} is listed twice")
                seen.add(percent)


def _check_tag_path(c: _Checker, value: Any) -> None:
    path = "settings.tag_path"
    text = c.string(value, path, 200, pattern=TAG_PATH,
                    expected="a path such as '/t/{site}.js' (A-Z, a-z, 0-9, '.', '_', '~', '-', "
                    "'/'; ending in '.js')")
    if text is None:
        return
    bare = text.replace("{site}", "")
    if "{" in bare or "}" in bare:
        c.fail(path, "the only placeholder is {site}")
    elif "//" in text or "/./" in text or "/../" in text or text.startswith("/."):
        c.fail(path, "must not contain empty, '.' or '..' segments")
    elif text != DEFAULT_TAG_PATH and (
        text in RESERVED_PATHS or text.startswith(RESERVED_PREFIXES)
        or re.fullmatch(r"/t/[^/]+\.js", text)
    ):
        c.fail(path, f"{text!r} is reserved by the collector")


def _check_consent(c: _Checker, value: Any) -> dict[str, int]:
    """Checks the consent section; returns the purpose ids."""
    s = c.obj(value, "consent", required=("purposes", "texts"), optional=tuple(DEFAULT_CONSENT))
    if s is None:
        return {}
    purposes: dict[str, int] = {}
    items = c.array(s.get("purposes"), "consent.purposes", MAX_PURPOSES, min_items=1) \
        if "purposes" in s else None
    for i, item in enumerate(items or ()):
        path = f"consent.purposes[{i}]"
        p = c.obj(item, path, required=("id",), optional=("required", "default"))
        if p is None or "id" not in p:
            continue
        pid = c.string(p["id"], f"{path}.id", 32, pattern=PURPOSE_ID,
                       expected="a purpose id (a-z, 0-9, '_'; starting with a letter; "
                       "at most 32 characters)")
        for flag in ("required", "default"):
            if flag in p:
                c.boolean(p[flag], f"{path}.{flag}")
        if pid is None:
            continue
        if pid in purposes:
            c.fail(f"{path}.id", f"duplicate id '{pid}' (also consent.purposes[{purposes[pid]}])")
            continue
        purposes[pid] = i
        if pid == NECESSARY and p.get("required") is not True:
            c.fail(f"{path}.required", "the purpose 'necessary' must be required: true")
        elif pid != NECESSARY and p.get("required") is True:
            c.fail(f"{path}.required", "only 'necessary' may be required: other purposes "
                   "need the person's consent")
    if items and NECESSARY not in purposes:
        c.fail("consent.purposes", "the purpose 'necessary' (required: true) is missing")
    lifetime = rejection = None
    if "lifetime_days" in s:
        lifetime = c.integer(s["lifetime_days"], "consent.lifetime_days", 1, 3650)
    if "rejection_lifetime_days" in s:
        rejection = c.integer(s["rejection_lifetime_days"], "consent.rejection_lifetime_days",
                              1, 3650)
    if rejection is not None and rejection > (lifetime or DEFAULT_CONSENT["lifetime_days"]):
        c.fail("consent.rejection_lifetime_days",
               "a rejection must not be kept longer than a consent (consent.lifetime_days)")
    if "policy_version" in s:
        c.string(s["policy_version"], "consent.policy_version", 32, pattern=POLICY_VERSION,
                 expected="a version such as '1' or '2026-01' (A-Z, a-z, 0-9, '.', '_', '-')")
    if "texts" in s:
        _check_texts(c, s["texts"], purposes)
    return purposes


def _check_texts(c: _Checker, value: Any, purposes: Mapping[str, int]) -> None:
    if not isinstance(value, dict):
        c.fail("consent.texts", f"must be an object, not {_type_name(value)}")
        return
    if "en" not in value:
        c.fail("consent.texts.en", "is required: the English texts are the fallback")
    if len(value) > MAX_LANGUAGES:
        c.fail("consent.texts", f"at most {MAX_LANGUAGES} languages")
        return
    for lang, text in value.items():
        if not LANGUAGE.match(lang):
            c.fail(f"consent.texts.{lang[:20]}", "not a language code such as 'en', 'de' or "
                   "'de-AT'")
            continue
        path = f"consent.texts.{lang}"
        t = c.obj(text, path, required=(*TEXT_KEYS, "purposes"))
        if t is None:
            continue
        for name, max_len in TEXT_KEYS.items():
            if name in t:
                c.string(t[name], f"{path}.{name}", max_len, newlines=name == "body")
        if "purposes" not in t:
            continue
        names = c.obj(t["purposes"], f"{path}.purposes", required=tuple(purposes),
                      optional=tuple(purposes))
        for pid, entry in (names or {}).items():
            if pid not in purposes:
                continue  # reported as an unknown key
            ppath = f"{path}.purposes.{pid}"
            e = c.obj(entry, ppath, required=("name", "description"))
            if e is not None:
                if "name" in e:
                    c.string(e["name"], f"{ppath}.name", 100)
                if "description" in e:
                    c.string(e["description"], f"{ppath}.description", 2000, newlines=True)


def _check_variables(c: _Checker, value: Any) -> dict[str, int]:
    items = c.array(value, "variables", MAX_ITEMS)
    if items is None:
        return {}
    ids = c.unique_ids(items, "variables")
    for i, item in enumerate(items):
        path = f"variables[{i}]"
        if not isinstance(item, dict):
            c.obj(item, path)
            continue
        kind = c.enum(item.get("type"), f"{path}.type", tuple(VARIABLE_TYPES)) \
            if "type" in item else None
        fields = VARIABLE_TYPES.get(kind or "", ())
        optional = fields if kind else tuple(k for k in item if k not in ("id", "type"))
        c.obj(item, path, required=("id", "type", *fields) if kind else ("id", "type"),
              optional=() if kind else optional)
        if kind is None:
            continue
        for name in fields:
            if name not in item:
                continue
            fpath = f"{path}.{name}"
            v = item[name]
            if name == "part":
                c.enum(v, fpath, URL_PARTS)
            elif name == "name" and kind == "cookie":
                c.string(v, fpath, 256, pattern=COOKIE_NAME, expected="a cookie name")
            elif name == "name":
                c.string(v, fpath, 256)
            elif name == "key":
                c.string(v, fpath, 256, pattern=DATA_LAYER_KEY,
                         expected="a data layer key such as 'ecommerce.transaction_id'")
            elif name == "selector":
                c.string(v, fpath, MAX_SELECTOR)
            elif name == "attribute":
                c.string(v, fpath, 100, pattern=ATTRIBUTE, expected="an attribute name")
            elif name == "value":
                c.string(v, fpath, 1000, min_len=0)
    return ids


def _check_triggers(c: _Checker, value: Any, variables: Mapping[str, int]) -> dict[str, int]:
    items = c.array(value, "triggers", MAX_ITEMS)
    if items is None:
        return {}
    ids = c.unique_ids(items, "triggers")
    for i, item in enumerate(items):
        path = f"triggers[{i}]"
        if not isinstance(item, dict):
            c.obj(item, path)
            continue
        kind = c.enum(item.get("type"), f"{path}.type", tuple(TRIGGER_TYPES)) \
            if "type" in item else None
        required, optional = TRIGGER_TYPES.get(kind or "", ((), ()))
        if kind is None:
            optional = tuple(k for k in item if k not in ("id", "type"))
        c.obj(item, path, required=("id", "type", *required),
              optional=(*optional, "conditions"))
        if kind is None:
            continue
        for name in (*required, *optional):
            if name not in item:
                continue
            fpath, v = f"{path}.{name}", item[name]
            if name == "selector":
                c.string(v, fpath, MAX_SELECTOR)
            elif name == "percent":
                c.integer(v, fpath, 1, 100)
            elif name == "interval_ms":
                c.integer(v, fpath, 1000, 86_400_000)
            elif name == "limit":
                c.integer(v, fpath, 1, 10_000)
            elif name == "ratio":
                c.number(v, fpath, 0, 1)
            elif name == "event":
                c.string(v, fpath, 100)
        if "conditions" in item:
            for j, cond in enumerate(c.array(item["conditions"], f"{path}.conditions",
                                             MAX_CONDITIONS) or ()):
                _check_condition(c, cond, f"{path}.conditions[{j}]", variables)
    return ids


def _check_condition(c: _Checker, value: Any, path: str, variables: Mapping[str, int]) -> None:
    cond = c.obj(value, path, required=("variable", "operator", "value"))
    if cond is None:
        return
    name = c.ident(cond["variable"], f"{path}.variable") if "variable" in cond else None
    if name is not None and name not in variables:
        c.fail(f"{path}.variable", f"unknown variable '{name}'")
    op = c.enum(cond["operator"], f"{path}.operator", OPERATORS) if "operator" in cond else None
    if op is None or "value" not in cond:
        return
    v, vpath = cond["value"], f"{path}.value"
    if op in ("greater_than", "less_than"):
        c.number(v, vpath, -1e15, 1e15)
    elif op == "matches":
        if c.string(v, vpath, MAX_REGEX) is not None:
            try:
                re.compile(v)
            except re.error as exc:
                c.fail(vpath, f"not a valid regular expression: {exc}")
    else:
        c.string(v, vpath, 1000, min_len=0)


def _check_tags(c: _Checker, value: Any, triggers: Mapping[str, int],
                variables: Mapping[str, int], purposes: Mapping[str, int]) -> None:
    items = c.array(value, "tags", MAX_ITEMS)
    if items is None:
        return
    c.unique_ids(items, "tags")
    for i, item in enumerate(items):
        path = f"tags[{i}]"
        if not isinstance(item, dict):
            c.obj(item, path)
            continue
        kind = c.enum(item.get("type"), f"{path}.type", tuple(TAG_TYPES)) \
            if "type" in item else None
        content = TAG_TYPES.get(kind or "")
        base = ("id", "type", "triggers")
        if "purpose" not in item:
            c.fail(f"{path}.purpose", "is required: a tag without a purpose would run "
                   "without consent")
        if kind is None:
            c.obj(item, path, required=base,
                  optional=tuple(k for k in item if k not in base))
            continue
        c.obj(item, path, required=(*base, content),
              optional=("purpose", "name", "blocking_triggers"))
        if "name" in item:
            c.string(item["name"], f"{path}.name", 200)
        purpose = None
        if "purpose" in item:
            purpose = c.string(item["purpose"], f"{path}.purpose", 32)
            if purpose is not None and purpose not in purposes:
                known = ", ".join(purposes) or "none"
                c.fail(f"{path}.purpose", f"unknown purpose '{purpose}' (the container's "
                       f"purposes: {known})")
                purpose = None
        for name in ("triggers", "blocking_triggers"):
            if name not in item:
                continue
            refs = c.array(item[name], f"{path}.{name}", MAX_TAG_TRIGGERS,
                           min_items=1 if name == "triggers" else 0)
            for j, ref in enumerate(refs or ()):
                rpath = f"{path}.{name}[{j}]"
                if c.ident(ref, rpath) is not None and ref not in triggers:
                    c.fail(rpath, f"unknown trigger '{ref}'")
        if content not in item:
            continue
        cpath = f"{path}.{content}"
        if kind == "html":
            html = c.string(item["html"], cpath, MAX_HTML, newlines=True)
            if html is not None and purpose == NECESSARY:
                for found in ABSOLUTE_URL.findall(html):
                    if not c.own_url(found):
                        c.fail(cpath, f"loads {found[:80]!r}: a tag for 'necessary' may load "
                               "only from the site itself (its origins)")
                        break
        else:
            url = c.url(item[content], cpath, variables)
            if url is not None and purpose == NECESSARY and not c.own_url(url):
                c.fail(f"{path}.purpose", "'necessary' is only for tags of the site itself: "
                       f"{url[:80]!r} is not on the site's origins")


# -- the document -----------------------------------------------------------------------------


def normalize(document: Mapping[str, Any]) -> dict[str, Any]:
    """A valid document with every default filled in: what the tag is served."""
    doc = copy.deepcopy(dict(document))
    settings = {**copy.deepcopy(DEFAULT_SETTINGS), **doc.get("settings", {})}
    settings["auto"] = {**DEFAULT_SETTINGS["auto"], **doc.get("settings", {}).get("auto", {})}
    consent = {**DEFAULT_CONSENT, **doc["consent"]}
    consent["purposes"] = [
        {"id": p["id"], "required": bool(p.get("required", False)),
         "default": bool(p.get("default", False))}
        for p in consent["purposes"]
    ]
    triggers = [{**t, "conditions": t.get("conditions", [])} for t in doc.get("triggers", [])]
    tags = [{"name": t["id"], **t, "blocking_triggers": t.get("blocking_triggers", [])}
            for t in doc.get("tags", [])]
    return {"settings": settings, "consent": consent, "variables": doc.get("variables", []),
            "triggers": triggers, "tags": tags}


def container_policy_hash(document: Mapping[str, Any]) -> str:
    """The consent policy hash of a valid document (DESIGN.md section 1)."""
    consent = document["consent"]
    return policy_hash(
        consent["purposes"],
        consent.get("policy_version", DEFAULT_CONSENT["policy_version"]),
        [(t["id"], t["purpose"]) for t in document.get("tags", [])],
    )


def resolved_tag_path(document: Mapping[str, Any], site_id: str) -> str:
    """The container's own tag path for ``site_id``, or "" for the default ``/t/{site}.js``."""
    template = document.get("settings", {}).get("tag_path", DEFAULT_TAG_PATH)
    path = template.replace("{site}", site_id)
    return "" if path == DEFAULT_TAG_PATH.replace("{site}", site_id) else path


def default_container() -> dict[str, Any]:
    """A new site's container: the four built-in purposes, English and German banner texts,
    automatic tracking on, no third-party tags."""
    return {
        "settings": copy.deepcopy(DEFAULT_SETTINGS),
        "consent": {
            "purposes": [{"id": NECESSARY, "required": True},
                         *({"id": p, "default": False} for p in BUILT_IN if p != NECESSARY)],
            **DEFAULT_CONSENT,
            "texts": copy.deepcopy(DEFAULT_TEXTS),
        },
        "variables": [{"id": "page_path", "type": "url", "part": "path"}],
        "triggers": [{"id": "all_pages", "type": "page_view"}],
        "tags": [],
    }


# Both buttons say the same kind of thing in the same few words: rejecting must be as easy
# as accepting (the banner shows them side by side, equally prominent).
DEFAULT_TEXTS: dict[str, Any] = {
    "en": {
        "title": "Your privacy choices",
        "body": (
            "We use cookies and similar technologies. Some are necessary for this website to "
            "work. With your consent we also use them to understand how the website is used "
            "(analytics), to remember your preferences and personalise content "
            "(personalisation), and to show you relevant advertising and measure its success "
            "(marketing); for marketing, data may be shared with our advertising partners. "
            "You can accept all, reject all, or choose for each purpose in the settings. "
            "Rejecting has no disadvantage for you. You can change your choice or withdraw "
            "your consent at any time, with effect for the future."
        ),
        "accept_all": "Accept all",
        "reject_all": "Reject all",
        "settings": "Settings",
        "save": "Save choices",
        "purposes": {
            "necessary": {
                "name": "Necessary",
                "description": "Needed for the website to work, for example to remember your "
                               "privacy choices. These cannot be switched off.",
            },
            "analytics": {
                "name": "Analytics",
                "description": "Helps us understand how visitors use the website, for example "
                               "which pages are visited, so that we can improve it.",
            },
            "personalization": {
                "name": "Personalisation",
                "description": "Remembers your preferences and adapts content and "
                               "recommendations to you.",
            },
            "marketing": {
                "name": "Marketing",
                "description": "Lets us and our advertising partners show you relevant "
                               "advertising and measure how well it works.",
            },
        },
    },
    "de": {
        "title": "Ihre Datenschutz-Einstellungen",
        "body": (
            "Wir verwenden Cookies und ähnliche Technologien. Einige sind für den Betrieb "
            "dieser Website notwendig. Mit Ihrer Einwilligung setzen wir sie außerdem ein, um "
            "zu verstehen, wie die Website genutzt wird (Statistik), um Ihre Einstellungen zu "
            "speichern und Inhalte für Sie anzupassen (Personalisierung) sowie um Ihnen "
            "relevante Werbung zu zeigen und deren Erfolg zu messen (Marketing); für Marketing "
            "können Daten an unsere Werbepartner übermittelt werden. Sie können allem "
            "zustimmen, alles ablehnen oder in den Einstellungen für jeden Zweck einzeln "
            "wählen. Eine Ablehnung hat für Sie keine Nachteile. Sie können Ihre Auswahl "
            "jederzeit mit Wirkung für die Zukunft ändern oder Ihre Einwilligung widerrufen."
        ),
        "accept_all": "Alle akzeptieren",
        "reject_all": "Alle ablehnen",
        "settings": "Einstellungen",
        "save": "Auswahl speichern",
        "purposes": {
            "necessary": {
                "name": "Notwendig",
                "description": "Für den Betrieb der Website erforderlich, zum Beispiel um Ihre "
                               "Datenschutz-Einstellungen zu speichern. Diese können nicht "
                               "abgewählt werden.",
            },
            "analytics": {
                "name": "Statistik",
                "description": "Hilft uns zu verstehen, wie Besucher die Website nutzen, zum "
                               "Beispiel welche Seiten aufgerufen werden, damit wir sie "
                               "verbessern können.",
            },
            "personalization": {
                "name": "Personalisierung",
                "description": "Speichert Ihre Vorlieben und passt Inhalte und Empfehlungen "
                               "an Sie an.",
            },
            "marketing": {
                "name": "Marketing",
                "description": "Ermöglicht uns und unseren Werbepartnern, Ihnen relevante "
                               "Werbung zu zeigen und deren Erfolg zu messen.",
            },
        },
    },
}


# -- versions in ClickHouse -------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    site_id: str
    document: dict[str, Any]
    policy: str
    updated_at: str | None  # None: never saved, the default container


@dataclass(frozen=True)
class Version:
    site_id: str
    version: int
    policy: str
    note: str
    created_at: str
    live: bool
    document: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"version": self.version, "policy": self.policy, "note": self.note,
               "created_at": self.created_at, "live": self.live}
        if self.document is not None:
            out["document"] = self.document
        return out


@dataclass(frozen=True)
class Live:
    """What ``/t/{site}.js`` serves: the live version, or the draft (version 0) before the
    first publish."""

    site_id: str
    version: int
    document: dict[str, Any]  # normalized
    policy: str
    digest: str  # of the stored document: identifies this container in caches


def _iso(value: str) -> str:
    """ClickHouse's ``2026-01-02 03:04:05.678`` as ISO 8601 UTC."""
    return value.replace(" ", "T") + "Z"


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


class Containers:
    """Drafts, versions and releases of every site's container, in ClickHouse.

    The live containers are kept in memory. Every ``ttl`` seconds one query tells whether
    any draft or release changed (in any process: the ``tagwerk container`` command, other
    collectors of a cluster); if so, the cache is dropped. Changes made through this object
    clear it at once.
    """

    def __init__(self, store: Store, ttl: float = LIVE_TTL) -> None:
        self.store = store
        self.ttl = ttl
        self._live: dict[str, Live] = {}
        # Never forgotten, only replaced: what the hot path reads without I/O.
        self._known: dict[str, Live] = {}
        self._paths: dict[str, str] | None = None
        self._generation = b""
        self._epoch = 0  # counts the times the cache was dropped
        self._checked_until = 0.0
        self._lock = threading.Lock()  # one publish or rollback at a time in this process
        self._paths_lock = threading.Lock()
        self._fresh_lock = threading.Lock()
        self._stamp_lock = threading.Lock()
        self._last_ms = 0

    def _stamp(self) -> dt.datetime:
        """Now, strictly later than the previous stamp of this process (millisecond steps):
        the newest draft and the newest release win by time."""
        with self._stamp_lock:
            ms = max(int(time.time() * 1000), self._last_ms + 1)
            self._last_ms = ms
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        # Through the insert path (a request body), not parameters: a document may be 256 KB.
        self.store.insert(f"tagwerk.{table}", orjson.dumps(row) + b"\n")

    # -- draft

    def draft(self, site_id: str) -> Draft:
        rows = self.store.rows(
            "SELECT document, policy_hash, updated_at FROM tagwerk.container_drafts FINAL "
            "WHERE site_id = {site:String}", {"site": site_id})
        if not rows:
            doc = default_container()
            return Draft(site_id, doc, container_policy_hash(doc), None)
        row = rows[0]
        return Draft(site_id, orjson.loads(row["document"]), row["policy_hash"],
                     _iso(row["updated_at"]))

    def put_draft(self, site_id: str, document: Any, origins: Iterable[str] = ()) -> Draft:
        """Validate and save the draft; ContainerError names the problems."""
        check(document, origins)
        self._check_tag_path_free(site_id, document)
        text = orjson.dumps(document).decode()
        policy = container_policy_hash(document)
        stamp = self._stamp()
        self._insert("container_drafts", {
            "site_id": site_id, "document": text, "policy_hash": policy,
            "tag_path": resolved_tag_path(document, site_id),
            "updated_at": _ch_time(stamp),
        })
        self.invalidate(site_id)
        return Draft(site_id, document, policy, _iso(_ch_time(stamp)))

    # -- versions

    def publish(self, site_id: str, note: str = "", origins: Iterable[str] = ()) -> Version:
        """Freeze the draft into the next version and make it live."""
        if not isinstance(note, str) or len(note) > MAX_NOTE or CONTROL.search(note):
            raise ContainerError([FieldError("note", f"a string of at most {MAX_NOTE} "
                                             "characters without control characters")])
        with self._lock:
            draft = self.draft(site_id)
            check(draft.document, origins)
            self._check_tag_path_free(site_id, draft.document)
            text = orjson.dumps(draft.document).decode()
            publish_id = str(uuid.uuid4())
            number = self._max_version(site_id) + 1
            for _ in range(10):
                stamp = self._stamp()
                self._insert("container_versions", {
                    "site_id": site_id, "version": number, "document": text,
                    "policy_hash": draft.policy,
                    "tag_path": resolved_tag_path(draft.document, site_id),
                    "note": note, "publish_id": publish_id,
                    "created_at": _ch_time(stamp),
                })
                # Another process may have published the same number at the same moment:
                # the first row is that version; the other publisher takes the next number.
                winner = self.store.rows(
                    "SELECT publish_id FROM tagwerk.container_versions "
                    "WHERE site_id = {site:String} AND version = {v:UInt32} "
                    "ORDER BY created_at, publish_id LIMIT 1", {"site": site_id, "v": number})
                if winner and winner[0]["publish_id"] == publish_id:
                    break
                number = self._max_version(site_id) + 1
                publish_id = str(uuid.uuid4())
            else:  # pragma: no cover - ten lost races in a row
                raise StorageError("could not publish: concurrent publishes kept winning")
            self._release(site_id, number, "publish", note)
            return Version(site_id, number, draft.policy, note, _iso(_ch_time(stamp)), True)

    def rollback(self, site_id: str, version: int, note: str = "") -> Version:
        """Make an earlier version live again (a new release; the version is unchanged)."""
        with self._lock:
            found = self.version(site_id, version)
            if found is None:
                raise NotFound(f"site {site_id!r} has no version {version}")
            self._release(site_id, version, "rollback", note)
            return Version(site_id, version, found.policy, found.note, found.created_at, True)

    def _release(self, site_id: str, version: int, action: str, note: str) -> None:
        self._insert("container_releases", {
            "site_id": site_id, "version": version, "action": action, "note": note,
            "release_id": str(uuid.uuid4()), "released_at": _ch_time(self._stamp()),
        })
        self.invalidate(site_id)

    def _max_version(self, site_id: str) -> int:
        rows = self.store.rows(
            "SELECT max(version) AS v FROM tagwerk.container_versions "
            "WHERE site_id = {site:String}", {"site": site_id})
        return int(rows[0]["v"]) if rows else 0

    def live_version(self, site_id: str) -> int | None:
        """The live version number (not cached); None before the first publish."""
        rows = self.store.rows(
            "SELECT version FROM tagwerk.container_releases WHERE site_id = {site:String} "
            "ORDER BY released_at DESC, release_id DESC LIMIT 1", {"site": site_id})
        return int(rows[0]["version"]) if rows else None

    def versions(self, site_id: str) -> list[Version]:
        live = self.live_version(site_id)
        rows = self.store.rows(
            "SELECT version, policy_hash, note, created_at FROM tagwerk.container_versions "
            "WHERE site_id = {site:String} ORDER BY version, created_at, publish_id "
            "LIMIT 1 BY version", {"site": site_id})
        return [Version(site_id, int(r["version"]), r["policy_hash"], r["note"],
                        _iso(r["created_at"]), int(r["version"]) == live) for r in rows]

    def version(self, site_id: str, version: int) -> Version | None:
        if isinstance(version, bool) or not isinstance(version, int) or \
                not 1 <= version <= MAX_VERSION:
            return None
        rows = self.store.rows(
            "SELECT version, document, policy_hash, note, created_at "
            "FROM tagwerk.container_versions "
            "WHERE site_id = {site:String} AND version = {v:UInt32} "
            "ORDER BY created_at, publish_id LIMIT 1", {"site": site_id, "v": version})
        if not rows:
            return None
        r = rows[0]
        return Version(site_id, version, r["policy_hash"], r["note"], _iso(r["created_at"]),
                       self.live_version(site_id) == version, orjson.loads(r["document"]))

    def releases(self, site_id: str) -> list[dict[str, Any]]:
        """The release history, oldest first."""
        rows = self.store.rows(
            "SELECT version, action, note, released_at FROM tagwerk.container_releases "
            "WHERE site_id = {site:String} ORDER BY released_at, release_id", {"site": site_id})
        return [{"version": int(r["version"]), "action": r["action"], "note": r["note"],
                 "released_at": _iso(r["released_at"])} for r in rows]

    # -- what is served

    def _fresh(self) -> bool:
        """Forget the cached containers when any draft or release changed anywhere: one
        small query per ``ttl`` for all sites. False while ClickHouse cannot be asked (the
        cache is served as it is)."""
        if time.monotonic() < self._checked_until:
            return True
        with self._fresh_lock:
            if time.monotonic() < self._checked_until:
                return True
            try:
                rows = self.store.rows(
                    "SELECT (SELECT (toString(max(released_at)), count()) "
                    "FROM tagwerk.container_releases) AS releases, "
                    "(SELECT (toString(max(updated_at)), count()) "
                    "FROM tagwerk.container_drafts) AS drafts")
            except StorageError:
                self._checked_until = time.monotonic() + self.ttl
                return False
            generation = orjson.dumps(rows)
            if generation != self._generation:
                self._forget()
                self._generation = generation
            self._checked_until = time.monotonic() + self.ttl
            return True

    def live(self, site_id: str) -> Live:
        """The live container (cached); the draft or default before the first publish.
        While ClickHouse is unreachable, the last one seen is served."""
        self._fresh()
        cached = self._live.get(site_id)
        if cached is not None:
            return cached
        epoch = self._epoch
        live = self._load_live(site_id)
        if epoch == self._epoch:  # else it may have been read before a change: do not keep
            self._live[site_id] = live
            self._known[site_id] = live
        return live

    def last_known(self, site_id: str) -> Live | None:
        """The last live container loaded for the site, however old (no I/O)."""
        return self._known.get(site_id)

    def cached_live(self, site_id: str) -> Live | None:
        """The live container if it is in memory and fresh (no I/O)."""
        if time.monotonic() >= self._checked_until:
            return None
        return self._live.get(site_id)

    def _load_live(self, site_id: str) -> Live:
        number = self.live_version(site_id)
        if number is not None:
            rows = self.store.rows(
                "SELECT document, policy_hash FROM tagwerk.container_versions "
                "WHERE site_id = {site:String} AND version = {v:UInt32} "
                "ORDER BY created_at, publish_id LIMIT 1", {"site": site_id, "v": number})
            if rows:
                text = rows[0]["document"]
                return Live(site_id, number, normalize(orjson.loads(text)),
                            rows[0]["policy_hash"], _digest(text))
        draft = self.draft(site_id)
        text = orjson.dumps(draft.document)
        return Live(site_id, 0, normalize(draft.document), draft.policy, _digest(text))

    def invalidate(self, site_id: str) -> None:
        self._forget()

    def _forget(self) -> None:
        self._epoch += 1
        self._live.clear()
        self._paths = None

    def cached_tag_paths(self) -> dict[str, str] | None:
        """``custom_tag_paths()`` if it is in memory and fresh (no I/O)."""
        if time.monotonic() >= self._checked_until:
            return None
        return self._paths

    def custom_tag_paths(self) -> dict[str, str]:
        """Custom tag paths of the containers being served: path -> site id (cached)."""
        self._fresh()
        paths = self._paths
        if paths is None:
            with self._paths_lock:
                paths = self._paths
                if paths is None:
                    epoch = self._epoch
                    paths = self._load_paths()
                    if epoch == self._epoch:
                        self._paths = paths
        return paths

    def _load_paths(self) -> dict[str, str]:
        rows = self.store.rows(
            "SELECT r.site_id AS site_id, v.tag_path AS tag_path FROM "
            "(SELECT site_id, argMax(version, (released_at, release_id)) AS version "
            " FROM tagwerk.container_releases GROUP BY site_id) AS r "
            "INNER JOIN "
            "(SELECT site_id, version, argMin(tag_path, (created_at, publish_id)) AS tag_path "
            " FROM tagwerk.container_versions GROUP BY site_id, version) AS v "
            "ON r.site_id = v.site_id AND r.version = v.version "
            "WHERE v.tag_path != '' "
            "UNION ALL "
            "SELECT site_id, tag_path FROM tagwerk.container_drafts FINAL "
            "WHERE tag_path != '' AND site_id NOT IN "
            "(SELECT site_id FROM tagwerk.container_releases)")
        paths: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: r["site_id"]):
            paths.setdefault(row["tag_path"], row["site_id"])  # a clash: the first site wins
        return paths

    def _check_tag_path_free(self, site_id: str, document: Mapping[str, Any]) -> None:
        path = resolved_tag_path(document, site_id)
        if not path:
            return
        owner = self._load_paths().get(path, site_id)
        if owner != site_id:
            raise ContainerError([FieldError(
                "settings.tag_path", f"{path!r} is already the tag path of site {owner!r}")])


def _ch_time(moment: dt.datetime) -> str:
    """A UTC time as ClickHouse reads it in JSONEachRow: ``2026-01-02 03:04:05.678``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]
