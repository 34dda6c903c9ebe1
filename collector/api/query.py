"""Query strings and path parts of the read side, checked strictly: every refusal is a 400
naming the parameter. Unknown or repeated parameters are refused (a typo must not silently
fall back to a default), and so is text that is not UTF-8 once percent-decoded."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.requests import Request

from collector.api.access import ApiError
from collector.identifiers import has_control

MAX_QUERY = 4096
MAX_VALUE = 512
WINDOW = re.compile(r"([1-9][0-9]{0,4})([mhd])")  # fullmatch
WINDOW_SECONDS = {"m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_DAYS = 400


def params(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each at most once and among ``allowed``."""
    raw: bytes = request.scope.get("query_string", b"")
    if len(raw) > MAX_QUERY:
        raise ApiError(414, f"query string longer than {MAX_QUERY} bytes")
    found: dict[str, str] = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        name_raw, _, value_raw = pair.partition(b"=")
        name = _text(name_raw, "query")
        value = _text(value_raw, name[:64])
        if name not in allowed:
            listed = ", ".join(allowed) or "none"
            raise ApiError(400, f"unknown parameter {name[:64]!r} (accepted: {listed})",
                           name[:64])
        if name in found:
            raise ApiError(400, f"parameter {name!r} given twice", name)
        if len(value) > MAX_VALUE:
            raise ApiError(400, f"{name!r} is longer than {MAX_VALUE} characters", name)
        found[name] = value
    return found


def _text(raw: bytes, name: str) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the query string is not valid UTF-8 once percent-decoded",
                       name) from None


def path_text(request: Request, name: str, limit: int = 256) -> str:
    """A path parameter, at most ``limit`` characters of UTF-8 without control characters.
    The server has already percent-decoded the path, replacing invalid UTF-8 with U+FFFD:
    the raw path tells that from a U+FFFD sent as such (an id may hold one)."""
    value: str = request.path_params[name]
    if "\ufffd" in value and not _utf8(request.scope.get("raw_path")):
        raise ApiError(400, f"{name!r} is not valid UTF-8", name)
    if not value or len(value) > limit:
        raise ApiError(400, f"{name!r} must be 1 to {limit} characters", name)
    if has_control(value):
        raise ApiError(400, f"{name!r} holds control characters", name)
    return value


def _utf8(raw_path: bytes | None) -> bool:
    """Whether the percent-decoded raw path is valid UTF-8 (unknown: not)."""
    if raw_path is None:
        return False
    try:
        unquote_to_bytes(raw_path).decode()
    except UnicodeDecodeError:
        return False
    return True


def window(values: dict[str, str], name: str, default: str) -> int:
    """A time span such as ``15m``, ``24h`` or ``7d``, in seconds."""
    text = values.get(name, default)
    match = WINDOW.fullmatch(text)
    seconds = int(match[1]) * WINDOW_SECONDS[match[2]] if match else 0
    if not match or seconds > MAX_WINDOW_DAYS * 86400:
        raise ApiError(400, f"{name!r} must be a span such as 30m, 24h or 7d (at most "
                       f"{MAX_WINDOW_DAYS}d)", name)
    return seconds


def integer(values: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = values.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name!r} must be a whole number from {low} to {high}", name)
    return int(text)


def choice(values: dict[str, str], name: str, options: tuple[str, ...], default: str) -> str:
    text = values.get(name, default)
    if text not in options:
        raise ApiError(400, f"{name!r} must be one of {', '.join(options)}", name)
    return text


def names(values: dict[str, str], name: str, pattern: re.Pattern[str], most: int = 20
          ) -> list[str]:
    """A comma-separated list such as ``events=purchase,add_to_cart``; empty if absent.
    Present, it names at least one: ``events=`` meaning "all" would hand a client that
    built the list from an empty selection every row."""
    text = values.get(name, "")
    items = [item for item in text.split(",") if item] if text else []
    if name in values and not items:
        raise ApiError(400, f"{name!r} names nothing: leave it out for all, or list names "
                       "separated by commas", name)
    if len(items) > most or any(not pattern.fullmatch(item) for item in items):
        raise ApiError(400, f"{name!r} must list at most {most} names separated by commas",
                       name)
    return items
