"""HTTP limits on both ports of ``tagwerk serve`` (collector/web/limits.py), as an attacker
would try them with raw sockets: a huge header, thousands of headers, a giant URL, a head or
a body that trickles in or stalls, idle connections. Each refusal is checked for its status,
``Connection: close``, the connection then closing, and the server answering the next
client. The collector's port runs ``collector.app.protocol_for`` as ``tagwerk serve`` does; the
SQL port is started by ``cli._start_sql_interface`` itself, so its uvicorn configuration is
the one under test. The timeouts are module constants, lowered here with monkeypatch."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import resource
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from collector import cli
from collector.ingest.answers import PIXEL
from collector.ingest.fasthttp import IngestProtocol
from collector.web import connections, inflight, limits
from collector.web.clientip import parse_networks
from tests.helpers import CHROME, served, wait_for
from tests.servers import Server, free_port

SITE = "limits-test"


@dataclass
class Port:
    name: str
    port: int
    ok_path: str  # a GET answered 200
    body_path: str  # a POST whose body the server reads (the fast path on the collector's)
    ok_body: bytes  # what the 200 of ok_path ends with
    protocol: type = object  # the protocol class uvicorn runs on it


@pytest.fixture(scope="module")
def servers(store, tmp_path_factory) -> Iterator[dict[str, Port]]:
    with served(store, tmp_path_factory.mktemp("limits"), sql_port=free_port()) as (
            client, collector):
        if collector.sites.get(SITE) is None:
            collector.sites.create(SITE)
        sql, thread = cli._start_sql_interface(collector)
        deadline = time.monotonic() + 10
        while not sql.started:
            assert time.monotonic() < deadline, "the SQL interface did not start"
            time.sleep(0.01)
        yield {
            "collector": Port("collector", client.base_url.port,
                              f"/p.gif?site={SITE}&event=limits", "/collect", PIXEL,
                              IngestProtocol),
            "sql": Port("sql", collector.settings.sql_port, "/ping", "/", b"Ok.\n",
                        sql.config.http_protocol_class),
        }
        sql.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(params=["collector", "sql"])
def port(request, servers) -> Port:
    return servers[request.param]


# -- raw HTTP -------------------------------------------------------------------------------


def connect(port: Port) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port.port), timeout=10)


def head(path: str, extra: bytes = b"", method: str = "GET") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {CHROME}\r\n"
            .encode() + extra + b"\r\n")


def answered(sock: socket.socket, wait: float = 0.0) -> bool:
    # poll, not select: late in the suite this process holds more than 1,024 descriptors,
    # past which select() refuses a socket (the attacker thread died of it once).
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(wait * 1000))


def send_until_answered(sock: socket.socket, chunks: Iterator[bytes], wait: float = 0.05
                        ) -> int:
    """Send ``chunks`` one by one, stopping once the server has something to say (or has
    closed); return how many bytes were sent."""
    sent = 0
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
        if answered(sock, wait):
            break
    return sent


def read_to_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not
    within ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"still open after {timeout} s: {data[:200]!r}") from None
        if not chunk:
            return data
        data += chunk


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def assert_refused(answer: bytes, code: int) -> None:
    assert status(answer) == code, answer[:300]
    head, _, _ = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in head.lower() + b"\r\n"
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the connection closed


def assert_serving(port: Port) -> None:
    """A normal request, on a new connection, is answered at once."""
    with connect(port) as sock:
        sock.sendall(head(port.ok_path, b"Connection: close\r\n"))
        answer = read_to_close(sock, timeout=5)
    assert status(answer) == 200 and answer.endswith(port.ok_body), answer[:300]


def exchange(port: Port, data: bytes) -> bytes:
    with connect(port) as sock:
        send_until_answered(sock, iter([data]))
        return read_to_close(sock)


# -- header count and size ------------------------------------------------------------------


def test_a_huge_header_is_refused_431_before_it_is_read(port):
    big = 1 << 20
    with connect(port) as sock:
        chunks = iter([head(port.ok_path)[:-2] + b"X-Big: "]
                      + [b"a" * 16384] * (big // 16384) + [b"\r\n\r\n"])
        sent = send_until_answered(sock, chunks, wait=0.2)
        answer = read_to_close(sock)
    assert_refused(answer, 431)
    assert sent < 256 * 1024  # refused after a few reads, not after 1 MiB
    assert_serving(port)


def test_two_thousand_headers_are_refused_431(port):
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    assert_refused(exchange(port, head(port.ok_path, fields)), 431)
    assert_serving(port)


def test_headers_sent_one_by_one_are_refused_once_past_the_size(port):
    """The number of fields is checked when the head is complete; until then the size
    limit stops an endless stream of small fields."""
    with connect(port) as sock:
        chunks = iter([head(port.ok_path)[:-2]] + [b"".join(b"X-H%d-%d: v\r\n" % (i, j)
                                                            for j in range(10))
                                                   for i in range(500)])
        sent = send_until_answered(sock, chunks, wait=0.002)
        answer = read_to_close(sock)
    assert_refused(answer, 431)
    assert sent < limits.MAX_HEAD_BYTES + 1000
    assert_serving(port)


def test_a_hundred_and_one_small_fields_are_refused_431(port):
    def fields(n: int) -> bytes:  # head() adds Host and User-Agent
        return b"Connection: close\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(n - 3))

    assert len(fields(limits.MAX_HEADERS + 1)) < limits.MAX_HEAD_BYTES // 4
    assert_refused(exchange(port, head(port.ok_path, fields(limits.MAX_HEADERS + 1))), 431)
    answer = exchange(port, head(port.ok_path, fields(limits.MAX_HEADERS)))
    assert status(answer) == 200 and answer.endswith(port.ok_body)


def test_many_small_headers_add_up_to_the_size_limit(port):
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(90))  # 90 < 100
    assert len(fields) > limits.MAX_HEAD_BYTES
    assert_refused(exchange(port, head(port.ok_path, fields)), 431)
    assert_serving(port)


def test_a_head_just_within_the_limits_is_served(port):
    # the request target and header fields count, each as "name: value\r\n"
    fields = [(b"User-Agent", CHROME.encode()), (b"Connection", b"close"), (b"Host", b"x")]
    fields += [(b"X-H%d" % i, b"v") for i in range(limits.MAX_HEADERS - len(fields) - 1)]
    used = len(port.ok_path) + sum(len(n) + len(v) + 4 for n, v in fields)
    filler = limits.MAX_HEAD_BYTES - used - len(b"X-Fill") - 4
    fields.append((b"X-Fill", b"f" * filler))
    assert len(fields) == limits.MAX_HEADERS
    request = (f"GET {port.ok_path} HTTP/1.1\r\n".encode()
               + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n")
    answer = exchange(port, request)
    assert status(answer) == 200 and answer.endswith(port.ok_body)
    # one more byte, or one more field, is too much
    longer = request.replace(b"X-Fill: f", b"X-Fill: ff")
    assert_refused(exchange(port, longer), 431)
    one_more = request.replace(b"X-H1: v\r\n", b"X-H1: v\r\nX-More: v\r\n")
    one_more = one_more.replace(b"X-Fill: " + b"f" * 20, b"X-Fill: ")  # within the size
    assert_refused(exchange(port, one_more), 431)


def test_a_giant_url_is_refused_414(port):
    with connect(port) as sock:
        chunks = iter([b"GET /" + b"a" * 16384] + [b"a" * 16384] * 64
                      + [b" HTTP/1.1\r\nHost: x\r\n\r\n"])
        sent = send_until_answered(sock, chunks, wait=0.2)
        answer = read_to_close(sock)
    assert_refused(answer, 414)
    assert sent < 256 * 1024
    assert_serving(port)


def test_a_url_and_headers_together_over_the_limit_are_refused_431(port):
    path = port.ok_path + ("&" if "?" in port.ok_path else "?") + "pad=" + "p" * 10_000
    assert_refused(exchange(port, head(path, b"X-Pad: " + b"q" * 7000 + b"\r\n")), 431)
    assert_serving(port)


def test_a_refusal_behind_a_pipelined_request_lets_its_answer_out_first(port):
    """The request before is still being answered: its answer goes out, with
    ``Connection: close``, and the connection closes; the refused request gets none."""
    big = head(port.ok_path, b"X-Big: " + b"a" * 40_000 + b"\r\n")
    answer = exchange(port, head(port.ok_path) + big)
    assert status(answer) == 200 and answer.endswith(port.ok_body)
    assert answer.count(b"HTTP/1.1 ") == 1 and b"\r\nconnection: close\r\n" in answer
    assert_serving(port)


@pytest.mark.parametrize("garbage", [b"GARBAGE\r\n\r\n",
                                     b"GET / HTTP/1.1\r\nContent-Length: 1\r\n"
                                     b"Content-Length: 2\r\n\r\n"])
def test_bytes_that_do_not_parse_behind_a_pipelined_request_let_its_answer_out(port, garbage):
    """A parser error in the bytes after a request still being answered: as a refused head,
    the request before gets its answer, with ``Connection: close``, and nothing more (it got
    only uvicorn's 400, though it was taken: found by an attacker's probe)."""
    answer = exchange(port, head(port.ok_path) + garbage)
    assert status(answer) == 200 and answer.endswith(port.ok_body), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"\r\nconnection: close\r\n" in answer
    assert_serving(port)


def test_a_hit_before_bytes_that_do_not_parse_is_answered_as_stored(servers):
    port = servers["collector"]
    marker = uuid.uuid4().hex
    body = b'{"site": "%s", "event": "pipelined", "props": {"m": "%s"}}' % (
        SITE.encode(), marker.encode())
    for extra in (b"", b"Transfer-Encoding: chunked\r\n"):  # the fast path; the ASGI one
        framed = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if extra
                  else body)
        length = b"" if extra else b"Content-Length: %d\r\n" % len(body)
        request = head("/collect", b"Content-Type: text/plain\r\n" + length + extra,
                       method="POST") + framed
        answer = exchange(port, request + b"GARBAGE\r\n\r\n")
        assert status(answer) == 202 and answer.endswith(b'{"accepted":1}'), answer[:300]
        assert answer.count(b"HTTP/1.1 ") == 1
    assert_serving(port)


def test_a_huge_trailer_field_is_refused_431(servers):
    """A chunked body's trailer fields are buffered by the parser as the head's are."""
    port = servers["collector"]  # a chunked body goes the ASGI way
    with connect(port) as sock:
        chunks = iter([head("/collect", b"Content-Type: text/plain\r\n"
                            b"Transfer-Encoding: chunked\r\n", method="POST")
                       + b"4\r\n{}  \r\n0\r\nX-Trailer: "] + [b"t" * 16384] * 64
                      + [b"\r\n\r\n"])
        sent = send_until_answered(sock, chunks, wait=0.2)
        answer = read_to_close(sock)
    assert_refused(answer, 431)
    assert sent < 256 * 1024
    assert_serving(port)


def test_a_chunked_body_with_a_small_trailer_is_read(servers):
    port = servers["collector"]
    body = b'{"site": "%s", "event": "chunked"}' % SITE.encode()
    request = (head("/collect", b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n", method="POST")
               + b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(body), body))
    with connect(port) as sock:
        sock.sendall(request[:-30])
        time.sleep(0.1)
        sock.sendall(request[-30:])
        answer = read_to_close(sock)
    assert status(answer) == 202 and answer.endswith(b'{"accepted":1}')


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"x-mine ,  chunked"])
def test_a_transfer_coding_other_than_chunked_is_refused_501(port, coding):
    """RFC 9112 6.1: a transfer coding the server does not know is a 501. The parser reads
    the chunks and drops the coding, so a gzipped body was read as it was sent (a 400 for
    its "malformed JSON", or the raw bytes as a query on the SQL port)."""
    body = gzip.compress(b'{"site": "%s", "event": "coded"}' % SITE.encode())
    answer = exchange(port, head(port.body_path, b"Content-Type: text/plain\r\n"
                                 b"Transfer-Encoding: %s\r\n" % coding, method="POST")
                      + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert_refused(answer, 501)
    assert b"chunked" in answer.partition(b"\r\n\r\n")[2]
    assert_serving(port)


# -- timeouts -------------------------------------------------------------------------------


def test_a_head_trickled_slowly_is_answered_408(port, monkeypatch):
    monkeypatch.setattr(limits, "HEAD_TIMEOUT", 0.5)
    with connect(port) as sock:
        start = time.monotonic()
        # a byte every 50 ms, each well within any per-read timeout: the head's deadline counts
        request = head(port.ok_path)
        sent = send_until_answered(sock, (request[i:i + 1] for i in range(len(request))))
        answer = read_to_close(sock)
        elapsed = time.monotonic() - start
    assert_refused(answer, 408)
    assert sent < len(request) and 0.4 < elapsed < 5
    assert_serving(port)


def test_a_head_that_stops_is_answered_408(port, monkeypatch):
    monkeypatch.setattr(limits, "HEAD_TIMEOUT", 0.3)
    with connect(port) as sock:
        sock.sendall(head(port.ok_path)[:30])
        assert_refused(read_to_close(sock), 408)
    assert_serving(port)


def collect_request(port: Port, body: bytes) -> bytes:
    return head(port.body_path, b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
                % len(body), method="POST")


def test_a_body_that_stalls_is_answered_408(port, monkeypatch):
    monkeypatch.setattr(limits, "BODY_TIMEOUT", 0.3)
    body = b'{"site": "%s", "event": "stalled"}' % SITE.encode()
    with connect(port) as sock:
        start = time.monotonic()
        sock.sendall(collect_request(port, body) + body[:10])
        answer = read_to_close(sock)
    assert_refused(answer, 408)
    assert time.monotonic() - start < 5
    assert_serving(port)


def test_a_chunked_body_that_stalls_is_answered_408(servers, monkeypatch):
    """On the collector's port a chunked body goes the ASGI way (not the fast path)."""
    port = servers["collector"]
    monkeypatch.setattr(limits, "BODY_TIMEOUT", 0.3)
    with connect(port) as sock:
        sock.sendall(head("/collect", b"Content-Type: text/plain\r\n"
                          b"Transfer-Encoding: chunked\r\n", method="POST") + b"20\r\n{\"si")
        assert_refused(read_to_close(sock), 408)
    assert_serving(port)


