"""The pixel fast path (collector/ingest/fasthttp.py) as HTTP: connection reuse, pipelining,
closing, fallbacks to the ASGI path, and refusals. What it stores is tested with the rest of
the pixel in test_pixel.py, on both paths."""

from __future__ import annotations

import socket
import time
import uuid

import orjson
import pytest

from collector.ingest.answers import PIXEL
from collector.sites import Sites
from tests.helpers import CHROME, drained, rows, served, wait_for


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    with served(store, tmp_path_factory.mktemp("fast")) as (client, collector):
        for site, drop in (("fast-test", False), ("fast-nobots", True)):
            if collector.sites.get(site) is None:
                collector.sites.create(site, drop_bots=drop)
        yield client, collector


def raw_exchange(client, data: bytes, answers: int) -> list[bytes]:
    """Send ``data`` on a fresh socket; read until ``answers`` responses (or EOF)."""
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(data)
        buffer = b""
        while buffer.count(b"HTTP/1.") < answers or not _complete(buffer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
    return [b"HTTP/1." + part for part in buffer.split(b"HTTP/1.")[1:]]


def _complete(buffer: bytes) -> bool:
    head, sep, body = buffer.rpartition(b"HTTP/1.")[2].partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def get(path: str, extra: str = "") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {CHROME}\r\n{extra}\r\n").encode()


def stored(collector, marker: str) -> list[dict]:
    wait_for(lambda: drained(collector))
    return rows(collector.store, "fast-test", "props['m'] = {m:String}", m=marker)


def test_one_connection_serves_pixels_and_other_paths_in_turn(env):
    client, collector = env
    marker = uuid.uuid4().hex
    for i in range(3):
        response = client.get(f"/p.gif?site=fast-test&event=e{i}&props.m={marker}")
        assert response.status_code == 200 and response.content == PIXEL
        assert client.get("/healthz").json() == {"status": "ok"}
    assert len(wait_for(lambda: stored(collector, marker))) == 3


def test_pipelined_requests_are_answered_in_order(env):
    client, collector = env
    marker = uuid.uuid4().hex
    pixel = f"/p.gif?site=fast-test&event=piped&props.m={marker}"
    answers = raw_exchange(client, get(pixel) + get("/healthz") + get(pixel + "&title=2")
                           + get("/p.gif?site=fast-test&event=a&event=b"), 4)
    assert [a.split(b"\r\n")[0] for a in answers] == [
        b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
    assert answers[0].endswith(PIXEL) and answers[1].endswith(b'{"status":"ok"}')
    assert b"twice" in answers[3]
    wait_for(lambda: len(stored(collector, marker)) == 2)


@pytest.mark.parametrize("request_bytes", [
    get("/p.gif?site=fast-test&event=bye", "Connection: close\r\n"),
    b"GET /p.gif?site=fast-test&event=old HTTP/1.0\r\nHost: x\r\n\r\n",
])
def test_a_connection_the_client_closes_is_closed_after_the_answer(env, request_bytes):
    client, _ = env
    [answer] = raw_exchange(client, request_bytes + get("/healthz"), 2)  # 2nd is never read
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in answer.lower() and answer.endswith(PIXEL)


def test_a_site_created_by_another_process_is_found(env, store):
    client, collector = env
    site_id = f"fast-{uuid.uuid4().hex[:8]}"
    Sites(store).create(site_id)  # not in this collector's registry yet
    response = client.get(f"/p.gif?site={site_id}&event=first")
    assert response.status_code == 200
    wait_for(lambda: drained(collector))
    assert [r["event"] for r in rows(collector.store, site_id)] == ["first"]


def test_a_dropped_bot_is_answered_without_being_stored(env):
    client, collector = env
    response = client.get("/p.gif?site=fast-nobots&event=crawl",
                          headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"})
    assert response.status_code == 200 and response.content == PIXEL
    wait_for(lambda: drained(collector))
    assert rows(collector.store, "fast-nobots") == []


def test_refusals_name_the_problem_and_keep_the_connection(env):
    client, collector = env
    before = collector.metrics.hits_rejected.values[("pixel", "invalid_utf8")]
    answers = raw_exchange(client, get("/p.gif?site=fast-test&event=%ff") + get("/healthz"), 2)
    assert answers[0].startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in answers[0]
    assert b"UTF-8" in answers[0]
    assert answers[1].startswith(b"HTTP/1.1 200 OK")
    assert collector.metrics.hits_rejected.values[("pixel", "invalid_utf8")] == before + 1


def test_a_full_spool_answers_503_with_retry_after(store, tmp_path):
    with served(store, tmp_path, spool_max_bytes=1) as (client, collector):
        if collector.sites.get("fast-test") is None:
            collector.sites.create("fast-test")
        response = client.get("/p.gif?site=fast-test&event=full")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "spool is full" in response.json()["error"]
        assert client.get("/healthz").status_code == 200


def test_the_device_cookie_is_secure_behind_a_trusted_proxy(store, tmp_path):
    with served(store, tmp_path, trusted_proxies="127.0.0.0/8") as (client, collector):
        if collector.sites.get("fast-test") is None:
            collector.sites.create("fast-test")
        body = b'{"site": "fast-test", "event": "e", "consent": ["analytics"]}'
        plain = client.post("/collect", content=body, headers={"Content-Type": "text/plain"})
        client.cookies.clear()  # else the next request carries today's tw_id: no new cookie
        proxied = client.post("/collect", content=body, headers={
            "Content-Type": "text/plain", "X-Forwarded-Proto": "https"})
        assert "Secure" not in plain.headers["set-cookie"]
        assert "; Secure" in proxied.headers["set-cookie"]


def test_collect_of_an_unknown_site_waits_for_a_reload(env, store):
    client, collector = env
    site_id = f"fast-{uuid.uuid4().hex[:8]}"
    Sites(store).create(site_id)
    body = b'{"site": "%s", "event": "first"}' % site_id.encode()
    response = client.post("/collect", content=body, headers={"Content-Type": "text/plain"})
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    missing = client.post("/collect", content=b'{"site": "fast-nope", "event": "e"}',
                          headers={"Content-Type": "text/plain"})
    assert missing.status_code == 404 and "unknown site" in missing.json()["error"]
    wait_for(lambda: drained(collector))
    assert [r["event"] for r in rows(collector.store, site_id)] == ["first"]


def test_a_collect_body_arriving_in_pieces(env):
    client, collector = env
    marker = uuid.uuid4().hex
    body = b'{"site": "fast-test", "event": "slow", "props": {"m": "%s"}}' % marker.encode()
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /collect HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.05)
        sock.sendall(body[10:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202 ") and answer.endswith(b'{"accepted":1}')
    assert len(wait_for(lambda: stored(collector, marker))) == 1


def test_every_fast_route_is_answered_without_the_asgi_layer(env, monkeypatch):
    """The route table alone decides (``collector/routes.py``): a hit in the query
    string, a browser's body and a server's keyed body each take the fast path."""
    from collector.ingest import asgi

    client, collector = env

    async def not_here(*args: object) -> None:
        raise AssertionError("the ASGI path took a fast route")

    monkeypatch.setattr(asgi, "take", not_here)
    site_id = f"fast-{uuid.uuid4().hex[:8]}"
    _, keys = collector.sites.create(site_id)
    assert client.get(f"/p.gif?site={site_id}&event=p").status_code == 200
    assert client.post("/collect", content=orjson.dumps({"site": site_id, "event": "c"}),
                       headers={"Content-Type": "text/plain"}).status_code == 202
    response = client.post("/api/v1/batch", content=orjson.dumps({"events": [{"event": "b"}]}),
                           headers={"Authorization": f"Bearer {keys['write']}"})
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    assert client.post("/api/v1/batch", content=b"{}").status_code == 401  # refused here too
    wait_for(lambda: drained(collector))
    assert sorted(r["event"] for r in rows(collector.store, site_id)) == ["b", "c", "p"]
