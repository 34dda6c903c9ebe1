"""JSON request bodies of the API's operations (the read side's and the container API's)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from collector.api.access import ApiError
from collector.web import http

MAX_BODY = 16 * 1024
MAX_DEPTH = 4
# JSON however it is labelled by common clients (curl -d says form-urlencoded): a key in a
# header, not a cookie, authorises these calls, so a browser's form cannot make them.
MEDIA_TYPES = ("", "application/json", "text/plain", "application/x-www-form-urlencoded")


async def read_json(request: Request, limit: int, depth: int, required: bool = True,
                    media_types: tuple[str, ...] = MEDIA_TYPES) -> Any:
    """The body as JSON, at most ``limit`` bytes and ``depth`` levels; None if it is empty
    and not ``required``. Every refusal is an ApiError naming the problem."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in media_types:
        raise ApiError(415, "send the body as application/json")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ApiError(415, "compressed bodies are not accepted here")
    try:
        body = await http.read_body(request.receive, request.headers, limit)
        if not body.strip() and not required:
            return None
        data = http.parse_json(body)
    except http.HTTPError as exc:
        raise ApiError(exc.status, exc.message, exc.field or "") from None
    deep = http.nesting(data, depth).path
    if deep is not None:
        field = http.json_field(deep, depth)
        raise ApiError(400, f"{field or 'the body'} is nested deeper than {depth} levels",
                       field)
    return data


async def json_object(request: Request, fields: tuple[str, ...], required: tuple[str, ...],
                      limit: int = MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object with only ``fields``, all ``required`` present."""
    data = await read_json(request, limit, MAX_DEPTH)
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    for name in data:
        if name not in fields:
            raise ApiError(400, f"unknown field {name[:64]!r} (accepted: {', '.join(fields)})",
                           name[:64])
    for name in required:
        if name not in data:
            raise ApiError(400, f"{name!r} is required", name)
    return data