def test_a_body_trickling_with_short_pauses_is_read_whole(servers, monkeypatch):
    """The body's timeout is one of inactivity (the time between two reads), not a deadline
    for the whole body: a slow but steady client is served."""
    port = servers["collector"]
    monkeypatch.setattr(limits, "BODY_TIMEOUT", 1.0)
    body = b'{"site": "%s", "event": "trickled", "title": "%s"}' % (SITE.encode(), b"t" * 60)
    with connect(port) as sock:
        sock.sendall(collect_request(port, body))
        start = time.monotonic()
        for i in range(0, len(body), 4):  # 0.1 s apart (a tenth of the timeout), ~2.7 s in all
            time.sleep(0.1)
            sock.sendall(body[i:i + 4])
        assert time.monotonic() - start > 2 * limits.BODY_TIMEOUT
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert status(answer) == 202 and answer.endswith(b'{"accepted":1}')


def test_a_body_timeout_after_the_answer_closes_without_408(servers, monkeypatch):
    """An answer given before the body was read (here the ASGI path's 413 for a declared
    length over the limit): the stalled rest of the body closes the connection, no 408."""
    port = servers["collector"]
    monkeypatch.setattr(limits, "BODY_TIMEOUT", 0.3)
    with connect(port) as sock:
        sock.sendall(head("/collect", b"Content-Type: text/plain\r\n"
                          b"Content-Length: 10000000\r\n", method="POST") + b"{")
        answer = read_to_close(sock)
    assert answer.count(b"HTTP/1.1 ") == 1 and status(answer) != 408
    assert_serving(port)


