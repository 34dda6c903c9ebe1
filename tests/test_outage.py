"""The server backend while ClickHouse is away: accept into the spool, drain once back."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.helpers import CHROME, wait_for
from tests.servers import Server


@pytest.fixture
def clickhouse(tmp_path):
    """An embedded tagwerk whose ClickHouse HTTP interface plays the ClickHouse server."""
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"writer": {"password": "s3cret", "readonly": False}}))
    server = Server(tmp_path / "clickhouse", "--sql-users-file", str(users)).start()
    yield server
    server.stop()


def send(collector: Server, run: str, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with httpx.Client(headers={"User-Agent": CHROME}, timeout=10) as client:
        for i in range(0, n, 10):
            body = {"site": "demo", "events": [
                {"event": "outage", "event_id": e, "props": {"run": run}} for e in ids[i:i + 10]]}
            assert client.post(f"{collector.url}/collect", json=body).status_code == 202
    return ids


def stored(clickhouse: Server) -> dict[str, int]:
    out = clickhouse.sql("SELECT toString(event_id), count() FROM tagwerk.events "
                         "WHERE event = 'outage' GROUP BY event_id FORMAT TSV")
    return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines())}


def test_hits_are_kept_while_clickhouse_is_down(tmp_path, clickhouse):
    url = f"http://writer:s3cret@127.0.0.1:{clickhouse.sql_port}/tagwerk"
    collector = Server(tmp_path / "collector", "--clickhouse-url", url, sql_port=0).start()
    try:
        sent = send(collector, "before", 30)
        wait_for(lambda: len(stored(clickhouse)) == 30)

        clickhouse.stop()  # ClickHouse goes away
        sent += send(collector, "during", 50)
        assert httpx.get(f"{collector.url}/readyz").status_code == 503

        # A collector restarted during the outage still starts and accepts, from its snapshot
        # of the sites.
        collector.stop()
        collector.start()
        sent += send(collector, "restarted", 20)

        clickhouse.start()  # back on the same port
        wait_for(lambda: len(stored(clickhouse)) == len(sent), timeout=30)
        counts = stored(clickhouse)
        assert set(counts) == set(sent) and set(counts.values()) == {1}
        assert httpx.get(f"{collector.url}/readyz").status_code == 200
        metrics = httpx.get(f"{collector.url}/metrics").text
        assert "tagwerk_flush_failures_total 0" not in metrics
    finally:
        collector.stop()
