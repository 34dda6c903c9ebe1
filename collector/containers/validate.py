"""Validation of a container document: every problem, each named by its JSON path."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from collector.containers.errors import ContainerError, FieldError
from collector.containers.schema import (
    ATTRIBUTE,
    AUTO,
    CONTROL,
    CONTROL_BUT_NEWLINES,
    COOKIE_DOMAIN,
    COOKIE_NAME,
    DATA_LAYER_KEY,
    DEFAULT_CONSENT,
    DEFAULT_SETTINGS,
    DEFAULT_TAG_PATH,
    EXTENSION,
    ID,
    LANGUAGE,
    LOCAL_HOSTS,
    MAX_CONDITIONS,
    MAX_DOCUMENT_BYTES,
    MAX_ERRORS,
    MAX_HTML,
    MAX_ITEMS,
    MAX_LANGUAGES,
    MAX_NOTE,
    MAX_REGEX,
    MAX_SELECTOR,
    MAX_TAG_TRIGGERS,
    MAX_URL,
    OPERATORS,
    POLICY_VERSION,
    RESERVED_PREFIXES,
    TAG_PATH,
    TAG_TYPES,
    TEXT_KEYS,
    TRIGGER_TYPES,
    URL_PARTS,
    VAR_REF,
    VARIABLE_TYPES,
)
from consent.cookie import MAX_AGE_DAYS
from consent.purposes import MAX_PURPOSES, NECESSARY, OBJECT_PROPERTIES, PURPOSE_ID

Taken = Callable[[str], str | None]
"""What answers a path before a container's own tag path could: the route table's lookup
(``collector.routes.taken``), given by whoever serves the table. This package cannot import
the table, whose handlers use containers."""

# -- validation -------------------------------------------------------------------------------


def _key(path: str, key: str) -> str:
    # A key from the document, shown as a JSON string's content: no control character
    # (a terminal escape in a container file) reaches the CLI's output or an answer raw.
    if not key.isprintable():
        key = json.dumps(key, ensure_ascii=False)[1:-1]
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
        if pattern is not None and not pattern.fullmatch(value):
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

    def inherited(self, ident: str, path: str) -> bool:
        """Whether an id is a property every JavaScript object has (reported): the tag looks
        ids and purposes up in plain objects, where such a one is always found (a purpose
        "constructor" ran its tags without consent, a trigger of that id on every signal)."""
        if ident not in OBJECT_PROPERTIES:
            return False
        self.fail(path, f"'{ident}' is the name of a property every JavaScript object has: "
                  "the tag would find it everywhere; choose another id")
        return True

    def unique_ids(self, items: list, path: str) -> dict[str, int]:
        """The list's valid ids, each with its index; duplicates reported."""
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                continue
            ident = self.ident(item["id"], f"{path}[{i}].id")
            if ident is None:
                continue
            if self.inherited(ident, f"{path}[{i}].id"):
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
        if "\\" in text:  # browsers read /\host as //host
            self.fail(path, "must not contain a backslash (URL-encode it as %5C)")
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
        if (text.startswith("/") and not text.startswith("//")
                and VAR_REF.sub("", text).startswith("//")):
            # An empty variable would make it //host: another host's URL.
            self.fail(path, "a path must not start with '//', even with empty variables")
            return None
        if text.startswith("/") and not text.startswith("//"):
            if not allow_relative:
                self.fail(path, "must be an absolute https URL")
                return None
            return text
        try:
            parts = urlsplit(VAR_REF.sub("x", text))
        except ValueError:  # a host that NFKC makes another ("＠", "／"), a bad IPv6 literal
            self.fail(path, "is not a valid URL (its host holds characters a browser would "
                      "read as others: write them percent-encoded or in ASCII)")
            return None
        if parts.scheme not in ("https", "http") or not parts.netloc:
            self.fail(path, "must be an https URL" +
                      (" or a path starting with '/'" if allow_relative else ""))
            return None
        # The authority as written (a variable stands for any text): up to the first
        # '/', '?' or '#' after "scheme://".
        authority = re.split(r"[/?#]", text[len(parts.scheme) + 3:], maxsplit=1)[0]
        if "{{" in authority:
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