def test_idle_connections_are_closed(port, monkeypatch):
    monkeypatch.setattr(limits, "KEEP_ALIVE_TIMEOUT", 0.5)
    # a fresh connection on which nothing is sent
    with connect(port) as sock:
        start = time.monotonic()
        assert read_to_close(sock) == b""
        assert 0.4 < time.monotonic() - start < 5
    # a kept-alive connection after an answer; blank lines do not keep it open
    with connect(port) as sock:
        sock.sendall(head(port.ok_path))
        start = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(20):
                time.sleep(0.1)
                sock.sendall(b"\r\n")
        answer = read_to_close(sock)
        assert status(answer) == 200 and answer.endswith(port.ok_body)
        assert answer.count(b"HTTP/1.1 ") == 1 and time.monotonic() - start < 5
    assert_serving(port)


def test_a_refused_connection_lingers_only_until_the_client_closes(port, monkeypatch):
    """After a refusal the server shuts its side at once (the client sees the answer, then
    the end), drops what still arrives, and closes after LINGER_TIMEOUT at the latest."""
    monkeypatch.setattr(limits, "LINGER_TIMEOUT", 0.5)
    with connect(port) as sock:
        sock.sendall(head(port.ok_path, b"X-Big: " + b"a" * 40_000 + b"\r\n"))
        assert_refused(read_to_close(sock), 431)
        start = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - start < 5:
                sock.sendall(b"b" * 1000)  # dropped unread, until the server closes
                time.sleep(0.05)
        assert time.monotonic() - start < 5
    assert_serving(port)


