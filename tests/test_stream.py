"""GET /api/v1/sites/{site}/stream: server-sent events of new rows, resumable with
Last-Event-ID, filtered by events, with heartbeats and limits."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
import uuid

import httpx
import orjson
import pytest

from collector.api.stream import StreamConfig
from collector.app import create_app, protocol_for
from collector.service import Collector
from tests.helpers import CHROME, collector_settings, drained, serve, served_app, wait_for

STREAM = "/api/v1/sites/{}/stream"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    collector = Collector(collector_settings(tmp_path_factory.mktemp("stream")), store=store)
    app = create_app(collector)
    app.rest.state.tagwerk_stream = StreamConfig(heartbeat=0.3, poll=0.1, per_site=2)
    with serve(app, http=protocol_for(collector)) as base, \
            httpx.Client(base_url=base, headers={"User-Agent": CHROME}) as http:
        yield http, collector


def new_site(collector):
    site_id = f"st-{uuid.uuid4().hex[:10]}"
    _, keys = collector.sites.create(site_id)
    return site_id, keys


def send(http, keys, events):
    response = http.post("/api/v1/batch", content=orjson.dumps({"events": events}),
                         headers={"Authorization": f"Bearer {keys['write']}",
                                  "Content-Type": "application/json"})
    assert response.status_code == 202, response.text


class Listener:
    """An SSE client in a thread: messages (dicts of fields, comments under ':') in a queue."""

    def __init__(self, http, site_id, key, last_id=None, **query):
        headers = {"Authorization": f"Bearer {key}"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self.messages: queue.Queue = queue.Queue()
        self.status: int | None = None
        self._stop = threading.Event()
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        args=(http, site_id, headers, query))
        self._thread.start()
        assert self._open.wait(10)

    def _run(self, http, site_id, headers, query):
        with http.stream("GET", STREAM.format(site_id), params=query, headers=headers,
                         timeout=10) as response:
            self.status = response.status_code
            self.headers = response.headers
            self._open.set()
            message: dict = {}
            with contextlib.suppress(httpx.HTTPError):
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if not line:
                        self.messages.put(message)
                        message = {}
                        continue
                    name, _, value = line.partition(":")
                    message[name or ":"] = value.removeprefix(" ")

    def rows(self, n, timeout=10.0):
        """The next ``n`` data messages (heartbeats skipped) as (id, row)."""
        found, deadline = [], time.monotonic() + timeout
        while len(found) < n:
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if "data" in message:
                found.append((message["id"], orjson.loads(message["data"])))
        return found

    def close(self):
        self._stop.set()


def test_rows_arrive_live_filtered_with_ids_and_heartbeats(env):
    http, collector = env
    site_id, keys = new_site(collector)
    listener = Listener(http, site_id, keys["read"], events="purchase,add_to_cart")
    assert listener.status == 200
    assert listener.headers["content-type"].startswith("text/event-stream")
    first = listener.messages.get(timeout=5)
    assert first == {"retry": "3000"}
    send(http, keys, [{"event": "page_view", "props": {"m": "0"}},
                      {"event": "purchase", "props": {"m": "1"}},
                      {"event": "add_to_cart", "props": {"m": "2"}}])
    got = listener.rows(2)
    assert sorted(row["props"]["m"] for _, row in got) == ["1", "2"]
    assert all(row["site_id"] == site_id for _, row in got)
    assert len({event_id for event_id, _ in got}) == 2
    heartbeat = listener.messages.get(timeout=5)
    while "data" in heartbeat:
        heartbeat = listener.messages.get(timeout=5)
    assert heartbeat == {":": "ping"}
    listener.close()


def test_resume_with_last_event_id_gives_each_row_once(env):
    http, collector = env
    site_id, keys = new_site(collector)
    listener = Listener(http, site_id, keys["read"])
    send(http, keys, [{"event": "page_view", "props": {"m": str(i)}} for i in range(3)])
    got = listener.rows(3)  # in the order rows were stored
    listener.close()
    send(http, keys, [{"event": "page_view", "props": {"m": str(i)}} for i in range(3, 5)])
    again = Listener(http, site_id, keys["read"], last_id=got[1][0])
    resumed = [row["props"]["m"] for _, row in again.rows(3)]
    again.close()
    assert resumed[0] == got[2][1]["props"]["m"] and sorted(resumed[1:]) == ["3", "4"]
    # An event's id is an export cursor too.
    export = http.get(f"/api/v1/sites/{site_id}/export", params={"since": got[-1][0]},
                      headers={"Authorization": f"Bearer {keys['read']}"})
    assert sorted(orjson.loads(line)["props"]["m"] for line in export.content.splitlines()) \
        == ["3", "4"]


def test_limits_keys_and_bad_input(env):
    http, collector = env
    site_id, keys = new_site(collector)
    _, other_keys = new_site(collector)
    auth = {"Authorization": f"Bearer {keys['read']}"}
    assert http.get(STREAM.format(site_id)).status_code == 401
    assert http.get(STREAM.format(site_id), headers={
        "Authorization": f"Bearer {other_keys['read']}"}).status_code == 403
    for headers, query, field in (
            ({"Last-Event-ID": "nonsense"}, {}, "Last-Event-ID"),
            ({"Last-Event-ID": "A" * 500}, {}, "Last-Event-ID"),
            ({}, {"since": "x"}, "since"), ({}, {"channel": "web"}, "channel"),
            ({}, {"events": "a,,b\x01"}, "events")):
        response = http.get(STREAM.format(site_id), params=query, headers={**auth, **headers})
        assert response.status_code == 400 and response.json()["field"] == field
    # A bad since= is refused beside a good Last-Event-ID too (it was ignored then).
    good = http.get(f"/api/v1/sites/{site_id}/export", headers=auth).headers["Tagwerk-Cursor"]
    with http.stream("GET", STREAM.format(site_id), params={"since": "garbage"},
                     headers={**auth, "Last-Event-ID": good}) as response:
        assert response.status_code == 400  # not a stream that never ends
        assert orjson.loads(response.read())["field"] == "since"
    listeners = [Listener(http, site_id, keys["read"]) for _ in range(2)]
    assert all(listener.status == 200 for listener in listeners)
    refused = http.get(STREAM.format(site_id), headers=auth)
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    for listener in listeners:
        listener.close()


def test_head_checks_the_request_and_holds_no_stream(env):
    """HEAD answers the headers a GET would get, after the same checks, and ends: it takes
    none of the site's streams and leaves its connection free for the next request."""
    http, collector = env
    site_id, keys = new_site(collector)
    auth = {"Authorization": f"Bearer {keys['read']}"}
    for _ in range(3):  # more than per_site (2), on one kept-alive connection
        response = http.head(STREAM.format(site_id), headers=auth, timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
    assert http.head(STREAM.format(site_id)).status_code == 401
    assert http.head(STREAM.format(site_id), params={"since": "x"}, headers=auth
                     ).status_code == 400
    listeners = [Listener(http, site_id, keys["read"]) for _ in range(2)]
    assert all(listener.status == 200 for listener in listeners)
    for listener in listeners:
        listener.close()


@contextlib.contextmanager
def streaming(store, tmp_path, **config):
    """A collector of its own behind real uvicorn, its streams configured by ``config``:
    (the app, an httpx client on it, the collector)."""
    with served_app(store, tmp_path) as (app, http, collector):
        app.rest.state.tagwerk_stream = StreamConfig(heartbeat=0.3, poll=0.05, **config)
        yield app, http, collector


def test_a_slow_subscriber_catches_up_without_gaps_or_repeats(store, tmp_path):
    """Tiny batches and a queue of one batch (of any size): the subscriber overflows, reads
    on its own from its position, and joins the shared batches again."""
    with streaming(store, tmp_path, batch_rows=2, queue_bytes=1) as (_, http, collector):
        site_id, keys = new_site(collector)
        send(http, keys, [{"event": "page_view", "props": {"m": "before"}}])
        wait_for(lambda: drained(collector))  # stored before the stream: not in it
        listener = Listener(http, site_id, keys["read"])
        for batch in range(5):
            send(http, keys, [{"event": "page_view", "props": {"m": f"{batch}-{i}"}}
                              for i in range(7)])
        got = [row["props"]["m"] for _, row in listener.rows(35)]
        listener.close()
        assert sorted(got) == sorted(f"{b}-{i}" for b in range(5) for i in range(7))
        with pytest.raises(queue.Empty):
            while True:  # nothing more than those 35 rows, heartbeats only
                assert "data" not in listener.messages.get(timeout=1)


def test_the_streams_of_all_sites_are_capped_too():
    """Past ``total`` streams in all, another site's stream is refused too (429 with
    Retry-After); each ended stream frees its place."""
    from collector.api.access import ApiError
    from collector.api.stream import Hub

    hub = Hub(store=None, config=StreamConfig(per_site=2, total=3))  # admit reads no store
    for site in ("a", "a", "b"):
        hub.admit(site)
    with pytest.raises(ApiError) as refused:
        hub.admit("c")
    assert refused.value.status == 429 and "Retry-After" in refused.value.headers
    hub.release("a")
    hub.admit("c")
    with pytest.raises(ApiError):
        hub.admit("b")


def test_a_stopping_collector_ends_its_streams_at_once(tmp_path):
    """On SIGTERM an open stream ends cleanly at once, so that its client reconnects with
    Last-Event-ID (to this collector restarted, or another) and the collector exits: a
    stream never ends on its own, and used to hold the shutdown for its whole grace (10 s)
    and then be cut mid-body."""
    import re
    import signal
    import subprocess
    import sys

    from tests.servers import Server

    server = Server(tmp_path / "c", "--no-demo").start()
    try:
        made = subprocess.run([sys.executable, "-m", "collector", "site", "create", "stopping",
                               "--data-dir", str(server.data_dir)],
                              capture_output=True, text=True, timeout=60)
        key = re.search(r"read key:\s+(\S+)", made.stdout).group(1)
        with httpx.stream("GET", f"{server.url}{STREAM.format('stopping')}", timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("retry:")
            began = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # raises if the body is cut rather than ended
            ended = time.monotonic() - began
        assert all(line in ("", ": ping") for line in rest), rest
        assert ended < 3, ended
        assert server.proc.wait(10) in (0, -signal.SIGTERM)  # uvicorn raises it again
        assert time.monotonic() - began < 5
    finally:
        server.stop()


def test_a_closed_hub_begins_no_stream(store):
    """A request on a kept-alive connection after the drain began gets a 503 to retry."""
    from collector.api.access import ApiError
    from collector.api.stream import Hub

    hub = Hub(store, StreamConfig())
    hub.close()
    with pytest.raises(ApiError) as refused:
        hub.admit("any")
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "2"}


def held_rows(hub) -> int:
    """Bytes of the engine's answers that the hub's queues keep alive (each counted once)."""
    answers = {}
    for poller in list(hub.pollers.values()):
        for subscriber in list(poller.subscribers):
            for batch in list(subscriber.queue._queue):
                for row in batch.rows if batch else ():
                    answers[id(row.rest.obj)] = len(row.rest.obj)
    return sum(answers.values())


def test_a_subscriber_that_reads_nothing_holds_a_bounded_queue(store, tmp_path):
    """Probe 62: six streams that read nothing, under a flood of hits, took the process
    from 0.5 to 2.6 GB: each queue kept 64 batches of 2,000 rows. A queue is now bounded in
    bytes, and emptied as it overflows (its subscriber reads on its own once it reads
    again); a subscriber that keeps up gets every row all the same."""
    with streaming(store, tmp_path) as (app, http, collector):
        site_id, keys = new_site(collector)
        host, port = http.base_url.host, http.base_url.port
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((host, int(port)))
        slow.sendall(f"GET {STREAM.format(site_id)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     f"Bearer {keys['read']}\r\n\r\n".encode())
        assert slow.recv(12) == b"HTTP/1.1 200"  # and nothing more is read
        listener = Listener(http, site_id, keys["read"])
        hub = app.rest.state.tagwerk_stream_hub
        padding = {f"p{i}": "x" * 2000 for i in range(10)}  # 20 KB a row: 40 MB in all
        for batch in range(40):
            send(http, keys, [{"event": "flood", "props": {"m": f"{batch}-{i}", **padding}}
                              for i in range(50)])
        got = {row["props"]["m"] for _, row in listener.rows(2000, timeout=60)}
        assert got == {f"{b}-{i}" for b in range(40) for i in range(50)}
        most = StreamConfig().queue_bytes + StreamConfig().batch_bytes
        assert held_rows(hub) <= most, (held_rows(hub), most)
        slow.close()
        listener.close()
        wait_for(lambda: not hub.pollers)


def test_reads_stop_at_about_batch_bytes_and_miss_nothing(store, tmp_path, monkeypatch):
    """A read ends at the engine's block past ``batch_bytes`` (live) or ``catch_up_bytes``
    (64 rows here, where one row is past either), and the next one starts after its last
    row."""
    from collector.api import stream

    sizes: list[int] = []

    def fetch(*args):
        batch = real(*args)
        sizes.append(len(batch.rows))
        return batch

    real = stream.fetch
    monkeypatch.setattr(stream, "fetch", fetch)
    with streaming(store, tmp_path, batch_bytes=1, catch_up_bytes=1) as (_, http, collector):
        site_id, keys = new_site(collector)
        listener = Listener(http, site_id, keys["read"])
        send(http, keys, [{"event": "big", "props": {"m": str(i)}} for i in range(300)])
        live = listener.rows(300)
        listener.close()
        assert [row["props"]["m"] for _, row in live] == [str(i) for i in range(300)]
        assert max(sizes) <= 64 and len(sizes) >= 5, sizes
        sizes.clear()
        again = Listener(http, site_id, keys["read"], last_id=live[9][0])
        caught = again.rows(290)
        again.close()
        assert caught == live[10:]
        assert max(sizes) <= 64 and len(sizes) >= 5, sizes


def test_a_catch_up_waiting_for_room_ends_when_the_hub_closes():
    """A catch-up waits while slow clients hold every byte of the hub's budget; a stopping
    collector ends it at once, not after a heartbeat."""
    import asyncio
    import types

    from collector.api.stream import Hub

    async def scenario() -> float:
        hub = Hub(store=None, config=StreamConfig(held_bytes=10, heartbeat=30))
        hub.held = 10  # (slow clients' rows)
        began = time.monotonic()
        waiting = asyncio.ensure_future(hub.room(types.SimpleNamespace(held=0), 5, 30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        hub.close()
        assert await asyncio.wait_for(waiting, 5) is False
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 5


def test_a_catch_up_is_not_kept_waiting_by_its_own_queue():
    """The rows queued for a subscriber while it catches up wait for it: counted against
    the hub's room, seven such subscribers stalled one another for up to an hour."""
    import asyncio
    import types

    from collector.api.stream import Hub

    async def scenario() -> bool:
        hub = Hub(store=None, config=StreamConfig(held_bytes=10))
        mine, other = types.SimpleNamespace(held=0), types.SimpleNamespace(held=0)
        hub.charge(mine, 8)
        hub.charge(other, 1)
        return await hub.room(mine, 5, 0.5)

    assert asyncio.run(scenario()) is True


def test_pieces_of_large_rows_are_bounded_in_bytes():
    """256 rows of 128 KB made one piece of 33 MB (probe 63): a piece ends past SEND_BYTES."""
    from collector.api import stream

    row = (b"id: 1\ndata: {", memoryview(b"x" * (128 << 10)), b"\n\n")
    got = list(stream.pieces([row] * 256))
    assert max(map(len, got)) <= stream.SEND_BYTES + len(b"".join(row))
    assert b"".join(got) == b"".join(b"".join(row) for _ in range(256))
