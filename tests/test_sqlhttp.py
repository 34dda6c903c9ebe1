"""ClickHouse's HTTP interface over the embedded store: the raw protocol and real clients.

One uvicorn server on 127.0.0.1 serves the whole module; tests isolate themselves in the
database ``sqlhttp_test`` of the session's store.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import httpx
import lz4.frame
import pytest
from backports import zstd
from clickhouse_connect.driver.exceptions import DatabaseError
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from collector.migrations import migrate
from collector.sqlhttp import SqlUser, build_sql_app, interface
from collector.storage.server import ServerStore
from tests.helpers import serve

DB = "sqlhttp_test"
WRITER = ("writer", "w-secret")
READER = ("reader", "r-secret")
USERS = {
    "default": SqlUser("default", "", readonly=True),
    "writer": SqlUser("writer", "w-secret", readonly=False),
    "reader": SqlUser("reader", "r-secret", readonly=True),
    "other": SqlUser("other", "o-secret", readonly=False),
}
MAX_DATA = 8 << 20  # small, so that the bomb tests stay fast
ERROR_TEXT = re.compile(r"Code: (\d+)\. DB::Exception: .*\(([A-Z_]+)\) \(version [\d.]+\)\n", re.S)


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    store.execute(f"DROP DATABASE IF EXISTS {DB}")
    store.execute(f"CREATE DATABASE {DB}")
    store.execute(f"CREATE TABLE {DB}.t (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
    store.execute(f"CREATE TABLE {DB}.sink (x UInt8) ENGINE = Null")
    app = build_sql_app(store, USERS, loopback_only=True, max_data_bytes=MAX_DATA)
    with serve(app) as base:
        yield base
    store.execute(f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture
def table(store) -> Iterator[str]:
    """An empty table of its own for a test that writes."""
    name = f"{DB}.rows"
    store.execute(f"DROP TABLE IF EXISTS {name}")
    store.execute(f"CREATE TABLE {name} (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
    yield name
    store.execute(f"DROP TABLE IF EXISTS {name}")


def post(http: httpx.Client, body: str | bytes, auth=WRITER, **params) -> httpx.Response:
    return http.post("/", content=body, params=params, auth=auth)


def count(http: httpx.Client, table: str) -> int:
    return int(post(http, f"SELECT count() FROM {table}").text)


def assert_error(resp: httpx.Response, code: int, status: int, name: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["x-clickhouse-exception-code"] == str(code)
    match = ERROR_TEXT.fullmatch(resp.text)
    assert match, resp.text
    assert match.group(1) == str(code)
    if name:
        assert match.group(2) == name


# --- endpoints and formats ----------------------------------------------------------------


def test_ping_root_and_replicas_status(http: httpx.Client) -> None:
    for path in ("/ping", "/", "/replicas_status"):
        resp = http.get(path)
        assert (resp.status_code, resp.text) == (200, "Ok.\n")


def test_get_query_answers_tsv_with_clickhouse_headers(http: httpx.Client) -> None:
    resp = http.get("/", params={"query": "SELECT number, 'a b' FROM numbers(2)"})
    assert resp.status_code == 200
    assert resp.text == "0\ta b\n1\ta b\n"
    assert resp.headers["x-clickhouse-format"] == "TabSeparated"
    assert resp.headers["content-type"] == "text/tab-separated-values; charset=UTF-8"
    assert resp.headers["x-clickhouse-timezone"] in ("UTC", "Etc/UTC")
    assert resp.headers["x-clickhouse-server-display-name"]
    assert re.fullmatch(r"[0-9a-f-]{36}", resp.headers["x-clickhouse-query-id"])
    summary = json.loads(resp.headers["x-clickhouse-summary"])
    assert summary["result_rows"] == "2" and summary["read_rows"] == "2"
    assert {"written_rows", "total_rows_to_read", "elapsed_ns"} <= summary.keys()


def test_body_is_the_query_and_its_format_clause_wins(http: httpx.Client) -> None:
    resp = post(http, "SELECT number AS n FROM numbers(2) FORMAT JSONEachRow", query_id="q-1")
    assert resp.text == '{"n":0}\n{"n":1}\n'
    assert resp.headers["x-clickhouse-format"] == "JSONEachRow"
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    assert resp.headers["x-clickhouse-query-id"] == "q-1"


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("JSONCompact", "application/json; charset=UTF-8"),
        ("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
        ("RowBinary", "application/octet-stream"),
        ("Parquet", "application/octet-stream"),
    ],
)
def test_default_format(http: httpx.Client, fmt: str, content_type: str) -> None:
    resp = post(http, "SELECT 7 AS x", default_format=fmt)
    assert resp.status_code == 200
    assert resp.headers["x-clickhouse-format"] == fmt
    assert resp.headers["content-type"] == content_type
    if fmt == "CSVWithNames":
        assert resp.text == '"x"\n7\n'


def test_query_parameter_and_body_make_one_query(http: httpx.Client) -> None:
    assert post(http, "40 + 2", query="SELECT").text == "42\n"


def test_statement_without_result_set_has_no_format(http: httpx.Client) -> None:
    resp = post(http, f"CREATE TABLE IF NOT EXISTS {DB}.t (id UInt32) ENGINE = Memory")
    assert resp.status_code == 200 and resp.content == b""
    assert "x-clickhouse-format" not in resp.headers


# --- inserts ------------------------------------------------------------------------------


def test_insert_data_follows_query_parameter(http: httpx.Client, table: str) -> None:
    resp = post(http, "1,one\n2,two\n3,three\n", query=f"INSERT INTO {table} FORMAT CSV")
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.headers["x-clickhouse-summary"])["written_rows"] == "3"
    assert post(http, f"SELECT name FROM {table} ORDER BY id").text == "one\ntwo\nthree\n"


def test_insert_data_inline_in_body(http: httpx.Client, table: str) -> None:
    body = f'INSERT INTO {table} FORMAT JSONEachRow\n{{"id":1,"name":"x"}}\n{{"id":2,"name":"y"}}'
    assert post(http, body).status_code == 200
    assert count(http, table) == 2


def test_a_writers_statements_tell_the_store_and_reads_do_not(
        http: httpx.Client, table: str, store, monkeypatch) -> None:
    """The change feed looks after the embedded store's writes only (identity/changes.py):
    the SQL interface's count among them, whatever their end."""
    told = []  # the interface's calls of it (no collector of this module writes)
    monkeypatch.setattr(store, "wrote", lambda: told.append(1))
    assert post(http, "SELECT 1", auth=READER).status_code == 200
    assert http.get("/", params={"query": "SELECT 1"}, auth=WRITER).status_code == 200
    assert not told  # a reader's, and a GET (read-only for everyone)
    assert post(http, f"INSERT INTO {table} VALUES (1, 'a')").status_code == 200
    assert len(told) == 1
    assert post(http, "1,one\n2", query=f"INSERT INTO {table} FORMAT CSV").status_code == 400
    assert len(told) == 2