# -- other clients ----------------------------------------------------------------------------


def _attack(port: Port, stop: threading.Event) -> None:
    """Misbehave in a loop: a 1 MiB header sent slowly, 2,000 headers, a stalled head."""
    stalled = []
    while not stop.is_set():
        with contextlib.suppress(OSError), connect(port) as sock:
            send_until_answered(sock, iter([head(port.ok_path)[:-2] + b"X-Big: "]
                                           + [b"a" * 65536] * 16), wait=0.01)
        with contextlib.suppress(OSError), connect(port) as sock:
            sock.sendall(head(port.ok_path, b"".join(b"X-H%d: v\r\n" % i
                                                     for i in range(2000))))
        if len(stalled) < 50:
            with contextlib.suppress(OSError):
                stalled.append(connect(port))
                stalled[-1].sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
    for sock in stalled:
        sock.close()


ANSWERED_WITHIN = 5.0  # seconds


def test_other_clients_are_served_while_one_misbehaves(port):
    stop = threading.Event()
    attackers = [threading.Thread(target=_attack, args=(port, stop)) for _ in range(2)]
    for thread in attackers:
        thread.start()
    try:
        time.sleep(0.2)
        # Answered before the attacker's stalled heads could be cut (HEAD_TIMEOUT, 10 s): a
        # server that served them first would time out here.
        assert limits.HEAD_TIMEOUT >= 2 * ANSWERED_WITHIN
        for _ in range(20):
            with httpx.Client(base_url=f"http://127.0.0.1:{port.port}",
                              headers={"User-Agent": CHROME}, timeout=ANSWERED_WITHIN) as client:
                response = client.get(port.ok_path)
            assert response.status_code == 200 and response.content == port.ok_body
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=30)


