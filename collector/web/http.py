"""Request plumbing for the ingestion endpoints, which are bare ASGI apps.

Starlette's request, response, routing and middleware cost about a quarter of a hit, so the
hot paths use this small request type instead; everything else stays on Starlette.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("tagwerk.http")

GZIP_MAGIC = b"\x1f\x8b"
JSON = b"application/json"
# Repeated lines of these headers form one list, joined with this separator (HTTP/2 sends
# one Cookie line per cookie); for the others the first line counts.
COMBINED = {"x-forwarded-for": ",", "cookie": "; "}


class HTTPError(Exception):
    """Answered as ``{"error": message, "field": field}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.field, self.headers = field, headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.field)


def error_body(message: str, field: str | None = None, **extra: Any) -> bytes:
    """The JSON of every refusal (README): ``{"error": message, "field": field}``, without
    ``field`` when there is none; ``extra`` adds keys some answers carry besides (the
    container API's ``errors`` and ``etag``). Text that is not UTF-8 (a lone surrogate) is
    escaped rather than failing the answer."""
    data: dict[str, Any] = {"error": message}
    if field:
        data["field"] = field
    data.update(extra)
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return orjson.dumps(_escaped(data))


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """A refusal for the Starlette endpoints: :func:`error_body`, kept by no cache."""
    return Response(error_body(message, field, **extra), status,
                    {"Cache-Control": "no-store", **(headers or {})}, media_type="application/json")


INTERNAL_ERROR = error_body("internal error")


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


# What a URL in a header may hold besides percent-encoded UTF-8: printable ASCII, no space.
_URL_SAFE = "".join(map(chr, range(0x21, 0x7F)))
MAX_HEADER_URL = 4096


def header_url(text: str) -> str | None:
    """``text`` as a URL that can go into a ``Location`` header, or None when it cannot:
    longer than ``MAX_HEADER_URL``, or holding whitespace or a control character anywhere
    (checked on the raw text: urllib drops tab, CR and LF before it parses, so its checks
    never see them), or a Unicode separator, format or unassigned character (U+2028,
    U+00A0, U+200B, U+202E...). Other non-ASCII characters (``/größe``) are
    percent-encoded as UTF-8, as a browser would."""
    if len(text) > MAX_HEADER_URL:
        return None
    if text.isascii():
        return text if text.isprintable() and " " not in text else None
    for char in text:
        if char <= " " or "\x7f" <= char <= "\xa0" or unicodedata.category(char)[0] in "CZ":
            return None
    return quote(text, safe=_URL_SAFE)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()


def header_safe(value: str) -> bool:
    """Whether ``value`` may be written as a response header value: printable ASCII only
    (space included). No CR or LF that would end the header, no other control character
    (NUL, tab, DEL, C1 such as U+0085), nothing that latin-1 cannot encode (U+2028). Every
    value the collector sends is such text; request-derived text that is not is refused
    with a 400 where it is read, and :func:`respond` checks again."""
    return value.isascii() and value.isprintable()