def test_insert_values(http: httpx.Client, table: str) -> None:
    assert post(http, f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b');").status_code == 200
    resp = post(http, "(3, 'c'), (4, 'd')", query=f"INSERT INTO {table} (id, name) VALUES")
    assert resp.status_code == 200, resp.text
    sql = f"INSERT INTO {table} VALUES ({{id:UInt32}}, {{name:String}})"
    assert post(http, sql, param_id="5", param_name="it's").status_code == 200
    resp = post(http, f"SELECT name FROM {table} WHERE id = 5 FORMAT JSONEachRow")
    assert resp.json() == {"name": "it's"}
    # A placeholder inside a string is text; the values are written as literals.
    sql = (f"INSERT INTO {table} VALUES ({{id:UInt32}}, '{{id:UInt32}}'), "
           "(10, {name:String})")
    resp = post(http, sql, param_id="9", param_name="x\\ty")
    assert resp.status_code == 200, resp.text
    resp = post(http, f"SELECT id, name FROM {table} WHERE id >= 9 ORDER BY id FORMAT JSONEachRow")
    assert resp.text.splitlines() == ['{"id":9,"name":"{id:UInt32}"}', '{"id":10,"name":"x\\ty"}']
    post(http, f"ALTER TABLE {table} DELETE WHERE id >= 9 SETTINGS mutations_sync = 1")
    # A map literal is no placeholder (a re-probe's).
    post(http, f"CREATE TABLE {table}_m (m Map(String, UInt32)) ENGINE = Memory")
    sql = f"INSERT INTO {table}_m VALUES ({{'a': 1}}), ({{'b': {{x:UInt32}}}})"
    resp = post(http, sql, param_x="7")
    assert resp.status_code == 200, resp.text
    resp = post(http, f"SELECT m FROM {table}_m ORDER BY m['b'] FORMAT JSONEachRow")
    assert resp.text.splitlines() == ['{"m":{"a":1}}', '{"m":{"b":7}}']
    post(http, f"DROP TABLE {table}_m")
    # As in ClickHouse, all that follows VALUES is data: FORMAT there is no clause.
    resp = post(http, f"INSERT INTO {table} VALUES (6, 'f') FORMAT TSV")
    assert_error(resp, 27, 400, "CANNOT_PARSE_INPUT_ASSERTION_FAILED")
    assert count(http, table) == 5


# --- parameters, settings, sessions, database ---------------------------------------------


@pytest.mark.parametrize("window", ["", " SETTINGS non_replicated_deduplication_window = 100"])
def test_a_token_insert_is_stored_once_while_other_queries_fail(
    http: httpx.Client, store, monkeypatch, window: str
) -> None:
    """Probe 69: when the engine counted an error during a streamed insert (any client's
    failing query), the rows went again inline, trusting the client's deduplication token
    to make that a no-op; a table without a deduplication window (the engine's default)
    stored them twice: 352 rows of 200 inserts. A table that drops a repeated block gets the
    repeat (which reports an error the stream hid); any other, its rows once, inline."""
    name = f"{DB}.tokens_{'kept' if window else 'plain'}"
    store.execute(f"DROP TABLE IF EXISTS {name}")
    store.execute(f"CREATE TABLE {name} (id UInt32, name String) ENGINE = MergeTree "
                  f"ORDER BY id{window}")
    real = interface.errors_counted
    moves = itertools.count()  # another query's error during every insert
    monkeypatch.setattr(interface, "errors_counted", lambda conn: real(conn) + next(moves))
    try:
        for n in range(3):
            resp = post(http, f'INSERT INTO {name} (id, name) FORMAT JSONEachRow\n'
                        f'{{"id": {n}, "name": "x"}}\n', insert_deduplication_token=f"t{n}")
            assert resp.status_code == 200, resp.text
        resp = post(http, f"INSERT INTO {name} (id, name) FORMAT JSONEachRow\n"
                    '{"id": 9, "name": "no token"}\n')
        assert resp.status_code == 200, resp.text
        assert count(http, name) == 4
    finally:
        store.execute(f"DROP TABLE IF EXISTS {name}")


def test_query_parameters_are_bound(http: httpx.Client) -> None:
    resp = post(
        http, "SELECT {s:String}, {n:UInt8} + 1", param_s="tab\\there", param_n="41"
    )
    assert resp.text == "tab\\there\t42\n"
    assert_error(post(http, "SELECT {n:UInt8}", param_n="x"), 457, 500, "BAD_QUERY_PARAMETER")
    assert_error(post(http, "SELECT {n:UInt8}"), 456, 500, "UNKNOWN_QUERY_PARAMETER")


def test_settings_apply_to_one_request_only(http: httpx.Client) -> None:
    query = "SELECT number FROM numbers(10)"
    assert_error(post(http, query, max_result_rows="2"), 396, 500, "TOO_MANY_ROWS_OR_BYTES")
    assert post(http, query).text.count("\n") == 10
    # Neither a SET statement nor a URL setting outlives its request.
    assert post(http, "SET max_threads = 1").status_code == 200
    assert post(http, "SELECT getSetting('max_threads')", max_threads="3").text == "3\n"
    assert post(http, "SELECT getSetting('max_threads')").text not in ("1\n", "3\n")


def test_unknown_setting_is_refused(http: httpx.Client) -> None:
    assert_error(post(http, "SELECT 1", no_such_setting="1"), 115, 404, "UNKNOWN_SETTING")
    assert_error(post(http, "SELECT 1", **{"bad-name": "1"}), 115, 404)


def test_database_parameter(http: httpx.Client) -> None:
    resp = post(http, "SELECT currentDatabase(), count() FROM t", database=DB)
    assert resp.text == f"{DB}\t0\n"
    assert_error(post(http, "SELECT 1", database="no_such_db"), 81, 404, "UNKNOWN_DATABASE")
    resp = http.post("/", content="SELECT currentDatabase()", headers={"X-ClickHouse-Database": DB})
    assert resp.text == f"{DB}\n"


def test_sessions_keep_settings_and_temporary_tables(http: httpx.Client) -> None:
    def run(sql: str, session: str = "s1", **params) -> httpx.Response:
        return post(http, sql, session_id=session, **params)

    assert run("SET max_threads = 3").status_code == 200
    assert run("CREATE TEMPORARY TABLE tmp (x UInt8)").status_code == 200
    assert run("INSERT INTO tmp VALUES (5)").status_code == 200
    assert run("SELECT getSetting('max_threads'), sum(x) FROM tmp").text == "3\t5\n"
    # A URL setting or database applies to its request only, also in a session.
    assert run("SELECT getSetting('max_threads')", max_threads="2").text == "2\n"
    assert run("SELECT currentDatabase()", database=DB).text == f"{DB}\n"
    assert run("SELECT getSetting('max_threads'), currentDatabase()").text == "3\tdefault\n"
    # Another session, or none, sees nothing of it.
    assert_error(run("SELECT * FROM tmp", session="s2"), 60, 404, "UNKNOWN_TABLE")
    assert post(http, "SELECT getSetting('max_threads')").text != "3\n"
    # Another user with the same session id gets a session of its own.
    other = ("other", "o-secret")
    resp = post(http, "SELECT getSetting('max_threads')", auth=other, session_id="s1")
    assert resp.text != "3\n"
    assert run("SELECT 1", close_session="1").status_code == 200
    assert_error(run("SELECT 1", session_check="1"), 372, 500, "SESSION_NOT_FOUND")


def test_session_undoes_url_settings(http: httpx.Client) -> None:
    def run(sql: str, **params) -> httpx.Response:
        return post(http, sql, session_id="s5", **params)

    # A session that never ran SET holds the defaults: no need to read them back.
    default = run("SELECT getSetting('max_threads')").text
    assert run("SELECT getSetting('max_threads')", max_threads="2").text == "2\n"
    assert run("SELECT getSetting('max_threads')").text == default
    # readonly=1 cannot be undone: the session starts afresh rather than stay read-only.
    assert run("CREATE TEMPORARY TABLE kept (x UInt8)").status_code == 200
    assert run("SELECT count() FROM kept", readonly="1").text == "0\n"
    assert_error(run("SELECT count() FROM kept"), 60, 404, "UNKNOWN_TABLE")
    assert run("CREATE TEMPORARY TABLE kept (x UInt8)").status_code == 200


def test_idle_sessions_expire(http: httpx.Client) -> None:
    resp = post(http, "SET max_threads = 3", session_id="s6", session_timeout="0")
    assert resp.status_code == 200
    resp = post(http, "SELECT 1", session_id="s6", session_check="1")
    assert_error(resp, 372, 500, "SESSION_NOT_FOUND")


def test_session_errors(http: httpx.Client) -> None:
    assert_error(post(http, "SELECT 1", session_id="s3", session_timeout="x"), 374, 500)
    assert_error(post(http, "SELECT 1", session_id="s3", session_timeout="99999"), 374, 500)
    # One request at a time per session: whichever comes second is refused.
    responses: list[httpx.Response] = []

    def slow() -> None:
        responses.append(post(http, "SELECT sleep(0.5)", session_id="s4"))

    thread = threading.Thread(target=slow)
    thread.start()
    while thread.is_alive():
        responses.append(post(http, "SELECT 1", session_id="s4"))
        time.sleep(0.02)
    thread.join()
    locked = [r for r in responses if r.headers.get("x-clickhouse-exception-code") == "373"]
    assert locked, [r.text for r in responses]
    assert_error(locked[0], 373, 500, "SESSION_IS_LOCKED")


# --- compression --------------------------------------------------------------------------

ENCODE = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": lambda data: zstd.compress(data[:10]) + zstd.compress(data[10:]),  # two frames
    "lz4": lambda data: lz4.frame.compress(data[:10]) + lz4.frame.compress(data[10:]),
}
DECODE = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "zstd": zstd.decompress,
    "lz4": lz4.frame.decompress,
}


