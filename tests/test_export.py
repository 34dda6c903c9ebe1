"""GET /api/v1/sites/{site}/export: formats, filters, and a cursor that yields every row once,
also for late rows, replays, concurrent collectors and inserts that commit late."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import threading
import time
import uuid

import orjson
import pyarrow.parquet as pq
import pytest

from collector.api import cursor, cursor_range
from collector.api.access import ApiError
from tests.helpers import drained, make_client, wait_for

EXPORT = "/api/v1/sites/{}/export"


# (half a million rows, 80 MB of them: tests/conftest.py)
pytestmark = pytest.mark.usefixtures("sites_dropped_after")


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("export"))
    with client:
        yield client, collector


def new_site(collector, name="ex"):
    site_id = f"{name}-{uuid.uuid4().hex[:10]}"
    _, keys = collector.sites.create(site_id)
    return site_id, keys


def send(client, collector, keys, events):
    response = client.post("/api/v1/batch", content=orjson.dumps({"events": events}),
                           headers={"Authorization": f"Bearer {keys['write']}",
                                    "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    wait_for(lambda: drained(collector))


def get(client, site_id, key, **query):
    return client.get(EXPORT.format(site_id), params=query,
                      headers={"Authorization": f"Bearer {key}"})


def markers(body: bytes) -> list[str]:
    return [orjson.loads(line)["props"]["m"] for line in body.splitlines() if line]


def drain(client, site_id, key, since=None, **query):
    """Follow the cursor until no rows remain: all markers, and the last cursor."""
    seen: list[str] = []
    while True:
        args = {**query, **({"since": since} if since else {})}
        response = get(client, site_id, key, **args)
        assert response.status_code == 200, response.text
        seen += markers(response.content)
        since = response.headers["tagwerk-cursor"]
        if response.headers["tagwerk-more"] == "false":
            return seen, since


def test_formats_and_columns(env):
    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [
        {"event": "purchase", "channel": "pos", "ts": "2026-01-05T10:00:00Z", "revenue": 12.5,
         "currency": "EUR", "items": [{"product_id": "p1", "price": 12.5, "quantity": 1}],
         "props": {"m": "a"}},
        {"event": "page_view", "channel": "web", "props": {"m": "b"}}])
    ndjson = get(client, site_id, keys["read"])
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    rows = sorted((orjson.loads(line) for line in ndjson.content.splitlines()),
                  key=lambda r: r["props"]["m"])
    names = list(rows[0])
    expected = [r["name"] for r in collector.store.rows(
        "SELECT name FROM system.columns WHERE database = 'tagwerk' AND table = 'events' "
        "ORDER BY position")]
    assert names == expected  # every column, in the table's order, later ones included
    assert rows[0]["ts"] == "2026-01-05T10:00:00.000Z"  # ISO 8601, UTC
    assert rows[0]["items"][0]["product_id"] == "p1" and rows[0]["revenue"] == 12.5

    csv = get(client, site_id, keys["read"], format="csv")
    lines = csv.text.splitlines()
    assert lines[0].split(",")[:3] == ['"event_id"', '"site_id"', '"event"'] and len(lines) == 3
    parquet = get(client, site_id, keys["read"], format="parquet")
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == 2 and table.column_names == expected
    # Every format answers the same next cursor for the same range.
    assert ndjson.headers["tagwerk-cursor"] == csv.headers["tagwerk-cursor"] == \
        parquet.headers["tagwerk-cursor"]


def test_limit_pages_through_each_row_once_and_filters(env):
    client, collector = env
    site_id, keys = new_site(collector)
    events = [{"event": ("purchase", "add_to_cart", "page_view")[i % 3],
               "channel": ("web", "pos")[i % 2], "props": {"m": str(i)}} for i in range(20)]
    send(client, collector, keys, events[:12])  # one insert: pages cut inside a block
    send(client, collector, keys, events[12:])
    seen, _ = drain(client, site_id, keys["read"], limit="3")
    assert sorted(seen, key=int) == [str(i) for i in range(20)]
    buy, _ = drain(client, site_id, keys["read"], limit="2", events="purchase,add_to_cart")
    assert sorted(buy, key=int) == [str(i) for i in range(20) if i % 3 != 2]
    pos, _ = drain(client, site_id, keys["read"], channel="pos", events="purchase")
    assert sorted(pos, key=int) == [str(i) for i in range(20) if i % 2 and i % 3 == 0]


def test_late_rows_with_old_times_come_after_the_cursor(env):
    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "now"}}])
    first, since = drain(client, site_id, keys["read"])
    assert first == ["now"]
    # A till's batch from last year and a spool replay's worth of old rows, stored later.
    send(client, collector, keys, [
        {"event": "purchase", "channel": "pos", "ts": "2025-02-01T09:00:00Z",
         "props": {"m": "old"}},
        {"event": "purchase", "channel": "pos", "ts": "2024-12-24T09:00:00Z",
         "props": {"m": "older"}}])
    later, since = drain(client, site_id, keys["read"], since)
    assert sorted(later) == ["old", "older"]
    assert drain(client, site_id, keys["read"], since)[0] == []


def test_rows_merged_into_older_parts_after_the_cursor_still_come(env):
    """Older parts are skipped by their names' highest block (collector/storage/
    positions.py): once merged with them, new rows sit in a part with an old lowest block."""
    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "a"}}])
    first, since = drain(client, site_id, keys["read"])
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "b"}}])
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "c"}}])
    collector.store.execute("OPTIMIZE TABLE tagwerk.events FINAL")
    later, since = drain(client, site_id, keys["read"], since)
    assert (first, sorted(later)) == (["a"], ["b", "c"])
    assert drain(client, site_id, keys["read"], since)[0] == []


def insert_rows(store, site_id, tag, n, slow=False, token=None):
    """``n`` rows straight into the table; ``slow``: the insert takes half a second per row
    before it commits (its SELECT sleeps)."""
    where = "WHERE sleepEachRow(0.5) = 0" if slow else ""
    settings = f" SETTINGS insert_deduplication_token = '{token}'" if token else ""
    store.execute(
        "INSERT INTO tagwerk.events (event_id, site_id, event, ts, props) SELECT "
        "generateUUIDv4(), {site:String}, 'page_view', now64(3) - INTERVAL 400 DAY, "
        "map('m', concat({tag:String}, toString(number))) FROM numbers({n:UInt64}) "
        f"{where}{settings}", {"site": site_id, "tag": tag, "n": n})


def test_an_insert_that_commits_late_is_not_skipped(env):
    client, collector = env
    site_id, keys = new_site(collector)
    store = collector.store
    slow = threading.Thread(target=insert_rows, args=(store, site_id, "slow", 4, True))
    slow.start()  # starts first, reads its rows, commits last
    insert_rows(store, site_id, "fast", 2)
    seen, since = drain(client, site_id, keys["read"])
    late = slow.is_alive()  # almost always: it sleeps 2 s
    slow.join()
    rest, since = drain(client, site_id, keys["read"], since)
    assert sorted(seen + rest) == ["fast0", "fast1", "slow0", "slow1", "slow2", "slow3"]
    if late:  # it committed after the first export had handed out its cursor
        assert sorted(rest) == ["slow0", "slow1", "slow2", "slow3"]


def test_a_replayed_insert_yields_no_second_copy(env):
    client, collector = env
    site_id, keys = new_site(collector)
    token = uuid.uuid4().hex
    insert_rows(collector.store, site_id, "r", 3, token=token)
    seen, since = drain(client, site_id, keys["read"])
    insert_rows(collector.store, site_id, "r", 3, token=token)  # the flusher's replay
    assert drain(client, site_id, keys["read"], since)[0] == []
    assert sorted(seen) == ["r0", "r1", "r2"]


def test_deleted_rows_no_longer_appear(env):
    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [{"event": "page_view", "props": {"m": str(i)}}
                                   for i in range(4)])
    collector.store.execute("DELETE FROM tagwerk.events WHERE site_id = {s:String} "
                            "AND props['m'] = '1'", {"s": site_id})
    seen, since = drain(client, site_id, keys["read"])
    assert sorted(seen) == ["0", "2", "3"]
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "4"}}])
    assert drain(client, site_id, keys["read"], since)[0] == ["4"]


def test_a_delete_with_a_patch_part_between_polls_loses_and_repeats_nothing(env):
    """An erasure deletes with patch parts (privacy/erase.py), which take block numbers of
    their own: polling across one still yields every remaining row once, and the deleted
    row not at all."""
    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [{"event": "page_view", "props": {"m": str(i)}}
                                   for i in range(3)])
    seen, since = drain(client, site_id, keys["read"])
    send(client, collector, keys, [{"event": "page_view", "props": {"m": str(i)}}
                                   for i in range(3, 6)])
    collector.store.execute(
        "DELETE FROM tagwerk.events WHERE site_id = {s:String} AND props['m'] IN ('1', '4') "
        "SETTINGS lightweight_delete_mode = 'lightweight_update'", {"s": site_id})
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "6"}}])
    later, since = drain(client, site_id, keys["read"], since)
    assert sorted(seen) == ["0", "1", "2"] and sorted(later) == ["3", "5", "6"]
    assert sorted(drain(client, site_id, keys["read"])[0]) == ["0", "2", "3", "5", "6"]


def test_two_collectors_inserting_at_once(env, server_store, tmp_path):
    """One collector on the embedded engine, one through its HTTP interface (another
    process's view of the same ClickHouse): an exporter polling all the while sees every
    row once."""
    client, collector = env
    site_id, keys = new_site(collector)
    other_client, other = make_client(server_store, tmp_path / "other")
    seen: list[str] = []
    since = None
    with other_client:
        other.sites.reload()
        writers = []
        for name, c in (("a", client), ("b", other_client)):
            def write(name=name, c=c):
                for batch in range(6):
                    body = {"events": [{"event": "page_view",
                                        "props": {"m": f"{name}{batch}-{i}"}}
                                       for i in range(5)]}
                    c.post("/api/v1/batch", content=orjson.dumps(body), headers={
                        "Authorization": f"Bearer {keys['write']}",
                        "Content-Type": "application/json"}).raise_for_status()
            writers.append(threading.Thread(target=write))
        for thread in writers:
            thread.start()
        while any(thread.is_alive() for thread in writers) or not (
                drained(collector) and drained(other)):
            found, since = drain(client, site_id, keys["read"], since, limit="7")
            seen += found
        found, since = drain(client, site_id, keys["read"], since)
        seen += found
    expected = sorted(f"{n}{b}-{i}" for n in "ab" for b in range(6) for i in range(5))
    assert sorted(seen) == expected


def test_cursor_is_bound_to_its_site_and_checked(env):
    client, collector = env
    site_id, keys = new_site(collector)
    other_id, other_keys = new_site(collector, "other")
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "mine"}}])
    send(client, collector, other_keys, [{"event": "page_view", "props": {"m": "theirs"}}])
    mine = get(client, site_id, keys["read"])
    assert markers(mine.content) == ["mine"]
    theirs = get(client, other_id, other_keys["read"]).headers["tagwerk-cursor"]
    refused = get(client, site_id, keys["read"], since=theirs)
    assert refused.status_code == 400 and refused.json()["field"] == "since"
    assert "another site" in refused.json()["error"]

    raw = bytearray(base64.urlsafe_b64decode(mine.headers["tagwerk-cursor"] + "=="))
    raw[20] ^= 1  # move the position by hand
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad in (forged, "x" * 42, mine.headers["tagwerk-cursor"][:-1], "' OR 1=1 --", "é" * 42):
        response = get(client, site_id, keys["read"], since=bad)
        assert response.status_code == 400 and response.json()["field"] == "since", bad
    # A cursor re-made for this site with the other site's position still reads only this
    # site's rows: the key decides which rows, the cursor only where to start.
    table = cursor_range.table_tag(collector.store)
    start = cursor.encode(table, site_id, cursor.Position(0, 0))
    assert markers(get(client, site_id, keys["read"], since=start).content) == ["mine"]


def test_cursor_round_trip_and_damage():
    table = b"abcd"
    position = cursor.Position(123456789, cursor.LAST)
    text = cursor.encode(table, "shop", position)
    assert len(text) == 42 and cursor.decode(text, table, "shop") == position
    with pytest.raises(ApiError, match="another copy"):
        cursor.decode(text, b"efgh", "shop")
    with pytest.raises(ApiError, match="another site"):
        cursor.decode(text, table, "shop2")
    with pytest.raises(ApiError, match="damaged"):
        cursor.decode(text[:30] + ("A" if text[30] != "A" else "B") + text[31:], table, "shop")


class FakeStore:
    def __init__(self, engine):
        self.engine = engine

    def rows(self, sql, params=None):
        return [{"uuid": "00000000-0000-0000-0000-000000000000", "engine": self.engine}]


def test_replicated_tables_are_refused():
    assert len(cursor_range.table_tag(FakeStore("ReplacingMergeTree"))) == 4
    for engine in ("ReplicatedReplacingMergeTree", "Distributed", "SharedReplacingMergeTree"):
        with pytest.raises(ApiError) as refused:
            cursor_range.table_tag(FakeStore(engine))
        assert refused.value.status == 501


def test_keys(env):
    client, collector = env
    site_id, keys = new_site(collector)
    other_id, other_keys = new_site(collector, "other")
    assert client.get(EXPORT.format(site_id)).status_code == 401
    for key in (keys["write"], other_keys["read"], other_keys["admin"], "nonsense"):
        assert get(client, site_id, key).status_code == 403
    assert get(client, site_id, keys["admin"]).status_code == 200
    assert get(client, "no-such-site", keys["read"]).status_code == 404


def test_head_checks_the_request_and_runs_no_export(env, monkeypatch):
    """HEAD answers the headers of the format after the same checks, without reading the
    table or taking one of the site's exports (so without a cursor: there are no rows)."""
    client, collector = env
    site_id, keys = new_site(collector)

    def no_query(*args):
        raise AssertionError("HEAD ran the export")

    monkeypatch.setattr(cursor_range, "plan", no_query)
    auth = {"Authorization": f"Bearer {keys['read']}"}
    for _ in range(3):  # more than PER_SITE
        response = client.head(EXPORT.format(site_id), params={"format": "csv"}, headers=auth)
        assert response.status_code == 200 and response.content == b""
        assert response.headers["content-type"].startswith("text/csv")
        assert "tagwerk-cursor" not in response.headers
        assert response.headers["content-disposition"].endswith(f'"{site_id}.csv"')
    assert client.head(EXPORT.format(site_id)).status_code == 401
    assert client.head(EXPORT.format(site_id), params={"limit": "0"}, headers=auth
                       ).status_code == 400


@pytest.mark.parametrize(("query", "field"), [
    ("format=xml", "format"), ("limit=0", "limit"), ("limit=abc", "limit"),
    ("limit=99999999999", "limit"), ("limit=-1", "limit"), ("channel=tv", "channel"),
    ("channel=web%27%20OR%201%3D1", "channel"), ("colour=red", "colour"),
    ("format=csv&format=ndjson", "format"), ("since=%ff%fe", "since"),
    ("events=" + "a," * 60, "events"),
    ("events=a%00b", "events"), ("since=" + "A" * 600, "since"),
    # Present but naming nothing: not "every event" (probe 44).
    ("events=", "events"), ("events=,,", "events"),
])
def test_bad_queries_are_refused_by_name(env, query, field):
    client, collector = env
    site_id, keys = new_site(collector)
    response = client.get(f"{EXPORT.format(site_id)}?{query}",
                          headers={"Authorization": f"Bearer {keys['read']}"})
    assert response.status_code == 400, response.text
    assert response.json().get("field", "") == field
    assert get(client, site_id, keys["read"]).status_code == 200  # still serving


def test_huge_query_string_and_injection_through_events(env):
    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [{"event": "page_view", "props": {"m": "x"}}])
    huge = client.get(f"{EXPORT.format(site_id)}?events={'a' * 5000}",
                      headers={"Authorization": f"Bearer {keys['read']}"})
    assert huge.status_code == 414
    # Values are bound as parameters: SQL in an event name is just a name nobody sent.
    for name in ("page_view') OR (1=1", "x' OR site_id != '", "\\' OR 1 --"):
        response = get(client, site_id, keys["read"], events=name)
        assert response.status_code == 200 and response.content == b""


