"""Health, readiness and metrics."""

from __future__ import annotations

import pytest

from tests.helpers import drained, make_client, wait_for


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("health"))
    with client:
        yield client, collector


def test_health_and_readiness(env):
    client, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def metrics(client) -> dict[str, float]:
    """The exposition's samples, by name with labels (whatever other tests counted)."""
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in response.text.splitlines())
            if name and not name.startswith("#")}


def test_metrics_count_hits_and_rejections(env):
    client, collector = env
    wait_for(lambda: drained(collector))
    before = metrics(client)
    client.get("/p.gif?site=demo&event=m")
    client.get("/p.gif?site=nope&event=m")
    wait_for(lambda: drained(collector))
    after = metrics(client)
    for name, more in (('tagwerk_hits_accepted_total{endpoint="pixel"}', 1),
                       ('tagwerk_hits_rejected_total{endpoint="pixel",reason="unknown_site"}', 1),
                       ("tagwerk_rows_inserted_total", 1)):
        assert after[name] - before.get(name, 0) == more, name
    assert after["tagwerk_spool_unflushed_bytes"] == 0
    assert after['tagwerk_flush_seconds_bucket{le="+Inf"}'] > before.get(
        'tagwerk_flush_seconds_bucket{le="+Inf"}', 0)


def test_unknown_path_is_json_404(env):
    client, _ = env
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}