@pytest.mark.parametrize("encoding", sorted(ENCODE))
def test_compressed_request_bodies(http: httpx.Client, table: str, encoding: str) -> None:
    headers = {"Content-Encoding": encoding}
    resp = http.post(
        "/", content=ENCODE[encoding](b"SELECT 'compressed query'"), headers=headers, auth=WRITER
    )
    assert resp.text == "compressed query\n"
    data = ENCODE[encoding](b"".join(b"%d,row %d\n" % (i, i) for i in range(1000)))
    params = {"query": f"INSERT INTO {table} FORMAT CSV"}
    resp = http.post("/", content=data, params=params, headers=headers, auth=WRITER)
    assert resp.status_code == 200, resp.text
    assert count(http, table) == 1000


@pytest.mark.parametrize("encoding", sorted(DECODE))
def test_compressed_responses(http: httpx.Client, encoding: str) -> None:
    query = {"query": "SELECT number FROM numbers(1000)", "enable_http_compression": "1"}
    # A raw stream, so that httpx leaves the body as it came.
    headers = {"Accept-Encoding": f"br;q=0, {encoding}"}
    with http.stream("GET", "/", params=query, headers=headers) as resp:
        raw = b"".join(resp.iter_raw())
    assert resp.headers["content-encoding"] == encoding
    assert DECODE[encoding](raw) == b"".join(b"%d\n" % i for i in range(1000))


