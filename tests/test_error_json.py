"""One JSON shape for every refusal, ``{"error": message, "field": field}`` (README), built in
one place (collector/web/http.py error_body), whatever the endpoint's framework."""

from __future__ import annotations

import orjson
import pytest

from collector.api.access import ApiError, refusal
from collector.tag import serving
from collector.web.http import HTTPError, error_body, error_response
from tests.helpers import make_client


@pytest.mark.parametrize("answer", [
    lambda m, f: HTTPError(400, m, "invalid", f).body(),  # ingestion (ASGI and fast path)
    lambda m, f: refusal(ApiError(400, m, f)).body,  # the read side, the container API
    lambda m, f: serving.error(400, m, field=f).body,  # tag serving, consent texts
    lambda m, f: error_response(400, m, f).body,
])
def test_every_refusal_has_the_same_shape(answer):
    assert orjson.loads(answer("bad", "events[2].ts")) == {"error": "bad",
                                                           "field": "events[2].ts"}
    assert orjson.loads(answer("bad", "")) == {"error": "bad"}
    # Text that is not UTF-8 (a lone surrogate) is escaped, never a failed answer.
    assert orjson.loads(answer("unknown field '\ud800'", "\udfff")) == {
        "error": "unknown field '\\ud800'", "field": "\\udfff"}


def test_extra_keys_follow():
    assert orjson.loads(error_body("stale", "If-Match", etag='"e1"')) == {
        "error": "stale", "field": "If-Match", "etag": '"e1"'}
    assert orjson.loads(error_body("x", errors=[{"field": "a", "error": "\ud800"}])) == {
        "error": "x", "errors": [{"field": "a", "error": "\\ud800"}]}


def test_a_refusal_is_kept_by_no_cache():
    response = error_response(503, "storage unavailable; try again",
                              headers={"Retry-After": "5"})
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/json"


def test_the_routers_own_404_and_405_are_kept_by_no_cache(store, tmp_path):
    """Starlette's refusals (no route, a route without the method) pass through the app's
    handler: the same shape and Cache-Control as every other refusal."""
    client, _ = make_client(store, tmp_path, demo_site=False)
    with client:
        for response, status in ((client.get("/no/such/path"), 404),
                                 (client.delete("/api/v1/batch"), 405)):
            assert response.status_code == status
            assert response.headers["cache-control"] == "no-store"
            assert "error" in response.json()
