"""JSON request bodies of the read side's operations: small objects of known fields."""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request

from collector import http
from collector.api.access import ApiError

MAX_BODY = 16 * 1024
# JSON however it is labelled by common clients (curl -d says form-urlencoded): a key in a
# header, not a cookie, authorises these calls, so a browser's form cannot make them.
MEDIA_TYPES = ("", "application/json", "text/plain", "application/x-www-form-urlencoded")
MAX_DEPTH = 4


async def json_object(request: Request, fields: tuple[str, ...], required: tuple[str, ...],
                      limit: int = MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object with only ``fields``, all ``required`` present."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise ApiError(415, "send the body as application/json", "Content-Type")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ApiError(415, "compressed bodies are not accepted here", "Content-Encoding")
    declared = request.headers.get("content-length", "")
    if declared and (not (declared.isascii() and declared.isdigit()) or int(declared) > limit):
        raise ApiError(413, f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected") from None
    try:
        data = http.parse_json(b"".join(chunks))
    except http.HTTPError as exc:
        raise ApiError(400, exc.message, exc.field or "") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    if http.nested_too_deep(data, MAX_DEPTH) is not None:
        raise ApiError(400, f"the body is nested deeper than {MAX_DEPTH} levels")
    for name in data:
        if name not in fields:
            raise ApiError(400, f"unknown field {name[:64]!r} (accepted: {', '.join(fields)})",
                           name[:64])
    for name in required:
        if name not in data:
            raise ApiError(400, f"{name!r} is required", name)
    return data