def test_disconnect_stops_the_query(store, tmp_path):
    from tests.helpers import served

    with served(store, tmp_path) as (http, collector):
        site_id, keys = new_site(collector, "big")
        insert_rows(store, site_id, "big", 400_000)
        with http.stream("GET", EXPORT.format(site_id),
                         headers={"Authorization": f"Bearer {keys['read']}"}) as response:
            assert response.status_code == 200
            next(response.iter_bytes())
        running = ("SELECT count() AS n FROM system.processes "
                   "WHERE Settings['log_comment'] LIKE 'tagwerk-stream:%'")
        wait_for(lambda: store.rows(running)[0]["n"] in (0, "0"))
        assert http.get(EXPORT.format(site_id), params={"limit": "5"}, headers={
            "Authorization": f"Bearer {keys['read']}"}).status_code == 200


def test_server_backend_streams_too(server_store, tmp_path):
    client, collector = make_client(server_store, tmp_path)
    with client:
        site_id, keys = new_site(collector, "srv")
        insert_rows(server_store, site_id, "s", 5)
        seen, since = drain(client, site_id, keys["read"], limit="2")
        assert sorted(seen) == [f"s{i}" for i in range(5)]
        parquet = get(client, site_id, keys["read"], format="parquet")
        assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 5


def test_answers_are_as_large_as_allowed_by_default(env, monkeypatch):
    """Every answer reads the site's whole table (positions follow inserts, the table's order
    does not), so a client that names no limit gets the largest answer, not ten times the
    reading."""
    from collector.api import export

    client, collector = env
    site_id, keys = new_site(collector)
    send(client, collector, keys, [{"event": "page_view", "props": {"m": str(i)}}
                                   for i in range(3)])
    asked: list[int] = []
    plan = cursor_range.plan

    def spy(store, rows, start, limit):
        asked.append(limit)
        return plan(store, rows, start, limit)

    monkeypatch.setattr(cursor_range, "plan", spy)
    assert export.DEFAULT_LIMIT == export.MAX_LIMIT
    seen, _ = drain(client, site_id, keys["read"])
    assert sorted(seen) == ["0", "1", "2"] and asked == [export.MAX_LIMIT]
    assert drain(client, site_id, keys["read"], limit="2")[0] and asked[1:] == [2, 2]