# -- clients that do not read their answers ------------------------------------------------


def test_requests_pipelined_far_ahead_of_their_answers_are_cut(port):
    """uvicorn queues every request of a read behind the one being answered, and reads
    again after each answer: a client pipelining without reading grew the process by
    hundreds of MB a connection (an HTTP-layer probe). Past MAX_PIPELINED requests waiting,
    the connection closes after the answers before them."""
    with connect(port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head(port.ok_path) * 3000)
        answer = read_to_close(sock)
    assert 1 <= answer.count(b"HTTP/1.1 200 ") <= limits.MAX_PIPELINED + 1
    assert_serving(port)


def test_a_client_that_reads_no_answer_is_read_no_more_and_cut(servers, monkeypatch):
    """Answers given in the parser's callbacks (refused pixels) were written whatever the
    client read, and read on: 52 MB of requests grew the process by 270 MB, and no timeout
    ended the connection. Once answers back up the server reads no more, and a client that
    reads none for WRITE_TIMEOUT is cut."""
    monkeypatch.setattr(limits, "WRITE_TIMEOUT", 1.0)
    port = servers["collector"]
    refused = head(f"/p.gif?site={SITE}&event=x&ts=x") * 200  # 400s, answered at once
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port.port))
    with sock:
        sock.settimeout(1.0)
        sent, began = 0, time.monotonic()
        try:
            while time.monotonic() - began < 20:
                sent += sock.send(refused)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - began < 20, f"the server read {sent:,} bytes on"
        time.sleep(limits.WRITE_TIMEOUT + 1.0)
        read_to_close(sock, timeout=5)
    assert_serving(port)


def test_a_client_that_reads_slowly_but_steadily_is_not_cut(servers, monkeypatch):
    """WRITE_TIMEOUT counts while the client reads nothing: one that reads an answer more
    slowly than its backlog drains from the transport's high-water mark to its low one
    (48 KiB) within WRITE_TIMEOUT keeps the connection, as its backlog shrinks."""
    monkeypatch.setattr(limits, "WRITE_TIMEOUT", 0.2)
    query = b"SELECT repeat('x', 400000)"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", servers["sql"].port))
    with sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(query), query))
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            time.sleep(0.04)  # about 100 KB a second: 48 KiB drain in ~0.5 s
    assert status(data) == 200 and data.endswith(b"x\n") and len(data) > 400_000


