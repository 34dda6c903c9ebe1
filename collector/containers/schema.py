"""Limits, patterns and the vocabularies of a container (DESIGN.md section 1)."""

from __future__ import annotations

import re
from typing import Any

from consent.policy import DEFAULT_LIFETIMES

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_ITEMS = 200  # tags, triggers, variables each
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
# A language of the banner's texts: a key of ``consent.texts``, so narrower than a request's
# tags (``collector.web.qvalues.LANG``): one spelling per language ("de", never "DE" too).
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

DEFAULT_TAG_PATH = "/t/{site}.js"
# A custom tag path that a route answers is refused by asking the route table (the
# ``taken`` of validate.py). Beyond it, the API's namespace is kept for the endpoints to
# come: a tag path there would stop being served when the next one is added.
RESERVED_PREFIXES = ("/api/",)
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
    "lifetime_days": DEFAULT_LIFETIMES[0],
    "rejection_lifetime_days": DEFAULT_LIFETIMES[1],
    "policy_version": "1",
}