def test_response_compression_needs_the_setting_and_the_header(http: httpx.Client) -> None:
    query = {"query": "SELECT 1"}
    with http.stream("GET", "/", params=query, headers={"Accept-Encoding": "identity"}) as resp:
        assert "content-encoding" not in resp.headers
    off = {**query, "enable_http_compression": "0"}
    with http.stream("GET", "/", params=off, headers={"Accept-Encoding": "gzip"}) as resp:
        assert "content-encoding" not in resp.headers


def test_unsupported_content_encoding(http: httpx.Client) -> None:
    resp = http.post("/", content=b"x", headers={"Content-Encoding": "br"}, auth=WRITER)
    assert_error(resp, 779, 415, "UNSUPPORTED_MEDIA_TYPE")


# --- errors and limits --------------------------------------------------------------------


def test_errors_look_like_clickhouse(http: httpx.Client) -> None:
    assert_error(post(http, "SELEC 1"), 62, 400, "SYNTAX_ERROR")
    assert_error(post(http, f"SELECT * FROM {DB}.nope"), 60, 404, "UNKNOWN_TABLE")
    assert_error(post(http, "SELECT 1", default_format="NoSuchFormat"), 73, 404, "UNKNOWN_FORMAT")
    assert_error(post(http, ""), 62, 400, "SYNTAX_ERROR")
    assert_error(post(http, "SELECT 1; SELECT 2"), 62, 400, "SYNTAX_ERROR")
    assert post(http, "SELECT 1;").text == "1\n"