def test_a_large_answer_read_steadily_below_its_rate_is_not_cut(servers, monkeypatch):
    """A large answer the client reads more slowly than it is written stays above the
    high-water mark for long (an export of 50 MB read at 60 KB/s was cut at 10 s, its
    body truncated: a probe); the client reads on, so its connection stays."""
    monkeypatch.setattr(limits, "WRITE_TIMEOUT", 0.5)
    query = b"SELECT repeat('x', 1000000) FROM numbers(12)"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(("127.0.0.1", servers["sql"].port))
    with sock:  # kept alive: the connection is not closing while its answer drains
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(query), query))
        sock.settimeout(10)
        data, length = b"", None
        while length is None or len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {len(data):,} bytes"
            data += chunk
            if length is None and b"\r\n\r\n" in data:
                head, _, _ = data.partition(b"\r\n\r\n")
                size = [line for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")][0]
                length = len(head) + 4 + int(size.split(b":")[1])
            time.sleep(0.05)  # about 1.3 MB a second: the answer takes ~10 s
    assert status(data) == 200 and data.endswith(b"x\n")


# -- tagwerk serve ---------------------------------------------------------------------------


def test_both_ports_use_the_limited_protocol(port):
    assert issubclass(port.protocol, limits.LimitedProtocol)


def test_the_collector_protocol_leaves_the_limits_hooks_alone():
    """The limits and the fast path use different hooks of uvicorn_protocol.UvicornProtocol
    (the fast path take and body_complete): a name both define would override a limit."""
    shared = set(vars(limits.LimitedProtocol)) & set(vars(IngestProtocol))
    assert shared - {"__module__", "__doc__"} == set()


def test_tagwerk_serve_applies_the_limits_and_the_idle_timeout_on_both_ports(tmp_path):
    """The real command, as a subprocess: 2,000 headers are refused on both ports, and an
    idle connection to either is closed after the default 5 s."""
    assert limits.KEEP_ALIVE_TIMEOUT == 5.0
    server = Server(tmp_path / "serve").start()
    try:
        ports = [Port("collector", server.port, "/healthz", "/collect", b'{"status":"ok"}'),
                 Port("sql", server.sql_port, "/ping", "/", b"Ok.\n")]
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
        for port in ports:
            assert_refused(exchange(port, head(port.ok_path, fields)), 431)
            assert_serving(port)
        idle = [connect(port) for port in ports]
        start = time.monotonic()
        for sock in idle:
            assert read_to_close(sock, timeout=15) == b""
            sock.close()
        assert 4 < time.monotonic() - start < 10
    finally:
        server.stop()


# -- request bodies held open at once (collector/web/inflight.py) -----------------------------

@pytest.mark.parametrize("framing", ["length", "chunked"])  # the fast path; the ASGI path
def test_bodies_held_open_at_once_are_capped_in_all(servers, monkeypatch, framing):
    """Each body has its endpoint's limit (a batch 1 MB), but many sent slowly at once
    added up (200 batches: +170 MB; 8,000 bodies of under 64 KB: +480 MB, re-probe 45).
    Past the cap in all (100 KB here) the request that would cross it is refused 503 and
    closed, the others are read on, other requests are served, and a refused or abandoned
    body gives its bytes back."""
    monkeypatch.setattr(inflight.BODIES, "most", 100 * 1024)
    port = servers["collector"]
    piece = b" " * (40 * 1024)  # JSON's whitespace: the start of a body

    def start(sock: socket.socket) -> None:
        framed = (b"Content-Length: %d\r\n" % (60 * 1024) if framing == "length"
                  else b"Transfer-Encoding: chunked\r\n")
        sock.sendall(head("/collect", b"Content-Type: text/plain\r\n" + framed, method="POST"))
        sock.sendall(piece if framing == "length" else b"%x\r\n%s\r\n" % (len(piece), piece))

    held = [connect(port) for _ in range(2)]
    for sock in held:
        start(sock)
    wait_for(lambda: inflight.BODIES.total() >= 2 * len(piece))
    with connect(port) as third:
        start(third)
        answer = read_to_close(third)
    assert_refused(answer, 503)
    assert b"request bodies at once" in answer
    for sock in held:
        assert not answered(sock)  # still being read
    assert_serving(port)
    for sock in held:
        sock.close()
    assert wait_for(lambda: inflight.BODIES.total() == 0)


@pytest.mark.parametrize("path", ["/healthz", "/p.gif?site=limits-test&event=e",  # ASGI, fast
                                  "/collect"])  # refused before its body is read: 413
def test_a_body_left_unread_after_its_answer_does_not_count(servers, monkeypatch, path):
    """A request answered before its body came (a GET's body, a 413 for a body over the
    limit) has the rest of its body thrown away as it arrives: it holds nothing, and
    counting it let one connection refuse everyone's bodies (probe 50)."""
    monkeypatch.setattr(inflight.BODIES, "most", 100 * 1024)
    port = servers["collector"]
    method, extra = ("POST", b"Content-Type: text/plain\r\n") if path == "/collect" else (
        "GET", b"")
    with connect(port) as sock:
        sock.sendall(head(path, extra + b"Content-Length: 1000000000\r\n", method=method))
        assert answered(sock, wait=5)
        for _ in range(5):  # 95 KB: under the cap, which would close the connection
            try:
                sock.sendall(b" " * (19 * 1024))
            except (BrokenPipeError, ConnectionResetError):
                break  # closed after its answer: nothing can be held
            time.sleep(0.05)
        time.sleep(0.2)
        assert inflight.BODIES.total() == 0
        with connect(port) as other:  # another's 20 KB body, in two reads, is taken
            body = b'{"site":"%s","event":"e"}' % SITE.encode() + b" " * (20 * 1024)
            other.sendall(head("/collect", b"Content-Type: text/plain\r\nContent-Length: "
                               b"%d\r\n" % len(body), method="POST") + body[:5])
            time.sleep(0.1)
            other.sendall(body[5:])
            assert status(other.recv(65536)) == 202


def test_the_sql_port_does_not_count_its_streamed_bodies(servers, monkeypatch):
    """An INSERT's body streams to the engine: the SQL port's protocol counts none."""
    monkeypatch.setattr(inflight.BODIES, "most", 1024)
    port = servers["sql"]
    assert not port.protocol.counts_bodies
    with connect(port) as sock:
        sock.sendall(head("/", b"Content-Length: 100000\r\n", method="POST") + b"x" * 50_000)
        time.sleep(0.2)
        assert inflight.BODIES.total() == 0


# -- connections open at once per client (collector/web/connections.py) ----------------------

@pytest.mark.parametrize("name", ["collector", "sql"])
def test_a_clients_connections_are_capped(servers, monkeypatch, name):
    """3,000 idle or half-sent connections from one host held +200 MB (probe 50): past its
    share, a client's new connection is closed before anything is read; its others, and
    other clients, are served."""
    monkeypatch.setattr(connections, "MAX_PER_CLIENT", 3)
    # 127.0.0.2 as if it were a public address (a loopback one is never capped)
    monkeypatch.setattr(connections, "is_public", lambda address: address == "127.0.0.2")
    port = servers[name]

    def from_elsewhere() -> socket.socket:  # a client of its own: no other test's sockets
        return socket.create_connection(("127.0.0.1", port.port), timeout=10,
                                        source_address=("127.0.0.2", 0))

    held = [from_elsewhere() for _ in range(3)]
    try:
        wait_for(lambda: connections.open_from("127.0.0.2") == 3)
        with from_elsewhere() as extra:
            assert read_to_close(extra, timeout=5) == b""
        other = servers["sql" if name == "collector" else "collector"]  # its own counts
        with socket.create_connection(("127.0.0.1", other.port), timeout=10,
                                      source_address=("127.0.0.2", 0)) as sock:
            sock.sendall(head(other.ok_path))
            assert status(sock.recv(65536)) == 200
        held[0].sendall(head(port.ok_path))
        assert status(held[0].recv(65536)) == 200
        assert_serving(port)  # from 127.0.0.1
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: connections.open_from("127.0.0.2") == 0)