def test_a_client_that_stops_reading_is_let_go(store, tmp_path, monkeypatch, capfd):
    """A client that reads nothing for the HTTP limits' write timeout is let go: the
    export's slot comes back, the connection closes without the body's last chunk (no
    client takes the part for the whole), and the collector logs one line, not an
    application error."""
    import socket

    from collector.api import export
    from collector.web import limits
    from tests.helpers import served_app

    monkeypatch.setattr(limits, "WRITE_TIMEOUT", 0.5)
    with served_app(store, tmp_path) as (app, http, collector):
        site_id, keys = new_site(collector, "stall")
        insert_rows(store, site_id, "stall", 60_000)
        port = http.base_url.port
        stalled = []
        for _ in range(export.PER_SITE):  # every slot of the site, held by clients that stall
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {EXPORT.format(site_id)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                         f"Bearer {keys['read']}\r\n\r\n".encode())
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
            stalled.append(sock)
        # Let go after the limit: the slots come back.
        wait_for(lambda: not app.rest.state.tagwerk_exports.used)
        auth = {"Authorization": f"Bearer {keys['read']}"}
        assert http.get(EXPORT.format(site_id), params={"limit": "1"},
                        headers=auth).status_code == 200
        for sock in stalled:
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    received += chunk
            sock.close()
            assert not received.endswith(b"0\r\n\r\n")  # cut, not ended
    assert "Exception in ASGI application" not in capfd.readouterr().err


