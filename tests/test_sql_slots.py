"""The read-only users' query slots (collector/sqlhttp/slots.py) bound what their queries
hold: each may take the per-query memory and a result up to max_result_bytes. A slot must
therefore cover what a query holds, from its run to its answer's last byte sent, and
nothing a client can stretch without running anything (probe 60 on the SQL port):

- a body trickled a byte at a time held a slot for as long as it lasted (each byte reset the
  body timeout), so two such requests locked `default` out, four every read-only user;
- the slot was given back when the query ended, while its result waited for a client that
  did not read it: 50 unread answers of 30 MB took the process from 0.6 to 2 GB.

The port runs behind the collector's protocol, as `tagwerk serve` runs it."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from collector.sqlhttp import QueryLimits, SqlUser, build_sql_app
from collector.sqlhttp.config import MAX_READER_QUERIES_PER_USER
from tests.helpers import serve

LIMITS = QueryLimits(max_memory_usage=256 << 20, max_execution_time=20,
                     max_result_bytes=32 << 20)
BIG = b"SELECT repeat('x', 1000) FROM numbers(20000)"  # a 20 MB answer


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    app = build_sql_app(store, {"default": SqlUser("default", "", readonly=True)},
                        loopback_only=True, limits=LIMITS)
    with serve(app, http="collector.web.limits:LimitedProtocol") as base:
        yield base


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def request(body: bytes, length: int | None = None) -> bytes:
    return (b"POST /?user=default HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body) if length is None else length, body))


def one(url: str) -> httpx.Response:
    return httpx.post(url, content=f"SELECT '{uuid.uuid4().hex}'", timeout=30)


def test_a_body_still_arriving_holds_no_slot(url: str) -> None:
    trickling = [connect(url) for _ in range(MAX_READER_QUERIES_PER_USER + 1)]
    try:
        for sock in trickling:  # the start of a query, the rest promised and never sent
            sock.sendall(request(b"SELECT 1 ", length=1_000_000))
        time.sleep(0.5)
        answer = one(url)
        assert answer.status_code == 200, answer.text
    finally:
        for sock in trickling:
            sock.close()


def test_an_answer_not_read_holds_its_slot_until_it_is_sent(url: str) -> None:
    held = [connect(url) for _ in range(MAX_READER_QUERIES_PER_USER)]
    try:
        for sock in held:
            sock.sendall(request(BIG))
        time.sleep(2)  # run, and stuck in sending
        answer = one(url)
        assert answer.status_code == 503, answer.text  # ClickHouse's 202: too many queries
        assert "Too many simultaneous queries" in answer.text
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while (answer := one(url)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)  # their slots come back once the connections are gone
    assert answer.status_code == 200, answer.text


def test_a_result_read_whole_gives_its_slot_back(url: str) -> None:
    for _ in range(MAX_READER_QUERIES_PER_USER + 2):
        answer = httpx.post(url, content=BIG, timeout=30)
        assert answer.status_code == 200 and len(answer.content) > 20_000_000
    assert one(url).status_code == 200
