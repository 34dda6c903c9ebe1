"""GET /p.gif: the pixel for pages without JavaScript and e-mail opens.

Every test runs twice: through the ASGI app (Starlette's test client) and through real
uvicorn with the protocol ``tagwerk serve`` uses, whose GET /p.gif skips the ASGI layer
(``collector/ingest/fasthttp.py``): both must answer and store the same."""

from __future__ import annotations

import datetime as dt
import socket
import time
import uuid

import pytest

from collector.ingest.answers import PIXEL
from tests.helpers import drained, on_path, rows, served, wait_for


@pytest.fixture(scope="module", params=["asgi", "fast"])
def env(request, store, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"pixel-{request.param}")
    with on_path(request.param, store, data_dir) as (client, collector):
        if collector.sites.get("pixel-test") is None:
            collector.sites.create("pixel-test", ["https://shop.example"])
        yield client, collector


def stored(env, marker):
    _, collector = env
    wait_for(lambda: drained(collector))
    return rows(collector.store, "pixel-test", "props['marker'] = {m:String}", m=marker)


def test_email_open(env):
    client, _ = env
    marker = uuid.uuid4().hex
    # (a time within MAX_BROWSER_AGE: an older one is the time of receipt, test_collect)
    opened = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    response = client.get(
        f"/p.gif?site=pixel-test&event=email_open&channel=email&user_id=cust-9"
        f"&consent=analytics,marketing&props.campaign=nov%20sale&props.marker={marker}"
        f"&ts={int(opened.timestamp() * 1000)}"
        "&url=https%3A%2F%2Fshop.example%2Fmail%3Futm_medium%3Demail")
    assert response.status_code == 200
    assert response.content == PIXEL and len(PIXEL) == 43
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    [row] = wait_for(lambda: stored(env, marker))
    assert (row["event"], row["channel"], row["user_id"]) == ("email_open", "email", "cust-9")
    assert row["consent"] == ["analytics", "marketing"]
    assert row["props"]["campaign"] == "nov sale"
    assert row["utm_medium"] == "email"
    assert row["ts"].startswith(opened.strftime("%Y-%m-%d %H:%M:%S"))


def test_head_and_wrong_method(env):
    client, _ = env
    head = client.head("/p.gif?site=pixel-test&event=head")
    assert head.status_code == 200 and head.content == b""
    post = client.post("/p.gif?site=pixel-test&event=x")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"


BAD = [
    ("no site", "event=x", 400, "'site' is required"),
    ("unknown site", "site=nope&event=x", 404, "unknown site"),
    ("invalid UTF-8 escape", "site=pixel-test&event=%ff%fe", 400, "UTF-8"),
    ("repeated field", "site=pixel-test&event=a&event=b", 400, "twice"),
    ("items not JSON", "site=pixel-test&event=a&items=%5B", 400, "items"),
    ("bad ts", "site=pixel-test&event=a&ts=soon", 400, "'ts'"),
    ("too many fields", "site=pixel-test&event=a&" + "&".join(f"props.k{i}=1" for i in range(100)),
     400, "query parameters"),
    ("query too long", "site=pixel-test&event=a&title=" + "x" * 9000, 414, "longer"),
    ("unknown field", "site=pixel-test&event=a&colour=red", 400, "colour"),
]


@pytest.mark.parametrize(("query", "status", "message"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_input(env, query, status, message):
    client, collector = env
    wait_for(lambda: drained(collector))
    before = len(rows(collector.store, "pixel-test"))
    response = client.get("/p.gif?" + query)
    assert response.status_code == status
    assert message in response.json()["error"]
    wait_for(lambda: drained(collector))
    assert len(rows(collector.store, "pixel-test")) == before
    assert client.get("/p.gif?site=pixel-test&event=after").status_code == 200


def test_raw_invalid_utf8_bytes(env):
    client, collector = env
    # Bypass the client's own encoding: hand the ASGI app raw bytes.
    import asyncio

    from collector.ingest.adapters import PIXEL_HIT
    from collector.ingest.asgi import take
    from collector.web.http import Hit

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/p.gif", "headers": [],
             "query_string": b"site=pixel-test&event=\xff", "client": ("127.0.0.1", 1),
             "app_state": {"collector": collector}}
    asyncio.run(take(PIXEL_HIT, collector, Hit(scope, None), send))
    assert sent[0]["status"] == 400


def raw_get(port: int, target: bytes, version: bytes = b"HTTP/1.1",
            extra: bytes = b"Connection: close\r\n") -> bytes:
    """Send one request as written (httpx drops a fragment) and read to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET %s %s\r\nHost: 127.0.0.1\r\n%s\r\n" % (target, version, extra))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_the_fast_path_reads_a_target_as_the_asgi_path_does(store, tmp_path):
    """A fragment is no part of the query (the fast path stored ``frag#x`` as the event,
    probe 50); an HTTP/1.0 request is answered and closed at once, as uvicorn does (the
    fast path kept it open, unsaid, for its idle timeout)."""
    with served(store, tmp_path) as (client, collector):
        if collector.sites.get("pixel-test") is None:
            collector.sites.create("pixel-test", ["https://shop.example"])
        port = client.base_url.port
        markers = {}
        for path in (b"/p.gif", b"/p%2Egif"):  # the fast path; the ASGI path
            markers[path] = uuid.uuid4().hex
            answer = raw_get(port, b"%s?site=pixel-test&event=frag&props.m=%s#x&event=y"
                             % (path, markers[path].encode()))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        for marker in markers.values():
            [row] = wait_for(lambda m=marker: rows(collector.store, "pixel-test",
                                                   "props['m'] = {m:String}", m=m))
            assert row["event"] == "frag"
        for path in (b"/p.gif", b"/p%2Egif"):
            began = time.monotonic()
            answer = raw_get(port, b"%s?site=pixel-test&event=old" % path, b"HTTP/1.0",
                             b"Connection: keep-alive\r\n")
            assert time.monotonic() - began < 2  # not the 5 s idle timeout
            head = answer.partition(b"\r\n\r\n")[0].lower()
            assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in head
