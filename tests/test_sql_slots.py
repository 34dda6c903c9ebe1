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

import contextlib
import gzip
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from collector.sqlhttp import QueryLimits, SqlUser, build_sql_app, compress, interface
from collector.sqlhttp.config import MAX_QUERY_BYTES, MAX_READER_QUERIES_PER_USER, STEP
from collector.web import inflight
from tests.helpers import serve, wait_for

LIMITS = QueryLimits(max_memory_usage=256 << 20, max_execution_time=20,
                     max_result_bytes=32 << 20)
BIG = b"SELECT repeat('x', 1000) FROM numbers(20000)"  # a 20 MB answer


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    app = build_sql_app(store, {"default": SqlUser("default", "", readonly=True)},
                        loopback_only=True, limits=LIMITS)
    with serve(app, http="collector.sqlhttp.protocol:SqlProtocol") as base:
        yield base


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def request(body: bytes, length: int | None = None) -> bytes:
    return (b"POST /?user=default HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body) if length is None else length, body))


def read_to_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """All the server sends until it closes the connection (fails if it does not). A
    reset counts as closed: bytes the client sent after the close reset the connection."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


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


# -- a query's text, read ahead (collector/sqlhttp/bodies.py, re-probe 61) --------------------


def test_query_texts_read_ahead_are_capped_in_all(url: str, monkeypatch) -> None:
    """Each query's text is read ahead (up to 1 MiB) before it runs: 4,000 connections each
    holding most of one took the process to 4.9 GB. Past the SQL port's budget for them,
    the request that would cross it is refused (503); the others go on; a refused or
    abandoned text gives its bytes back."""
    monkeypatch.setattr(inflight.QUERIES, "most", 100 * 1024)
    text = b"SELECT 1" + b" " * (60 * 1024)
    held = [connect(url), connect(url)]
    try:
        held[0].sendall(request(text, length=1_000_000))
        wait_for(lambda: inflight.QUERIES.total() >= len(text))
        held[1].sendall(request(text, length=1_000_000))
        answer = read_to_close(held[1])  # its body unread: the connection closes
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"query texts" in answer
        assert one(url).status_code == 200
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: inflight.QUERIES.total() == 0)


@pytest.mark.parametrize("form", [False, True])
def test_a_compressed_text_is_decoded_no_further_than_its_limit(url: str, monkeypatch,
                                                                form: bool) -> None:
    """33 KB of zstd decode to 1 GB: a form's whole received chunk was decoded before its
    size was checked (3 GB of memory, 8.7 s of the port's event loop: re-probe 61)."""
    decoded = []
    feed = compress.Decoder.feed

    def counted(self, data: bytes):
        for piece in feed(self, data):
            decoded.append(len(piece))
            yield piece

    monkeypatch.setattr(compress.Decoder, "feed", counted)
    bomb = gzip.compress(b"\0" * (64 << 20))
    headers = {"Content-Encoding": "gzip"}
    if form:
        headers["Content-Type"] = "multipart/form-data; boundary=B"
    answer = httpx.post(url, content=bomb, headers=headers, timeout=60)
    assert answer.status_code == 413, answer.text
    assert sum(decoded) <= MAX_QUERY_BYTES + 2 * STEP


def test_a_query_text_must_arrive_within_its_time(url: str, monkeypatch) -> None:
    """The body timeout bounds pauses only: a byte every few seconds held a connection,
    and 1 MiB of text for days (re-probe 61)."""
    monkeypatch.setattr(interface, "QUERY_TEXT_SECONDS", 1)
    with connect(url) as sock:
        sock.sendall(request(b"SELECT 1", length=1_000))
        sock.settimeout(0.2)
        answer = b""
        for _ in range(50):  # a byte every 0.2 s: never a pause of the body timeout's
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(b" ")
        answer += read_to_close(sock)  # then closed: the rest would keep it open
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"did not arrive within 1 s" in answer


def test_an_answer_before_the_body_is_read_closes_the_connection(url: str) -> None:
    """The server drops the rest of a body it answered early, and a byte every few seconds
    kept the connection (re-probe 61's review: 512 such took the whole SQL port)."""
    with connect(url) as sock:
        sock.sendall(b"POST /?user=nobody HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000"
                     b"\r\n\r\nSELECT 1")
        sock.settimeout(0.5)
        answer, closed = b"", False
        for _ in range(30):  # a byte every 0.5 s, for 15 s: past the body timeout
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = None
            except OSError:  # reset: our bytes reached a closed connection
                chunk = b""
            if chunk == b"":
                closed = True
                break
            answer += chunk or b""
            try:
                sock.sendall(b" ")
            except OSError:
                closed = True
                break
    assert answer.startswith(b"HTTP/1.1 403") and b"516" in answer, answer[:200]
    assert closed


def test_a_readers_answer_read_too_slowly_is_cut(store, capfd) -> None:
    """A client reading a few KB every few seconds kept its slot for as long as its answer
    lasted (hours, for a 256 MiB result): a reader's answer is cut once the query's time
    limit is over, and its slot comes back. The cut closes the connection, and uvicorn
    logs no error of an application that returned without completing its answer."""
    limits = QueryLimits(max_memory_usage=256 << 20, max_execution_time=2,
                         max_result_bytes=32 << 20)
    app = build_sql_app(store, {"default": SqlUser("default", "", readonly=True)},
                        loopback_only=True, limits=limits)
    with serve(app, http="collector.sqlhttp.protocol:SqlProtocol") as base:
        stop = threading.Event()

        def read_slowly(sock: socket.socket) -> None:
            sock.settimeout(1)
            while not stop.is_set():
                try:
                    if not sock.recv(4096):
                        return
                except (TimeoutError, OSError):
                    return
                time.sleep(0.3)

        slow = [connect(base) for _ in range(MAX_READER_QUERIES_PER_USER)]
        readers = [threading.Thread(target=read_slowly, args=(sock,)) for sock in slow]
        try:
            for sock, reader in zip(slow, readers, strict=True):
                sock.sendall(request(BIG))
                reader.start()
            time.sleep(1)
            assert one(base).status_code == 503  # both slots held while they read
            deadline = time.monotonic() + 15
            while (answer := one(base)).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert answer.status_code == 200, answer.text
        finally:
            stop.set()
            for sock in slow:
                sock.close()
            for reader in readers:
                reader.join()
    assert "without completing response" not in capfd.readouterr().err
