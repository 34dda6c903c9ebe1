"""Request plumbing shared by the endpoints: bounded bodies, JSON parsing, JSON errors."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

GZIP_MAGIC = b"\x1f\x8b"


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


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def error_response(exc: HTTPError, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": exc.message}
    if exc.field:
        body["field"] = exc.field
    return json_response(body, exc.status, {**exc.headers, **(headers or {})})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped if need be, refused past ``limit`` bytes either way.

    Gzip is recognised by its magic bytes too: some SDKs send it labelled ``text/plain``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, "invalid Content-Length", "malformed")
        if int(declared) > limit:
            raise HTTPError(413, f"body larger than {limit} bytes", "too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body larger than {limit} bytes", "too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip") or (not encoding and body.startswith(GZIP_MAGIC)):
        return _gunzip(body, limit)
    if encoding not in ("", "identity"):
        raise HTTPError(415, f"unsupported Content-Encoding {encoding!r}", "encoding")
    return body


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
