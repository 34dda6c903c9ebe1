"""Keys and errors for the read side's endpoints.

A data endpoint takes the site's read key (or its admin key, which may do everything the
read key may); merges, splits and privacy operations take the admin key. The key goes in
``Authorization: Bearer KEY``. Without one: 401. With a key that is not this site's key of
a sufficient kind (a write key, another site's key, a typo): 403. Unknown site: 404.

Errors are ``{"error": "...", "field": "..."}`` with no-store caching.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from collector.service import Collector
from collector.sites import Site
from collector.storage import StorageError
from collector.web.authorization import ASK_FOR_KEY, bearer_token
from collector.web.http import error_response

log = logging.getLogger("tagwerk.api")

READ = ("read", "admin")
ADMIN = ("admin",)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None,
                  cache: str = "no-store") -> Response:
    """``data`` as JSON (bytes: already JSON)."""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return Response(body, status, {"Cache-Control": cache, **(headers or {})},
                    media_type="application/json")


def refusal(error: ApiError) -> Response:
    return error_response(error.status, error.message, error.field, error.headers)


def bearer(request: Request) -> str:
    """The token of ``Authorization: Bearer TOKEN``, or ""."""
    return bearer_token(request.headers.get("authorization", ""))


Endpoint = Callable[[Request, Collector, Site], Awaitable[Response]]


def keyed(kinds: tuple[str, ...], errors: tuple[type[Exception], ...] = (),
          refuse: Callable[[Exception], Response] | None = None
          ) -> Callable[[Endpoint], Callable[[Request], Awaitable[Response]]]:
    """An endpoint for the site in the path, called only with one of its keys of ``kinds``
    (``READ`` or ``ADMIN``); ApiError and storage errors become JSON answers, and so do the
    endpoint's own ``errors``, through ``refuse``."""

    def wrap(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def handler(request: Request) -> Response:
            collector: Collector = request.app.state.collector
            try:
                site = await site_with_key(request, collector, kinds)
                return await endpoint(request, collector, site)
            except ApiError as exc:
                return refusal(exc)
            except errors as exc:
                assert refuse is not None
                return refuse(exc)
            except StorageError as exc:
                log.warning("%s: storage error: %s", request.url.path[:200], exc)
                return error_response(503, "storage unavailable; try again",
                                      headers={"Retry-After": "5"})

        return handler

    return wrap


async def site_with_key(request: Request, collector: Collector, kinds: tuple[str, ...]) -> Site:
    site_id = request.path_params["site"]
    site = await collector.sites.find(site_id)
    if site is None:
        raise ApiError(404, f"unknown site {site_id[:64]!r}", "site")
    key = bearer(request)
    needed = "admin key" if kinds == ADMIN else "read key"
    if not key:
        raise ApiError(401, f"send the site's {needed} as 'Authorization: Bearer KEY'",
                       headers=ASK_FOR_KEY)
    if not any(site.key_matches(kind, key) for kind in kinds):
        raise ApiError(403, f"this key may not do this: send site {site_id!r}'s {needed}",
                       "Authorization")
    return site
