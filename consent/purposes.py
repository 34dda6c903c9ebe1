"""Consent purposes. Sites may add their own; these four are built in."""

from __future__ import annotations

import re

NECESSARY = "necessary"
ANALYTICS = "analytics"
PERSONALIZATION = "personalization"
MARKETING = "marketing"
BUILT_IN = (NECESSARY, ANALYTICS, PERSONALIZATION, MARKETING)

MAX_PURPOSES = 16
"""The most purposes a container lists, a decision grants or denies and a hit carries: all
of them, of the longest ids, fill the tw_consent cookie's 600 characters."""

PURPOSE_PATTERN = r"[a-z][a-z0-9_]{0,31}"
"""A purpose id, as a pattern to build on (the tw_consent cookie's list of them)."""

PURPOSE_ID = re.compile(PURPOSE_PATTERN + r"\Z")
# A whole purpose id, with match or fullmatch alike: "\Z", not "$", which would let a
# final newline through ("analytics\n").


# The properties every JavaScript object inherits (ECMAScript's Object.prototype). The tag
# looks purposes up in plain objects, where such a name is always "granted": a container may
# not name a purpose so (of these, only "constructor" fits PURPOSE_PATTERN).
OBJECT_PROPERTIES = frozenset({
    "constructor", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable",
    "toLocaleString", "toString", "valueOf", "__proto__", "__defineGetter__",
    "__defineSetter__", "__lookupGetter__", "__lookupSetter__"})


def is_purpose_id(value: object) -> bool:
    """Whether ``value`` is a purpose id: 1 to 32 of a-z, 0-9 and _, a letter first."""
    return isinstance(value, str) and PURPOSE_ID.match(value) is not None