class Hit:
    """One request: its headers (latin-1 text, names lower-case), peer and body."""

    __slots__ = ("scope", "receive", "headers", "method", "peer", "client")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope, self.receive = scope, receive
        self.method: str = scope["method"]
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()  # some test clients send upper case
            value = raw_value.decode("latin-1")
            if name not in self.headers:
                self.headers[name] = value
            elif name in COMBINED:
                self.headers[name] += COMBINED[name] + value
        client = scope.get("client")
        self.peer: str = client[0] if client else ""
        self.client: str | None = None  # the browser's address, once worked out (accept.py)

    @property
    def query_string(self) -> bytes:
        return self.scope.get("query_string", b"")

    async def body(self, limit: int) -> bytes:
        """The body, gunzipped if need be, refused past ``limit`` bytes either way.
        Gzip is recognised by its magic bytes too: some SDKs send it labelled ``text/plain``.
        """
        return decode_body(self.headers, await read_body(self.receive, self.headers, limit),
                           limit)


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """A request's body as sent, refused past ``limit`` bytes: by its ``Content-Length``
    before a byte is read, else as it arrives. Every request body the collector takes
    whole is read here (the SQL interface streams its own)."""
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isdigit() and declared.isascii()):  # "²" is a digit to isdigit
            raise HTTPError(400, "invalid Content-Length", "malformed")
        if int(declared) > limit:
            raise HTTPError(413, f"body larger than {limit} bytes", "too_large")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "client disconnected", "disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body larger than {limit} bytes", "too_large")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def decode_body(headers: dict[str, str], body: bytes, limit: int) -> bytes:
    """A request body as sent, gunzipped if need be (by ``Content-Encoding`` or its magic
    bytes), refused past ``limit`` bytes once decompressed."""
    encoding = headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip") or (not encoding and body.startswith(GZIP_MAGIC)):
        return _gunzip(body, limit)
    if encoding not in ("", "identity"):
        raise HTTPError(415, f"unsupported Content-Encoding {encoding!r}", "encoding")
    return body


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    media: bytes = JSON,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    head: bool = False,
) -> None:
    """headers: a dict, or pairs when a name repeats (two ``Set-Cookie``). A header value
    that is not :func:`header_safe` is never written: the answer becomes a 500 without
    the extra headers (request-derived values are refused before they get here)."""
    raw = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
    if headers:
        pairs = headers.items() if isinstance(headers, dict) else headers
        for k, v in pairs:
            if not header_safe(v):
                log.error("refused to send header %s with a control character: %r", k, v)
                status, body, head = 500, INTERNAL_ERROR, False
                raw = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
                break
            raw.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


# Members of one gzip body: a sender concatenating compressed pieces makes a few; each
# member's rest is copied for the next, so their number bounds the reading's time.
MAX_GZIP_MEMBERS = 16


def _gunzip(body: bytes, limit: int) -> bytes:
    """The body decompressed: every gzip member of it (RFC 1952 allows several, as
    ``gzip.decompress`` reads them), and nothing after the last one."""
    out = bytearray()
    rest = body
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            raise HTTPError(400, "body is not valid gzip", "malformed") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise HTTPError(413, f"body larger than {limit} bytes once decompressed",
                            "too_large")
        if not inflater.eof:
            raise HTTPError(400, "gzip body is truncated", "malformed")
        rest = inflater.unused_data  # (a copy: the members' number is bounded)
        if not rest:
            return bytes(out)
    raise HTTPError(400, f"gzip body of more than {MAX_GZIP_MEMBERS} members", "malformed")


# orjson refuses JSON nested deeper than this (``depth limit exceeded``).
MAX_JSON_DEPTH = 1024
# Scanned to name the field of a too-deep body, at most: the cost of a refusal stays bounded.
_MAX_PATH_TOKENS = 65536
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def parse_json(body: bytes) -> Any:
    """The body as JSON. orjson checks it whole: valid UTF-8 (no lone surrogates, as
    ``"\\ud800"``), no NaN or Infinity, numbers within range (integers beyond 64 bits
    become floats, which the fields' own checks refuse or keep), at most
    ``MAX_JSON_DEPTH`` levels deep. Duplicate keys: the last one counts, as in JavaScript's
    JSON.parse. Errors are 400s; a too-deep body names the JSON path of its deep value."""
    if not body:
        raise HTTPError(400, "empty body: expected a JSON object", "malformed")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if body.startswith(b"\xef\xbb\xbf"):  # valid UTF-8, but JSON (RFC 8259) has none
            raise HTTPError(400, "the body starts with a byte order mark, which JSON may "
                            "not", "malformed") from None
        if "utf-8" in text.lower():
            raise HTTPError(400, "body is not valid UTF-8", "invalid_utf8") from None
        if "depth limit" in text or "recursion" in text.lower():
            field = json_field(deep_path(body, MAX_JSON_DEPTH), 6)
            where = f" in {field!r}" if field else ""
            raise HTTPError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels{where}",
                            "too_deep", field or None) from None
        raise HTTPError(400, f"malformed JSON: {exc}", "malformed") from None