def test_the_sql_port_caps_its_connections_from_all_clients(servers, monkeypatch):
    """Its local clients are not capped per client: 20,000 connections from two loopback
    addresses took every file descriptor of the process, and the collector's port refused
    every hit meanwhile (re-probe 61). Past the port's cap a new connection is closed
    before anything is read; the collector's port has a cap of its own, far higher (the
    open-files limit less a reserve)."""
    port = servers["sql"]
    monkeypatch.setattr(port.protocol, "port_connections", 3)
    held = [connect(port) for _ in range(3)]
    try:
        with connect(port) as extra:
            assert read_to_close(extra, timeout=5) == b""
        held[0].sendall(head(port.ok_path))
        assert status(held[0].recv(65536)) == 200
        for _ in range(4):
            assert_serving(servers["collector"])
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: exchange_ok(port))


def exchange_ok(port: Port) -> bool:
    try:
        assert_serving(port)
    except (AssertionError, OSError):
        return False
    return True


def test_on_a_port_with_its_own_cap_a_public_client_has_a_quarter_of_it():
    public = [connections.admit("8.8.4.4", (), 99, port_most=8) for _ in range(3)]
    assert public[0] and public[1] and public[2] is None
    local = connections.admit("127.0.0.1", (), 99, port_most=8)  # not public: the port's cap
    assert local == ("99 *",)
    for keys in (public[0], public[1], local):
        connections.release(keys)
    assert connections.open_from("8.8.4.4") == 0