def test_limits(http: httpx.Client) -> None:
    big = "SELECT '" + "x" * (1 << 20) + "'"
    assert_error(post(http, big), 229, 413, "QUERY_IS_TOO_LARGE")
    assert_error(post(http, b"SELECT '\xff'"), 36, 400, "BAD_ARGUMENTS")
    resp = http.post("/?query=SELECT%20%27%FF%27", auth=WRITER)
    assert_error(resp, 36, 400, "BAD_ARGUMENTS")


def test_decompression_bombs_are_refused(http: httpx.Client) -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # ~64 KiB, 64 MiB once inflated
    resp = http.post("/", content=bomb, headers={"Content-Encoding": "gzip"}, auth=WRITER)
    assert_error(resp, 229, 413)
    data_bomb = zstd.compress(b"\0" * (64 << 20))  # insert data: MAX_DATA (8 MiB) applies
    params = {"query": f"INSERT INTO {DB}.sink FORMAT TabSeparated"}
    headers = {"Content-Encoding": "zstd"}
    resp = http.post("/", content=data_bomb, params=params, headers=headers, auth=WRITER)
    assert_error(resp, 229, 413)


def test_keeps_serving_after_each_bad_request(http: httpx.Client) -> None:
    bad = [
        lambda: post(http, "SELEC"),
        lambda: post(http, b"\xff\xfe"),
        lambda: post(http, "SELECT 1", auth=("writer", "wrong")),
        lambda: http.post("/", content=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"}),
        lambda: post(http, "1,2\n", query=f"INSERT INTO {DB}.nope FORMAT CSV"),
        lambda: post(http, "not,a,number\n", query=f"INSERT INTO {DB}.t FORMAT CSV"),
        lambda: post(http, "SELECT throwIf(1)"),
    ]
    for request in bad:
        assert request().status_code >= 400
        assert post(http, "SELECT 1").text == "1\n"


def test_multipart_form(http: httpx.Client) -> None:
    files = {"query": (None, "SELECT {x:String}"), "param_x": (None, "from a form")}
    resp = http.post("/", files=files, auth=WRITER)
    assert resp.text == "from a form\n"


# --- users --------------------------------------------------------------------------------


@pytest.mark.parametrize("way", ["basic", "headers", "params"])
def test_credentials_each_way(http: httpx.Client, way: str) -> None:
    kwargs: dict = {
        "basic": {"auth": WRITER},
        "headers": {"headers": {"X-ClickHouse-User": "writer", "X-ClickHouse-Key": "w-secret"}},
        "params": {"params": {"user": "writer", "password": "w-secret"}},
    }[way]
    params = {"query": "SELECT currentUser() != ''", **kwargs.pop("params", {})}
    resp = http.post("/", params=params, **kwargs)
    assert resp.status_code == 200, resp.text


def test_authentication_failures(http: httpx.Client) -> None:
    for auth in (("writer", "wrong"), ("nobody", ""), ("writer", "")):
        assert_error(post(http, "SELECT 1", auth=auth), 516, 403, "AUTHENTICATION_FAILED")
    mixed = http.post("/", params={"query": "SELECT 1", "user": "writer"}, auth=WRITER)
    assert_error(mixed, 516, 403)
    bearer = http.post("/", params={"query": "SELECT 1"}, headers={"Authorization": "Bearer t"})
    assert_error(bearer, 516, 403)


def test_no_credentials_is_the_default_user(http: httpx.Client) -> None:
    assert http.post("/", content="SELECT 1").text == "1\n"
    assert_error(http.post("/", content=f"INSERT INTO {DB}.t VALUES (1, 'x')"), 164, 500)


def test_readonly_user_reads_but_never_writes(http: httpx.Client, table: str) -> None:
    resp = post(http, "SELECT number FROM numbers(9)", auth=READER, max_result_rows="100")
    assert resp.text.count("\n") == 9
    for sql in (
        f"INSERT INTO {table} VALUES (1, 'x')",
        f"CREATE TABLE {DB}.other (x UInt8) ENGINE = Memory",
        f"DROP TABLE {table}",
    ):
        assert_error(post(http, sql, auth=READER), 164, 500, "READONLY")
    resp = post(http, "1,x\n", auth=READER, query=f"INSERT INTO {table} FORMAT CSV")
    assert_error(resp, 164, 500, "READONLY")
    assert count(http, table) == 0


def test_get_is_readonly_even_for_a_writer(http: httpx.Client, table: str) -> None:
    query = f"INSERT INTO {table} VALUES (1, 'x')"
    assert_error(http.get("/", params={"query": query}, auth=WRITER), 164, 500, "READONLY")
    assert post(http, query).status_code == 200


def test_readonly_requests_cannot_touch_files_or_network(
    http: httpx.Client, tmp_path: Path
) -> None:
    target = tmp_path / "written.tsv"
    attempts = [
        "SELECT file('/etc/hostname')",
        "SELECT `file`('/etc/hostname')",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/x', 'TSV', 'x String')",
        f"INSERT INTO FUNCTION file('{target}', 'TSV', 'x UInt8') VALUES (1)",
    ]
    for sql in attempts:
        assert_error(post(http, sql, auth=READER), 164, 500, "READONLY")
        assert_error(http.get("/", params={"query": sql}, auth=WRITER), 164, 500, "READONLY")
    assert not target.exists()


def test_into_outfile_and_from_infile_are_refused(http: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "out.tsv"
    for sql in (f"SELECT 1 INTO OUTFILE '{target}'", f"SELECT 1 INTO OUTFILE $${target}$$"):
        assert_error(post(http, sql), 358, 500, "INTO_OUTFILE_NOT_ALLOWED")
    resp = post(http, f"INSERT INTO {DB}.t FROM INFILE '/etc/hostname' FORMAT LineAsString")
    assert_error(resp, 78, 404)
    assert not target.exists()


def test_loopback_only_refuses_other_peers(store) -> None:
    app = build_sql_app(store, USERS, loopback_only=True)
    with TestClient(app, client=("192.0.2.7", 5000)) as client:
        assert_error(client.get("/ping"), 516, 403)
    with TestClient(app, client=("::ffff:127.0.0.1", 5000)) as client:
        assert client.get("/ping").text == "Ok.\n"


# --- real clients -------------------------------------------------------------------------


def client_for(url: str, auth=WRITER, **kwargs):
    port = int(url.rsplit(":", 1)[1])
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, username=auth[0], password=auth[1], **kwargs
    )


@pytest.mark.parametrize("compress", [True, False])
def test_clickhouse_connect(url: str, table: str, compress: bool) -> None:
    client = client_for(url, compress=compress)
    try:
        assert client.command("SELECT 40 + 2") == 42
        client.command(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS n Nullable(Float64)")
        rows = [[i, f"name {i}", i / 2 if i % 2 else None] for i in range(500)]
        # insert() sends Native, whose data names the columns' types (and so time zones the
        # engine would open, files too): refused; raw_insert() in a format without types.
        with pytest.raises(DatabaseError, match="input format Native is not read"):
            client.insert(table, rows, column_names=["id", "name", "n"])
        summary = client.raw_insert(
            table, column_names=["id", "name", "n"], fmt="JSONCompactEachRow",
            insert_block=b"".join(json.dumps(row).encode() + b"\n" for row in rows))
        assert summary.written_rows == 500
        result = client.query(
            f"SELECT id, name, n FROM {table} WHERE name = {{name:String}} OR id < {{k:UInt32}} "
            "ORDER BY id",
            parameters={"name": "name 99", "k": 2},
        )
        expected = [(0, "name 0", None), (1, "name 1", 0.5), (99, "name 99", 49.5)]
        assert result.result_rows == expected
        with pytest.raises(DatabaseError, match="TOO_MANY_ROWS_OR_BYTES"):
            client.query(f"SELECT id FROM {table}", settings={"max_result_rows": 10})
        assert len(client.query(f"SELECT id FROM {table}").result_rows) == 500
        raw = client.raw_query(f"SELECT max(id) AS m FROM {table}", fmt="JSONEachRow")
        assert json.loads(raw) == {"m": 499}
        client.raw_insert(
            table,
            column_names=["id", "name"],
            insert_block=b'{"id": 1000, "name": "raw"}\n',
            fmt="JSONEachRow",
            settings={"insert_deduplication_token": "raw-1"},
        )
        assert client.command(f"SELECT name FROM {table} WHERE id = 1000") == "raw"
        client.command(
            f"INSERT INTO {table} (id, name) VALUES ({{id:UInt32}}, {{name:String}})",
            parameters={"id": 1001, "name": "tab\there"},
        )
        assert client.command(f"SELECT name FROM {table} WHERE id = 1001") == "tab\\there"
        # clickhouse-connect sends a session id: SET outlives its request, as on a server.
        client.command("SET max_threads = 3")
        assert client.command("SELECT getSetting('max_threads')") == 3
    finally:
        client.close()


def recording(app: ASGIApp, seen: list[tuple[str, str]]) -> ASGIApp:
    """``app``, noting each request's and response's Content-Encoding."""

    async def wrapped(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        sent = dict(scope["headers"]).get(b"content-encoding", b"").decode()

        async def note(message) -> None:
            if message["type"] == "http.response.start":
                got = dict(message["headers"]).get(b"content-encoding", b"").decode()
                seen.append((sent, got))
            await send(message)

        await app(scope, receive, note)

    return wrapped


def test_clickhouse_connect_compresses_both_ways(store, table: str) -> None:
    seen: list[tuple[str, str]] = []
    with serve(recording(build_sql_app(store, USERS, loopback_only=True), seen)) as url:
        client = client_for(url)
        try:
            data = "".join(f"{i}\t{i}\n" for i in range(50_000)).encode()
            client.raw_insert(table, column_names=["id", "name"], fmt="TabSeparated",
                              insert_block=lz4.frame.compress(data), compression="lz4")
            assert client.query(f"SELECT count(), max(name) FROM {table}").result_rows == [
                (50_000, "9999")
            ]
        finally:
            client.close()
    assert ("lz4", "") in seen  # the insert
    assert ("", "lz4") in seen  # query results


def test_clickhouse_connect_errors(url: str) -> None:
    with pytest.raises(DatabaseError, match="516") as failed:
        client_for(url, auth=("writer", "wrong"))
    assert "Authentication failed" in str(failed.value)
    client = client_for(url, auth=READER)
    try:
        assert client.query("SELECT 1").result_rows == [(1,)]
        with pytest.raises(DatabaseError, match="READONLY"):
            client.command(f"INSERT INTO {DB}.t VALUES (1, 'x')")
        with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
            client.query(f"SELECT * FROM {DB}.nope")
    finally:
        client.close()


def test_server_store_against_the_interface(url: str, store) -> None:
    store.execute(f"DROP TABLE IF EXISTS {DB}.dedup")
    store.execute(
        f"CREATE TABLE {DB}.dedup (id UInt32, name String) ENGINE = MergeTree ORDER BY id "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    remote = ServerStore(url.replace("http://", "http://writer:w-secret@") + "/tagwerk")
    try:
        assert remote.ping()
        assert migrate(remote) == []  # the session's store is migrated already
        assert remote.rows("SELECT {x:String} AS x, currentDatabase() AS db", {"x": "a\tb"}) == [
            {"x": "a\tb", "db": "tagwerk"}
        ]
        # Not INSERT ... VALUES: raw_query appends "FORMAT TSV", which would be taken as data.
        remote.execute(f"INSERT INTO {DB}.dedup SELECT 1, 'one'")
        data = b'{"id": 2, "name": "two"}\n{"id": 3, "name": "three"}\n'
        settings = {"insert_deduplication_token": "x"}
        remote.insert(f"{DB}.dedup", data, settings=settings)
        remote.insert(f"{DB}.dedup", data, settings=settings)  # a retry: deduplicated
        assert remote.rows(f"SELECT count() AS n FROM {DB}.dedup") == [{"n": 3}]
    finally:
        remote.close()
