"""Identifier kinds and values: which are accepted, which are junk, how e-mail is kept.

Built-in kinds: ``device`` (the device id), ``user`` (the shop's customer id), ``email``
(SHA-256 of the trimmed, lower-cased address: the address itself is never stored),
``loyalty``, ``pos`` (a till's customer id), ``anon`` (a server-side anonymous id). A site
may add kinds of its own (``tagwerk site create --identifier-kinds``).

Junk values never identify anyone: the placeholders that broken pages send instead of an
id. They are dropped at ingestion, so neither a row nor a link ever carries one.

A module of its own, below the sites (which accept the kinds) and the identity graph (which
builds on the sites).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

BUILT_IN = ("device", "user", "email", "loyalty", "pos", "anon")
KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")  # fullmatch
# (as PostHog refuses distinct ids, and more: Objective-C's, Ruby's and Go's nulls, GA's
# "(not set)", a guest checkout's customer, "N/A" from a form; lower-cased, and compared
# once quotes, brackets and invisible characters around them are gone)
JUNK = frozenset({"", "null", "undefined", "none", "nan", "0", "-1", "anonymous",
                  "[object object]", "(null)", "<null>", "nil", "<nil>", "(nil)", "true",
                  "false", "guest", "n/a", "(not set)", "not set", "unknown", "infinity",
                  "-infinity", "+infinity", "inf", "-nan", "anonymoususer", "array", "#n/a",
                  "-", "n.a.", "na", "null null", "undefined undefined", "not_set", "notset",
                  "object object", "object undefined", "object null", "%!s(<nil>)", "0x0"})
# Their hex digests (an e-mail identifier is sent as its SHA-256; a page hashing a missing
# value sends the digest of "" or of "null"), of the words as written in any case.
JUNK_DIGESTS = frozenset(
    digest(form.encode()).hexdigest()
    for text in JUNK for form in {text, text.upper(), text.capitalize(), text.title()}
    for digest in (hashlib.sha256, hashlib.sha1, hashlib.md5))
TEMPLATE_ENDS = frozenset("{$%*[\"'#-<(")  # how a template, or a wrapped value, starts
# A template its page, e-mail tool or CRM did not fill in: {{customer.id}}, ${user_id},
# %USER_ID%, *|EMAIL|*, [[id]], and a name in {}, {! }, {$ }, #{ }, <%= %>, $ $, # #, - -,
# [ ] (fullmatch, lower-cased; a name has no digits: "[a-17]" may be a customer's id).
TEMPLATE = re.compile(
    r"\{\{.*\}\}|\$\{.*\}|%[^%\s]+%|\*\|.*\|\*|\[\[.*\]\]"
    r"|(?:\{[!$]?|#\{|<%=?|%%|\$|#|-|\[)\s*[a-z_][a-z_.]*\s*(?:\}|%>|%%|\$|#|-|\])", re.S)
# What may wrap a placeholder: quotes, typographic ones too, and brackets.
WRAPPERS = "{}[]()<>\"'\u201c\u201d\u2018\u2019\u00ab\u00bb"
MAX_ID = 256
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")  # fullmatch


# Control characters (C0, DEL, C1): refused at ingestion in event names and in items'
# product ids and categories, and by the read API in what it takes in a path or a filter,
# so that what is stored can be asked for. Nothing else is: a no-break or zero-width space,
# a bidi mark are kept, and found. Identifiers keep whatever a till or a CRM sends (a
# scanner's trailing CR): access and erasure take them in a query or a body.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(text: str) -> bool:
    # isprintable() is False for every control character, and True for most text (cheap).
    return not text.isprintable() and CONTROL.search(text) is not None


class IdentifierError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def is_junk(value: str) -> bool:
    """A placeholder, or a value starting with NUL (reserved: an erasure's anchor). Zeros
    alone, as a number or in a UUID's shape are one too: an unset id, or an iOS advertising
    id when the app may not track (every such device would be one person); so are a digest
    of a placeholder (a page hashing a missing e-mail address), a template left unfilled,
    and a placeholder in other dress: full-width, with invisible characters, quoted,
    bracketed."""
    text = value.strip().lower()
    if text.isascii() and text.isprintable() and text[-1:].isalnum():
        # (an id as most are, ASCII and visible: the hot path's cheap checks)
        if text in JUNK or text in JUNK_DIGESTS:
            return True
        if text[0] in "0-.+":
            return "0" in text and not text.strip("0-.+")
        return text[0] in TEMPLATE_ENDS and (
            TEMPLATE.fullmatch(text) is not None or _bare(text) in JUNK)
    if value.startswith("\0"):
        return True
    if not text.isprintable():  # control, format (zero-width) or other invisible characters
        text = "".join(c for c in text if c.isprintable())
    if not text.isascii():  # full-width and other compatibility forms
        text = unicodedata.normalize("NFKC", text).lower()
    if text in JUNK or TEMPLATE.fullmatch(text):
        return True
    text = _bare(text)
    return (text in JUNK or text in JUNK_DIGESTS
            or ("0" in text and not text.strip("0-.+")))


def _bare(text: str) -> str:
    """Without the quotes and brackets around it."""
    return text.strip().strip(WRAPPERS).strip()


def clean(kind: str, value: str, field: str) -> str:
    """The value as stored for ``kind``: e-mail addresses become their SHA-256 (a digest
    is kept, trimmed and lower-cased); "" for junk. Raises for an invalid e-mail value."""
    if is_junk(value):
        return ""
    if kind != "email":
        return value
    address = value.strip().lower()  # a digest too: sent with spaces, it is the same
    if SHA256_HEX.fullmatch(address):
        return address
    if "@" not in address.strip("@"):
        raise IdentifierError(f"{field!r} must be an e-mail address or the SHA-256 hex digest "
                              "of its trimmed, lower-cased form", field)
    return hashlib.sha256(address.encode()).hexdigest()


def parse(text: str, kinds: tuple[str, ...], field: str = "id") -> tuple[str, str]:
    """``kind:id`` (as in ``/persons/device:3f2a...``) -> (kind, stored id)."""
    kind, colon, value = text.partition(":")
    if not colon or not value:
        raise IdentifierError(f"{field!r} must be kind:id, e.g. user:c-17 or device:3f2a...",
                              field)
    if kind not in kinds:
        raise IdentifierError(f"unknown identifier kind {kind[:32]!r} (this site has: "
                              f"{', '.join(kinds)})", field)
    if len(value) > MAX_ID:
        raise IdentifierError(f"{field!r}: an id is at most {MAX_ID} characters", field)
    stored = clean(kind, value, field)
    if not stored:
        raise IdentifierError(f"{value[:32]!r} is a placeholder, not an id", field)
    return kind, stored


def person_id(site_id: str, kind: str, value: str) -> str:
    """A person's id: derived from the identifier that anchors it (their user id, or the one
    identifier of a person nobody has linked), so that every collector names a person the
    same way without asking anyone. Opaque: it reveals nothing of the identifier."""
    digest = hashlib.sha256(f"{site_id}\0{kind}\0{value}".encode()).hexdigest()
    return "p_" + digest[:32]