def deep_path(body: bytes, limit: int) -> list[str | int]:
    """The keys and indices that lead to the first container nested deeper than ``limit``
    in a JSON text (as far as the first ``_MAX_PATH_TOKENS`` tokens tell; [] if not found).
    Only for refusals: a scan in Python."""
    stack: list[list] = []  # per open container: its bracket, then the key or index inside
    last = b""
    for count, match in enumerate(_TOKENS.finditer(body)):
        if count > _MAX_PATH_TOKENS:
            return []
        token = match.group()
        first = token[0]
        if first == 0x22:  # a string: a key if a colon follows
            last = token
        elif first in (0x5B, 0x7B):  # [ {
            stack.append([first, 0 if first == 0x5B else None])
            if len(stack) > limit:
                break
        elif first in (0x5D, 0x7D):  # ] }
            if stack:
                stack.pop()
        elif first == 0x3A:  # :
            if stack:
                stack[-1][1] = last
        elif stack and stack[-1][0] == 0x5B:  # , in a list
            stack[-1][1] += 1
    else:
        return []
    path: list[str | int] = []
    for _, where in stack[:-1]:
        if isinstance(where, bytes):
            try:
                where = orjson.loads(where)
            except orjson.JSONDecodeError:
                where = where.decode("utf-8", "replace").strip('"')
        elif where is None:
            break
        path.append(where)
    return path


class Nesting(NamedTuple):
    """What ``nesting`` found in parsed JSON."""

    path: list[str | int] | None  # to the container too deep or past the most; or None
    too_many: bool  # ``path`` leads to the container past the most, not too deep
    containers: int  # the lists and objects walked: all of them when ``path`` is None


def nesting(value: Any, limit: int, most: int | None = None) -> Nesting:
    """The path to the first container in parsed JSON ``value`` nested deeper than
    ``limit`` (the top level is 1), or with ``most`` to the container past that many, found
    having walked (and looked at) that many, not all; and the containers walked. Without
    recursion; a path is built only for the answer."""
    # (node, depth, index in walked of its parent, its key or index there)
    stack: list[tuple[Any, int, int, str | int]] = [(value, 0, -1, "")]
    walked: list[tuple[int, str | int]] = []
    while stack:
        node, depth, parent, key = stack.pop()
        walked.append((parent, key))
        if depth >= limit or (most is not None and len(walked) > most):
            return Nesting(_path(walked), depth < limit, len(walked))
        here = len(walked) - 1
        children = node.items() if isinstance(node, dict) else enumerate(node)
        room = None if most is None else most - len(walked) + 1  # more could not be walked
        for k, child in children:
            if isinstance(child, dict | list):
                if room is not None:
                    if room <= 0:
                        break
                    room -= 1
                stack.append((child, depth + 1, here, k))
    return Nesting(None, False, len(walked))


def _path(walked: list[tuple[int, str | int]]) -> list[str | int]:
    """The keys and indices to the last container walked, from its parents'."""
    path: list[str | int] = []
    parent, key = walked[-1]
    while parent >= 0:
        path.append(key)
        parent, key = walked[parent]
    return path[::-1]


def json_field(path: list[str | int], segments: int = 4) -> str:
    """A field name for a JSON path, in the collector's style (``events[3].props.a``): of
    its first ``segments`` keys and indices, up to the last key (the indices of a nesting
    chain say nothing more). "" if they hold no key."""
    head = path[:segments]
    keys = [i for i, part in enumerate(head) if isinstance(part, str)]
    if not keys:
        return ""
    out = ""
    for part in head[: keys[-1] + 1]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return _printable(out)[:200]