def test_connections_of_a_trusted_proxy_or_an_address_not_public_are_not_capped(
        monkeypatch):
    monkeypatch.setattr(connections, "MAX_PER_CLIENT", 1)
    proxy = parse_networks("8.8.8.0/24")
    assert connections.admit("8.8.8.8", proxy) == connections.admit("8.8.8.8", proxy) == ()
    for private in ("10.1.2.3", "192.168.1.1", "100.64.0.1", "127.0.0.1", "fd00::1"):
        assert connections.admit(private, ()) == connections.admit(private, ()) == ()
    # IPv6: per /64, and 4 times that per /48.
    keys = [connections.admit(f"2001:4860:1:{n:x}::1", ()) for n in range(5)]
    assert all(keys[:4]) and keys[4] is None
    assert connections.admit("2001:4860:1:0::2", ()) is None  # its /64's share is taken
    for taken in keys[:4]:
        connections.release(taken)
    assert connections.open_from("2001:4860:1::1") == 0


class _ClosingTransport:
    """A transport closed with ``unsent`` bytes still to send, as uvicorn leaves one after
    an answer given with ``connection: close`` to a client that stopped reading."""

    def __init__(self, unsent: int) -> None:
        self.unsent, self.aborted = unsent, False

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8123)}.get(
            name, default)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return True

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_closed_connection_whose_answer_is_not_read_is_cut(monkeypatch):
    """A transport closed with bytes still unsent waits for the client to read them,
    however long: a client that stopped reading just before the end of a large answer given
    with `connection: close` held its connection for good (the watchdog stood down once the
    transport was closing), and with it a place under the SQL port's 512."""
    async def app(scope, receive, send) -> None:
        pass

    loop = asyncio.new_event_loop()
    try:
        config = Config(app, lifespan="off", log_config=None)
        config.load()
        protocol = limits.LimitedProtocol(config=config, server_state=ServerState(),
                                          app_state={}, _loop=loop)
        transport = _ClosingTransport(unsent=16_000)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        monkeypatch.setattr(limits, "WRITE_TIMEOUT", 0.0)
        protocol._on_timer()  # closing, with bytes unsent: from now on it must read them
        assert not transport.aborted
        transport.unsent = 8_000
        protocol._on_timer()  # it read some: it may go on
        assert not transport.aborted
        protocol._on_timer()  # nothing more read
        assert transport.aborted
        transport.unsent, transport.aborted = 0, False
        protocol._on_timer()  # all sent: the transport closes it, nothing to cut
        assert not transport.aborted
    finally:
        loop.close()


def test_the_collectors_port_leaves_file_descriptors_for_the_engine(tmp_path):
    """Loopback clients and trusted proxies are not capped per client, and their
    connections could take every file descriptor: then no port accepts and the engine
    opens no part. ``tagwerk serve`` raises its soft open-files limit to the hard one (the
    engine does too; on the server backend nothing else would), and its collector's port
    takes at most that limit less ``openfiles.RESERVED`` (half of it, for a small limit:
    1,500 of 3,000 here); the rest go on working."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4000:
        pytest.skip("needs an open-files limit of 4,000 for the test's own connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4000), hard))
    server = Server(tmp_path / "fds", open_files=(1024, 3000)).start()
    held: list[socket.socket] = []
    try:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+3000\s+3000", limits), limits
        for _ in range(1700):
            sock = socket.create_connection(("127.0.0.1", server.port),
                                            source_address=("127.0.0.2", 0))
            held.append(sock)
            with contextlib.suppress(OSError):  # a head begun: 10 s to end it, not 5 idle
                sock.sendall(b"GET / HTTP/1.1\r\n")
        wait_for(lambda: sum(map(closed, held)) >= 200)
        assert sum(map(closed, held)) <= 205
        # The engine and the SQL port go on: they have descriptors left.
        assert server.sql("SELECT count() >= 0 FROM tagwerk.events") == "1\n"
    finally:
        for sock in held:
            sock.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (an end of stream or a reset waits). A blocking
    socket: one with a timeout would wait for something to read."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("line", ["GET {}", "GET {} HTTP/0.9", "GET {} HTTP/2.0"])
def test_http_versions_other_than_1_0_and_1_1_are_505(port, line):
    """A request line without a version (HTTP/0.9) or with HTTP/2.0 was answered as
    HTTP/1.1: a front proxy that reads it otherwise disagrees with us about where the
    request ends. RFC 9110: 505, and the connection closes."""
    with connect(port) as sock:
        sock.sendall(line.format(port.ok_path).encode() + b"\r\nHost: x\r\n\r\n")
        answer = read_to_close(sock)
    assert_refused(answer, 505)
    assert b"is not supported (1.1 and 1.0 are)" in answer
    with connect(port) as sock:  # 1.0 is served
        sock.sendall(f"GET {port.ok_path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        assert status(read_to_close(sock)) == 200
    assert_serving(port)
