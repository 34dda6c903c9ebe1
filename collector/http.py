"""Request plumbing for the ingestion endpoints, which are bare ASGI apps.

Starlette's request, response, routing and middleware cost about a quarter of a hit, so the
hot paths use this small request type instead; everything else stays on Starlette.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

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
        data: dict[str, Any] = {"error": self.message}
        if self.field:
            data["field"] = self.field
        return orjson.dumps(data)


class Hit:
    """One request: its headers (latin-1 text, names lower-case), peer and body."""

    __slots__ = ("scope", "receive", "headers", "method", "peer")

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

    @property
    def query_string(self) -> bytes:
        return self.scope.get("query_string", b"")

    async def body(self, limit: int) -> bytes:
        """The body, gunzipped if need be, refused past ``limit`` bytes either way.
        Gzip is recognised by its magic bytes too: some SDKs send it labelled ``text/plain``.
        """
        declared = self.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, "invalid Content-Length", "malformed")
            if int(declared) > limit:
                raise HTTPError(413, f"body larger than {limit} bytes", "too_large")
        chunks, size, more = [], 0, True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected", "disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body larger than {limit} bytes", "too_large")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return decode_body(self.headers, b"".join(chunks), limit)


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
    """headers: a dict, or pairs when a name repeats (two ``Set-Cookie``)."""
    raw = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
    if headers:
        pairs = headers.items() if isinstance(headers, dict) else headers
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise HTTPError(400, "body is not valid gzip", "malformed") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HTTPError(413, f"body larger than {limit} bytes once decompressed", "too_large")
    if not inflater.eof:
        raise HTTPError(400, "gzip body is truncated", "malformed")
    return out


def parse_json(body: bytes) -> Any:
    if not body:
        raise HTTPError(400, "empty body: expected a JSON object", "malformed")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower():
            raise HTTPError(400, "body is not valid UTF-8", "invalid_utf8") from None
        raise HTTPError(400, f"malformed JSON: {exc}", "malformed") from None