def validate(document: Any, origins: Iterable[str] = (), *, taken: Taken | None = None,
             site_id: str | None = None) -> list[FieldError]:
    """Every problem of a container document, in document order; [] if it is valid.

    ``origins``: the site's origins; a tag for the purpose ``necessary`` may load only from
    them (or from a path on the page's own site). ``taken``: the route table's lookup; a
    custom ``settings.tag_path`` that a route answers is refused (without it, routes are not
    checked). ``site_id``: the site the document is for, whose id the path's ``{site}``
    becomes; without it ``{site}`` stands for any one path segment.
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
        _check_settings(c, doc["settings"], taken, site_id)
    purposes = _check_consent(c, doc["consent"]) if "consent" in doc else {}
    variables = _check_variables(c, doc.get("variables", []))
    triggers = _check_triggers(c, doc.get("triggers", []), variables)
    _check_tags(c, doc.get("tags", []), triggers, variables, purposes)
    return c.errors


def check(document: Any, origins: Iterable[str] = (), *, taken: Taken | None = None,
          site_id: str | None = None) -> None:
    """Raise ContainerError naming every problem, if there is any (see :func:`validate`)."""
    errors = validate(document, origins, taken=taken, site_id=site_id)
    if errors:
        raise ContainerError(errors)


def check_note(note: Any) -> None:
    """The note of a publish or a rollback, the one rule for both: it is listed in the
    release history and printed to terminals (``tagwerk container versions``), where an
    escape sequence or a line break would forge output. ContainerError names ``note``."""
    # isprintable(): no control (C0, C1), format (bidi overrides) or separator character
    # but the space.
    if not isinstance(note, str) or len(note) > MAX_NOTE or not note.isprintable():
        raise ContainerError([FieldError("note", f"a string of at most {MAX_NOTE} "
                                         "characters without control, format or line "
                                         "separator characters")])


def _check_settings(c: _Checker, value: Any, taken: Taken | None, site_id: str | None
                    ) -> None:
    s = c.obj(value, "settings", optional=tuple(DEFAULT_SETTINGS))
    if s is None:
        return
    if "endpoint" in s:
        c.url(s["endpoint"], "settings.endpoint", None)
    if "tag_path" in s:
        _check_tag_path(c, s["tag_path"], taken, site_id)
    if "cookie_domain" in s:
        domain = c.string(s["cookie_domain"], "settings.cookie_domain", 253, min_len=0)
        if domain and not COOKIE_DOMAIN.fullmatch(domain):  # "": the page's host only
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


def _check_tag_path(c: _Checker, value: Any, taken: Taken | None, site_id: str | None
                    ) -> None:
    path = "settings.tag_path"
    text = c.string(value, path, 200)
    if text is None:
        return
    # The route table first, whatever the path looks like, so that the answer names the
    # route. The default path is the route's own (``/t/{name}.js``).
    site = site_id or "{site}"
    served = text.replace("{site}", site)
    default = DEFAULT_TAG_PATH.replace("{site}", site)
    route = taken(served) if taken is not None and served != default else None
    if route is not None:
        shown = repr(text) if served == text else f"{text!r} ({served!r} for this site)"
        c.fail(path, f"{shown} is reserved: the collector's route {route} answers it")
    elif not TAG_PATH.fullmatch(text):
        c.fail(path, f"{text[:80]!r} is not a path such as '/t/{{site}}.js' (A-Z, a-z, 0-9, "
               "'.', '_', '~', '-', '/'; ending in '.js')")
    elif "{" in (bare := text.replace("{site}", "")) or "}" in bare:
        c.fail(path, "the only placeholder is {site}")
    elif "//" in text or "/./" in text or "/../" in text or text.startswith("/."):
        c.fail(path, "must not contain empty, '.' or '..' segments")
    elif text.startswith(RESERVED_PREFIXES):
        c.fail(path, f"{text!r} is reserved for the collector's API")


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
        if c.inherited(pid, f"{path}.id"):
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
        lifetime = c.integer(s["lifetime_days"], "consent.lifetime_days", 1, MAX_AGE_DAYS)
    if "rejection_lifetime_days" in s:
        rejection = c.integer(s["rejection_lifetime_days"], "consent.rejection_lifetime_days",
                              1, MAX_AGE_DAYS)
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
        if not LANGUAGE.fullmatch(lang):
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
            c.string(item["html"], cpath, MAX_HTML, newlines=True)
            if purpose == NECESSARY:
                # Its markup, styles and scripts can build a URL to anywhere in ways no scan
                # of the text can follow (probes 41, 43): a tag that runs without consent
                # is a script or a pixel, whose one URL is checked.
                c.fail(f"{path}.purpose", "an html tag can load anything (its scripts and "
                       "styles build any URL): a tag for 'necessary' must be a script or a "
                       "pixel on the site's own origins")
        else:
            url = c.url(item[content], cpath, variables)
            if url is not None and purpose == NECESSARY and not c.own_url(url):
                c.fail(f"{path}.purpose", "'necessary' is only for tags of the site itself: "
                       f"{url[:80]!r} is not on the site's origins")
