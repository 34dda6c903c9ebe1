"""What ingestion answers, as plain data (status, body, media type, headers) that either
driver writes: the pixel's GIF, CORS for a browser's request, the headers of a refusal."""

from __future__ import annotations

import base64

from collector.service import Collector
from collector.web.http import HTTPError, error_body, header_safe

# status, body, media type, headers
Answer = tuple[int, bytes, bytes, dict[str, str] | None]

# The 43-byte transparent 1x1 GIF that nginx's empty_gif serves too.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
PIXEL_HEADERS = {"Cache-Control": "no-store, max-age=0"}
ORIGIN_NOT_ALLOWED = error_body("origin not allowed")


def cors_headers(origin: str | None) -> dict[str, str]:
    """The CORS headers echoing ``origin`` (one the caller allowed); none for an origin
    that is not a safe header value (``accept.check_origin`` refuses those with a 400)."""
    if not origin or not header_safe(origin):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def browser_refusal_headers(
    c: Collector, exc: HTTPError, origin: str | None, endpoint: str
) -> dict[str, str]:
    """Count a refused browser request; the headers of its answer: with CORS, so that the
    page can read why, unless the origin itself was the problem."""
    c.metrics.hits_rejected.inc(endpoint, exc.reason)
    allowed = (origin if origin and exc.reason != "origin"
               and c.sites.any_allows_origin(origin) else None)
    return {**exc.headers, **cors_headers(allowed)}
