"""The container API, with the site's admin key (``Authorization: Bearer KEY``):

    GET  /api/v1/sites/{site}/container               the draft (the document itself)
    PUT  /api/v1/sites/{site}/container               replace the draft (validated)
    POST /api/v1/sites/{site}/container/publish       {"note": "..."} (optional)
    POST /api/v1/sites/{site}/container/rollback      {"version": N}
    GET  /api/v1/sites/{site}/container/versions      versions, which is live, the releases
    GET  /api/v1/sites/{site}/container/versions/{n}  one version with its document

Refusals are ``{"error": "tags[2].purpose: unknown purpose 'ads'", "field": "tags[2].purpose"}``;
an invalid container lists every problem under ``"errors"`` too. Nothing is stored then.

Optimistic concurrency (RFC 9110): GET and PUT answer the draft's strong ``ETag``; PUT and
publish take ``If-Match`` (``*`` or a list of entity-tags) and answer 412 with the current
``etag`` when the draft is no longer one of them (a malformed If-Match is a 400). Without
If-Match the last writer wins, as before; clients should send it.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collector.api.access import ADMIN, ApiError, json_response, keyed
from collector.api.body import read_json
from collector.containers import (
    MAX_DOCUMENT_BYTES,
    MAX_VERSION,
    ContainerError,
    NotFound,
    PreconditionFailed,
    parse_if_match,
)
from collector.service import Collector
from collector.sites import Site
from collector.web import http

log = logging.getLogger("tagwerk.api")

BODY_TYPES = ("", "application/json", "text/plain")
# No container field nests deeper than 6 levels (consent.texts.de.purposes.analytics.name):
# deeper bodies are refused before any validation, naming the deep field.
MAX_BODY_DEPTH = 16


def _refusal(exc: Exception) -> Response:
    """A container's own errors as answers (the key's and storage's are ``keyed``'s)."""
    if isinstance(exc, ContainerError):
        return http.error_response(400, str(exc.errors[0]), exc.field,
                                   errors=[e.as_dict() for e in exc.errors])
    if isinstance(exc, NotFound):
        return http.error_response(404, str(exc), "version")
    assert isinstance(exc, PreconditionFailed)
    return http.error_response(412, str(exc), "If-Match", {"ETag": exc.current},
                               etag=exc.current)


admin = keyed(ADMIN, (ContainerError, NotFound, PreconditionFailed), _refusal)


async def _body(request: Request, required: bool) -> Any:
    """The JSON body, at most 256 KB; None if it is empty and not required."""
    return await read_json(request, MAX_DOCUMENT_BYTES, MAX_BODY_DEPTH, required, BODY_TYPES)


def _if_match(request: Request) -> frozenset[str] | None:
    """The If-Match condition: None without one (or ``*``), else the strong ETags listed."""
    values = request.headers.getlist("if-match")
    if not values:
        return None
    try:
        return parse_if_match(",".join(values))  # repeated fields are one list (RFC 9110)
    except ValueError as exc:
        raise ApiError(400, str(exc), "If-Match") from None


def _fields(data: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ApiError(400, "expected a JSON object")
    for name in data:
        if name not in allowed:
            raise ApiError(400, f"unknown field {name[:64]!r}", name[:64])
    return data


def _note(data: dict[str, Any]) -> str:
    """A publish's or rollback's note; its content is checked by the containers
    (``check_note``: length, no control characters), the same rule for both."""
    note = data.get("note", "")
    if not isinstance(note, str):
        raise ApiError(400, "'note' must be a string", "note")
    return note


# -- endpoints --------------------------------------------------------------------------------


@admin
async def container(request: Request, collector: Collector, site: Site) -> Response:
    containers = collector.containers
    if request.method == "PUT":
        if_match = _if_match(request)
        document = await _body(request, required=True)
        draft = await run_in_threadpool(containers.put_draft, site.site_id, document,
                                        site.origins, if_match=if_match)
        return json_response({"site": site.site_id, "policy": draft.policy,
                              "updated_at": draft.updated_at, "etag": draft.etag},
                             headers={"ETag": draft.etag})
    draft = await run_in_threadpool(containers.draft, site.site_id)
    return json_response(draft.document,
                         headers={"X-Tagwerk-Policy": draft.policy, "ETag": draft.etag})


@admin
async def publish(request: Request, collector: Collector, site: Site) -> Response:
    if_match = _if_match(request)
    data = _fields(await _body(request, required=False), ("note",))
    version = await run_in_threadpool(collector.containers.publish, site.site_id, _note(data),
                                      site.origins, if_match=if_match)
    return json_response({"site": site.site_id, "version": version.version,
                          "live": version.version, "policy": version.policy, "note": version.note})


@admin
async def rollback(request: Request, collector: Collector, site: Site) -> Response:
    data = _fields(await _body(request, required=True), ("version", "note"))
    number = data.get("version")
    if "version" not in data:
        raise ApiError(400, "'version' is required", "version")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_VERSION:
        raise ApiError(400, "'version' must be a version number (1, 2, ...)", "version")
    version = await run_in_threadpool(collector.containers.rollback, site.site_id, number,
                                      _note(data))
    return json_response({"site": site.site_id, "version": version.version,
                          "live": version.version, "policy": version.policy})


@admin
async def versions(request: Request, collector: Collector, site: Site) -> Response:
    def read() -> dict[str, Any]:
        containers = collector.containers
        listed = containers.versions(site.site_id)
        live = next((v.version for v in listed if v.live), None)
        return {"site": site.site_id, "live": live, "versions": [v.as_dict() for v in listed],
                "releases": containers.releases(site.site_id)}

    return json_response(await run_in_threadpool(read))


@admin
async def version(request: Request, collector: Collector, site: Site) -> Response:
    number = request.path_params["n"]  # None: more digits than a UInt32 (routes.py)
    found = None
    if number is not None and 1 <= number <= MAX_VERSION:
        found = await run_in_threadpool(collector.containers.version, site.site_id, number)
    if found is None:
        shown = number if number is not None else "of more than 10 digits"
        raise ApiError(404, f"site {site.site_id!r} has no version {shown}", "version")
    return json_response(found.as_dict())


@admin
async def preview(request: Request, collector: Collector, site: Site) -> Response:
    """A link that shows the draft on the site itself, to the browser that opens it."""
    data = _fields(await _body(request, required=False), ("minutes", "url"))
    url = data.get("url", site.origins[0] if site.origins and site.origins[0] != "*" else "")
    if isinstance(url, str) and url and http.header_url(url) is None:
        raise ApiError(400, "'url' must be a URL without whitespace or control characters "
                       "(CR, LF, tab, NUL, U+2028...): the link sends the browser there", "url")
    if not isinstance(url, str) or not url or not site.has_page(url):
        raise ApiError(400, "'url' must be a page on one of the site's origins, e.g. "
                       "https://shop.example/", "url")
    token, expires = await run_in_threadpool(collector.previews.create, site.site_id,
                                             data.get("minutes", 60))
    base = f"{request.url.scheme}://{request.headers.get('host', '')}"
    link = f"{base}/t/preview?" + urlencode({"token": token, "to": url})
    return json_response({"site": site.site_id, "link": link,
                          "expires_at": expires.isoformat(),
                          "end": f"{base}/t/preview?end=1"}, 201)