def test_the_newest_part_emptied_by_retention_keeps_its_block_number(store):
    """A cursor stands at the highest block number; the engine numbers the next insert
    after the highest part it holds when it starts. When retention emptied the newest part
    (a batch with old timestamps, alone in its month), the engine removed it (about 40 s
    later), and a restart numbered the next insert as that part: a cursor handed out before
    skipped it for good (probe 44). events keeps its emptied parts, so the highest number
    stays. (The removal's delay is the engine's: checked by hand, not waited for here.)"""
    [row] = store.rows("SELECT create_table_query AS q FROM system.tables "
                       "WHERE database = 'tagwerk' AND name = 'events'")
    assert "remove_empty_parts = 0" in row["q"]


def test_a_client_reading_slowly_but_steadily_keeps_its_answer(store, tmp_path, monkeypatch,
                                                               caplog):
    """Probe 62: an answer was cut when one send waited past its limit, though its client
    read all along: the kernel wakes a writer only once a third of its send buffer is free
    (MBs), which a slow reader takes long to free. A client that reads nothing is let go by
    the HTTP limits' write timeout, which sees what it reads; one that reads keeps its
    answer (limits here of 1 s, a client reading 256 KB/s for 6 s)."""
    import socket

    from collector.web import limits
    from tests.helpers import served

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(limits, "WRITE_TIMEOUT", 1.0)
    with served(store, tmp_path) as (http, collector):
        site_id, keys = new_site(collector, "steady")
        insert_rows(store, site_id, "x" * 2000, 20_000)  # 40 MB of answer
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the server's buffers
            sock.connect(("127.0.0.1", http.base_url.port))
            sock.sendall(f"GET {EXPORT.format(site_id)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                         f"Bearer {keys['read']}\r\n\r\n".encode())
            received, began = 0, time.monotonic()
            while (spent := time.monotonic() - began) < 6:
                if received > spent * (256 << 10):
                    time.sleep(0.05)
                    continue
                chunk = sock.recv(16 << 10)
                assert chunk, f"cut after {received} bytes, {spent:.1f} s"
                received += len(chunk)
    cuts = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert not cuts, cuts


def test_a_streamed_answer_whose_pipe_is_a_high_file_descriptor(store):
    """A process with over 1,024 files open (connections) gives a stream's pipe a number
    that select() cannot wait on: the SQL port answered 500 (ValueError: filedescriptor
    out of range in select()). A stream waits with poll()."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip("needs an open-files limit of 2,048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    padding = [os.dup(0) for _ in range(1100)]
    try:
        # The engine writes after a pause: the stream waits for its pipe.
        out = b"".join(store.stream("SELECT number, sleepEachRow(0.05) FROM numbers(4)",
                                    fmt="TSV", settings={"max_block_size": 1}))
        assert out.decode().splitlines() == ["0\t0", "1\t0", "2\t0", "3\t0"]
    finally:
        for fd in padding:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_export_not_sent_within_its_deadline_is_cut(store, tmp_path, monkeypatch):
    """Probe 63: a client reading half a KB a second held an export's slot for hours (the
    engine, blocked on its pipe, never sees its own time limit). An export not sent whole
    within its deadline (``QUERY_SECONDS``; 2 s here) is cut, and its slot comes back."""
    import socket

    from collector.api import export
    from tests.helpers import served_app

    monkeypatch.setattr(export, "QUERY_SECONDS", 2)
    with served_app(store, tmp_path) as (app, http, collector):
        site_id, keys = new_site(collector, "deadline")
        insert_rows(store, site_id, "x" * 2000, 20_000)  # 40 MB of answer
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", http.base_url.port))
            sock.sendall(f"GET {EXPORT.format(site_id)} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                         f"Bearer {keys['read']}\r\n\r\n".encode())
            assert sock.recv(12) == b"HTTP/1.1 200"
            began = time.monotonic()
            while app.rest.state.tagwerk_exports.used:  # it reads 64 KB/s all along
                assert time.monotonic() - began < 30, "never cut"
                with contextlib.suppress(ConnectionResetError):
                    if not sock.recv(16 << 10):
                        break
                time.sleep(0.25)
            wait_for(lambda: not app.rest.state.tagwerk_exports.used)
