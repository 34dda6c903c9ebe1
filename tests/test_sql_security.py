"""The SQL port attacked as issue 9 found it: files written and read, limits loosened, other
users' queries seen and killed, the service's own tables read, the process taken down.

Each attack comes in several disguises (comments ClickHouse knows and a naive lexer does not,
casing, quoting, whitespace, URL vs body vs header) and each test checks both the refusal and
that nothing happened: no file written or changed, no secret in any answer, the interface
still answering.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from collector.sqlhttp import QueryLimits, SqlUser, build_sql_app, load_users, policy
from collector.sqlhttp.errors import SqlError
from collector.sqlhttp.syntax import parse
from collector.storage.engine_config import AGGREGATE_TABLES, AGGREGATE_VIEWS
from tests.helpers import serve, wait_for

WRITER = ("writer", "w-secret")
AGENCY = ("agency", "a-secret")
USERS = {
    "default": SqlUser("default", "", readonly=True),
    "writer": SqlUser("writer", "w-secret", readonly=False),
    **load_users(json.dumps({"agency": {"password": "a-secret", "tables": ["events"],
                                        "sites": ["sec-a"]},
                             "analyst": {"password": "b-secret", "sites": ["sec-a"]}})),
}
ANALYST = ("analyst", "b-secret")  # site-scoped, every data table (DATA_TABLES)
LIMITS = QueryLimits(max_memory_usage=256 << 20, max_execution_time=20,
                     max_result_bytes=8 << 20)
# Comments and spacing ClickHouse skips; the old lexer knew only -- and /* */.
HIDERS = ("#{}\n", "#!{}\n", "/* /* {} */ */", "-- {}\n", "\t\n  ", "/*{}*/")


@pytest.fixture(scope="module")
def url(store) -> Iterator[str]:
    rows = [{"site_id": site, "event_id": str(uuid.uuid4()), "event": "sec_probe",
             "ts": "2026-12-01 10:00:00.000"} for site in ("sec-a", "sec-b", "sec-b")]
    rows += [{"site_id": site, "event_id": str(uuid.uuid4()), "event": "page_view",
              "session_id": f"{site}-s", "path": f"/{site}-entry",
              "ts": "2026-12-01 10:00:00.000"} for site in ("sec-a", "sec-b")]
    store.insert("tagwerk.events", "\n".join(map(json.dumps, rows)).encode())
    with serve(build_sql_app(store, USERS, loopback_only=True, limits=LIMITS)) as base:
        yield base


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A file holding a secret that must never appear in an answer."""
    secret = secrets.token_hex(16)
    path = tmp_path / "canary.txt"
    path.write_text(f"{secret}\n")
    return path, secret


def run(http: httpx.Client, sql: str, auth=None, how: str = "body", **params) -> httpx.Response:
    if how == "url":
        return http.get("/", params={"query": sql, **params}, auth=auth)
    if how == "split":  # the query parameter, a line break, and the body
        half = len(sql) // 2
        return http.post("/", params={"query": sql[:half], **params}, content=sql[half:],
                         auth=auth)
    return http.post("/", params=params, content=sql, auth=auth)


def refused(resp: httpx.Response, *codes: int) -> None:
    assert resp.status_code >= 400, resp.text
    assert int(resp.headers["X-ClickHouse-Exception-Code"]) in codes, resp.text


def alive(http: httpx.Client) -> None:
    assert http.post("/", content="SELECT 1").text == "1\n"


def outfile_variants(target: Path) -> list[str]:
    variants = [
        f"SELECT 1 INTO OUTFILE '{target}'",
        f"select 1 into outfile '{target}' truncate",
        f"SELECT 1 InTo OuTfIlE $${target}$$ APPEND",
        f"SELECT 1 INTO OUTFILE '{target}' COMPRESSION 'gzip'",
        f"SELECT 1 FORMAT TSV INTO OUTFILE '{target}'",
        f"(SELECT 1) INTO OUTFILE '{target}' TRUNCATE",
        f"SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{target}'",
        f"DESCRIBE TABLE tagwerk.events INTO OUTFILE '{target}'",
        f"EXPLAIN SELECT 1 INTO OUTFILE '{target}'",
        f"KILL QUERY WHERE query_id = 'x' INTO OUTFILE '{target}'",
        f"SHOW TABLES INTO OUTFILE '{target}'",
        f"SHOW FUNCTIONS LIKE 'nope%' INTO OUTFILE '{target}' TRUNCATE",
        f"SHOW PRIVILEGES INTO OUTFILE '{target}'",
        f"SHOW ENGINES INTO OUTFILE '{target}'",
        f"CHECK TABLE tagwerk.events INTO OUTFILE '{target}'",
    ]
    for hider in HIDERS:
        gap = hider.format("INTO OUTFILE is refused")
        variants.append(f"SELECT 1 {gap}INTO{gap}OUTFILE{gap}'{target}' TRUNCATE")
    return variants


@pytest.mark.parametrize("auth", [None, WRITER, AGENCY], ids=["default", "writer", "agency"])
def test_into_outfile_never_writes(http: httpx.Client, tmp_path: Path, auth) -> None:
    target = tmp_path / "js_snippet_dist_banner.js"
    target.write_text("original\n")
    for sql in outfile_variants(target):
        for how in ("body", "url", "split"):
            refused(run(http, sql, auth, how), 358, 62, 497, 164)
    assert target.read_text() == "original\n"
    assert not (tmp_path / "x").exists()
    alive(http)


def test_a_second_statement_never_runs(http: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "second.tsv"
    for auth in (None, WRITER):
        for hider in HIDERS:
            gap = hider.format("x")
            sql = f"SELECT 1 {gap}; SELECT 2 INTO OUTFILE '{target}'"
            refused(run(http, sql, auth), 62)
    # chDB runs statements after INSERT ... VALUES data: the data goes to the engine as data.
    http.post("/", content="CREATE TABLE IF NOT EXISTS default.sec_rows (x UInt8) ENGINE = Memory",
              auth=WRITER)
    resp = http.post("/", content=f"INSERT INTO default.sec_rows VALUES (1); SELECT 5 INTO "
                     f"OUTFILE '{target}'", auth=WRITER)
    assert resp.status_code == 200, resp.text
    assert not target.exists()
    http.post("/", content="DROP TABLE default.sec_rows", auth=WRITER)


def file_reads(path: Path) -> list[str]:
    reads = [
        f"SELECT file('{path}')",
        f"SELECT `file`('{path}')",
        f'SELECT "file"(\'{path}\')',
        f"SELECT * FROM file('{path}', 'LineAsString')",
        f"SELECT * FROM `file`('{path}', 'LineAsString')",
        f"SELECT * FROM fileCluster('default', '{path}', 'LineAsString')",
        f"WITH (SELECT file('{path}')) AS x SELECT x",
        f"SELECT arrayMap(p -> file(p), ['{path}'])",
        f"SELECT * FROM view(SELECT file('{path}'))",
        f"SELECT (SELECT file('{path}'))",
        f"DESCRIBE TABLE file('{path}')",
        f"EXPLAIN QUERY TREE SELECT file('{path}')",
        f"SELECT * FROM executable('cat {path}', 'LineAsString')",
        f"SELECT * FROM sqlite('{path}', 't')",
        f"SELECT * FROM url('file://{path}', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')",
    ]
    for hider in HIDERS:
        reads.append(f"SELECT file {hider.format('(')} ('{path}')")
        reads.append(f"SELECT * FROM {hider.format('x')} file('{path}', 'LineAsString')")
    return reads


@pytest.mark.parametrize("auth", [None, AGENCY], ids=["default", "agency"])
def test_readonly_users_never_read_files(http: httpx.Client, canary, auth) -> None:
    path, secret = canary
    for sql in file_reads(path):
        for how in ("body", "url", "split"):
            resp = run(http, sql, auth, how)
            refused(resp, 164, 497, 62, 36, 46)
            assert secret not in resp.text
    alive(http)


def test_writers_never_reach_files_either(http: httpx.Client, canary, tmp_path: Path) -> None:
    path, secret = canary
    target = tmp_path / "w.tsv"
    attempts = [
        *file_reads(path),
        f"INSERT INTO FUNCTION file('{target}', 'TSV', 'x UInt8') SELECT 1",
        f"CREATE TABLE default.sec_f (x String) ENGINE = File(LineAsString, '{path}')",
        f"CREATE DICTIONARY default.sec_d (x UInt64) PRIMARY KEY x SOURCE(FILE(path '{path}' "
        "format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
        f"BACKUP TABLE tagwerk.events TO File('{target}')",
        "SYSTEM SHUTDOWN",
        "SELECT name, content FROM filesystem('/etc')",
        f"SELECT * FROM eval(concat('SELECT * FROM fi', 'le(''{path}'')'))",
        "CREATE DATABASE sec_fs ENGINE = Filesystem('/etc')",
        f"CREATE TABLE default.sec_r (k UInt64, v String) ENGINE = EmbeddedRocksDB(0, "
        f"'{tmp_path}/rocks') PRIMARY KEY k",
        "CREATE TABLE default.sec_s (s String) ENGINE = S3('http://127.0.0.1:9/x', 'CSV')",
        "CREATE TABLE default.sec_u ENGINE = MergeTree ORDER BY tuple() AS "
        "SELECT * FROM urlCluster('default', 'http://127.0.0.1:9/x', 'CSV', 's String')",
        f"CREATE TABLE default.sec_c AS file('{path}', 'LineAsString')",
        "SELECT * FROM ytsaurus('http://127.0.0.1:9', '//x', 'token', 's String')",
        "INSERT INTO FUNCTION remote('127.0.0.1:9', default.x) SELECT 1",
        f"INSERT INTO tagwerk.events FROM INFILE '{path}' FORMAT LineAsString",
    ]
    for sql in attempts:
        resp = run(http, sql, WRITER, "body")
        refused(resp, 164, 497, 62, 36, 46, 78)
        assert secret not in resp.text
    assert not target.exists() and not (tmp_path / "rocks").exists()
    alive(http)


@pytest.mark.parametrize("auth", [None, WRITER, AGENCY], ids=["default", "writer", "agency"])
def test_column_transformers_cannot_hide_a_call(http: httpx.Client, canary, store, auth
                                                 ) -> None:
    """``* APPLY f`` calls f on every column, and the engine's tree shows only a bare
    ColumnsApplyTransformer: file() read any file for every user, the password-less default
    included, and joinGet() read a table nobody granted (found by an attacker's probe)."""
    path, secret = canary
    store.execute("CREATE TABLE IF NOT EXISTS default.sec_join (k UInt8, v String) "
                  "ENGINE = Join(ANY, LEFT, k)")
    store.execute("INSERT INTO default.sec_join VALUES (1, 'not-granted-secret')")
    source = f"(SELECT '{path}' AS p)"
    for sql in (f"SELECT * APPLY (x -> file(x)) FROM {source}",
                f"SELECT * APPLY(file) FROM {source}",
                f"SELECT * APPLY file FROM {source}",
                f"SELECT COLUMNS('p') APPLY (x -> length(file(x))) FROM {source}",
                f"SELECT t.* APPLY file FROM {source} AS t",
                f"SELECT * EXCEPT (q) APPLY file FROM (SELECT '{path}' AS p, 1 AS q)",
                f"SELECT * APPLY file REPLACE (p AS p) FROM {source}",
                "SELECT * APPLY (x -> joinGet('default.sec_join', 'v', x)) "
                "FROM (SELECT toUInt8(1) AS k)"):
        for how in ("body", "url"):
            resp = run(http, sql, auth, how)
            refused(resp, 497, 164)
            assert secret not in resp.text and "not-granted-secret" not in resp.text
    alive(http)


def test_writers_clauses_the_tree_leaves_out_are_refused(http: httpx.Client, canary,
                                                         tmp_path: Path) -> None:
    """Clauses whose expressions the engine's tree leaves out (found by an attacker's
    probe): CHECK ... PARTITION read a file into its error, listed a directory and called
    a URL through a scalar subquery; a TTL's GROUP BY ... SET wrote a file's content into a
    table at the next merge; settings whose values are SQL (additional_result_filter,
    additional_table_filters) read it into a parse error; a dictionary source named with
    an underscore (EXECUTABLE_POOL) ran a shell command; INTO OUTFILE after a DDL statement
    wrote a file of the user's choosing."""
    path, secret = canary
    target = tmp_path / "victim"
    target.write_text("original\n")
    pwned = tmp_path / "pwned"
    http.post("/", auth=WRITER, content="CREATE TABLE IF NOT EXISTS default.sec_p (k UInt8) "
              "ENGINE = MergeTree PARTITION BY k ORDER BY k")
    attempts = [
        f"CHECK TABLE default.sec_p PARTITION tuple(file('{path}'))",
        f"CHECK TABLE default.sec_p PARTITION tuple((SELECT groupConcat(_path) FROM "
        f"file('{tmp_path}/*', 'LineAsString')))",
        f"CREATE TABLE default.sec_ttl (k UInt8, d DateTime, a String) ENGINE = MergeTree "
        f"ORDER BY k TTL d GROUP BY k SET a = concat(any(a), file('{path}'))",
        f"ALTER TABLE default.sec_p MODIFY TTL toDateTime(k) GROUP BY k SET k = "
        f"length(file('{path}'))",
        f"SELECT 1 SETTINGS additional_result_filter = 'toUInt8(file(''{path}'')) = 1'",
        f"SELECT 1 FORMAT TSV SETTINGS additional_result_filter = "
        f"'toUInt8(file(''{path}'')) = 1'",
        f"SET additional_result_filter = 'toUInt8(file(''{path}'')) = 1'",
        "SELECT * FROM system.one SETTINGS additional_table_filters = "
        f"{{'system.one': 'toUInt8(file(''{path}'')) = 1'}}",
        f"CREATE DICTIONARY default.sec_x (k UInt64, a String) PRIMARY KEY k "
        f"SOURCE(EXECUTABLE_POOL(command 'id > {pwned}' format 'TSV' size 1)) "
        "LAYOUT(DIRECT())",
        f"CREATE DICTIONARY default.sec_x (k UInt64, a String) PRIMARY KEY k "
        f"SOURCE(EXECUTABLE(command 'id > {pwned}' format 'TSV')) LAYOUT(DIRECT())",
        f"ALTER TABLE default.sec_p FREEZE WITH NAME 'x2' INTO OUTFILE '{target}' TRUNCATE "
        "FORMAT CustomSeparated",
        f"DROP TABLE IF EXISTS default.nothing INTO OUTFILE '{target}' TRUNCATE",
        # Engines and dictionary sources outside the allow-lists, which a typo in the
        # policy had left unchecked (a second probe): S3Queue polls a URL, FileLog reads a
        # directory, YAMLRegExpTree a file, Cassandra calls a host.
        "CREATE TABLE default.sec_q (s String) ENGINE = S3Queue('http://127.0.0.1:9/x/*', "
        "'CSV') SETTINGS mode = 'unordered'",
        f"CREATE TABLE default.sec_l (s String) ENGINE = FileLog('{tmp_path}', 'LineAsString')",
        f"CREATE DICTIONARY default.sec_y (regexp String, name String) PRIMARY KEY regexp "
        f"SOURCE(YAMLREGEXPTREE(PATH '{path}')) LAYOUT(REGEXP_TREE) LIFETIME(0)",
        "CREATE DICTIONARY default.sec_c (k UInt64, a String) PRIMARY KEY k "
        "SOURCE(CASSANDRA(HOST '127.0.0.1' PORT 9 KEYSPACE 'k' COLUMN_FAMILY 'c')) "
        "LAYOUT(DIRECT())",
        f"OPTIMIZE TABLE default.sec_p INTO OUTFILE '{target}' TRUNCATE",
    ]
    attempts += [  # statements below a PARALLEL WITH root, past the root's checks
        f"SHOW TABLES WHERE toUInt8(file('{path}')) = 1 PARALLEL WITH SELECT 1",
        f"CREATE TABLE default.sec_pw (a UInt8) ENGINE = Memory PARALLEL WITH "
        f"CHECK TABLE default.sec_p PARTITION tuple(file('{path}'))",
    ]
    for sql in attempts:
        resp = run(http, sql, WRITER)
        refused(resp, 497, 358, 164)
        assert secret not in resp.text
    # A table's own expressions stay a writer's: the engine's allow-list is for the engine.
    for sql in ("CREATE TABLE default.sec_ok (a UInt8, d DateTime) ENGINE = MergeTree "
                "PARTITION BY toYYYYMM(d) ORDER BY tuple() TTL d + INTERVAL 1 DAY",
                "CREATE TABLE default.sec_ok2 (a UInt8) ENGINE = ReplacingMergeTree(a) "
                "ORDER BY (a, a + 1)",
                "DROP TABLE default.sec_ok", "DROP TABLE default.sec_ok2"):
        resp = run(http, sql, WRITER)
        assert resp.status_code == 200, resp.text
    for name in ("additional_result_filter", "additional_table_filters"):
        resp = run(http, "SELECT * FROM system.one", WRITER, "body",
                   **{name: f"toUInt8(file('{path}')) = 1" if name.endswith("filter") else
                      f"{{'system.one': 'toUInt8(file(''{path}'')) = 1'}}"})
        refused(resp, 497, 164)
        assert secret not in resp.text
    http.post("/", auth=WRITER, content="SELECT dictGet('default.sec_x', 'a', toUInt64(1))")
    assert not pwned.exists()
    assert target.read_text() == "original\n"
    assert "default.sec_ttl" not in run(http, "SHOW TABLES FROM default", WRITER).text
    alive(http)


@pytest.mark.parametrize("auth", [None, WRITER, AGENCY], ids=["default", "writer", "agency"])
def test_a_column_list_in_a_string_names_columns_and_types_only(http: httpx.Client, canary,
                                                                 auth) -> None:
    """Table functions that take their columns as a string parse it when the query runs,
    ALIAS and DEFAULT expressions included, which the engine's tree shows as one Literal:
    file() read any file for every user, and dictGet() read a dictionary past the grants
    and the sites (found by an attacker's probe)."""
    path, secret = canary
    file_call = f"file(''{path}'')"
    for sql in (
        f"SELECT y FROM values('x UInt8, y String ALIAS {file_call}', 1)",
        f"SELECT y FROM values('x UInt8, y String ALIAS file(\\'{path}\\')', 1)",
        f"SELECT y FROM generateRandom('x UInt8, y String ALIAS {file_call}') LIMIT 1",
        f"SELECT y FROM generateRandom('x UInt8, y String MATERIALIZED {file_call}') LIMIT 1",
        f"SELECT * FROM format(JSONEachRow, 'x String, y String DEFAULT {file_call}', "
        + "'{\"x\":\"a\"}')",
        f"SELECT y FROM null('x UInt8, y String ALIAS {file_call}')",
        "SELECT y FROM values('x UInt64, y String ALIAS dictGet(''tagwerk.identity_links_dict'',"
        " ''value'', x)', 1)",
        f"SELECT y FROM values('x UInt8) ENGINE = Memory AS SELECT {file_call} AS (y', 1)",
    ):
        resp = run(http, sql, auth)
        refused(resp, 497, 164, 62, 36, 386)  # 386: no column list, so data of two types
        assert secret not in resp.text
    # A plain column list, and data that is no column list, stay.
    assert run(http, "SELECT y FROM values('x UInt8, y String', (1, 'a'))", auth).text == "a\n"
    assert run(http, "SELECT * FROM values('hello, world!')", auth).text == "hello, world!\n"
    alive(http)


@pytest.mark.parametrize("param", [
    "{p:String #! $$\n}", "{p:String -- $$\n}", "{p:String /* $$ */}", "{p$$:String}",
], ids=["hash-comment", "dash-comment", "block-comment", "dollar-name"])
def test_a_parameter_cannot_end_the_checks_of_the_words_after_it(http: httpx.Client, canary,
                                                                  tmp_path: Path, param) -> None:
    """formatQuery keeps a parameter's type as written, comments included: the policy's lexer
    read `#! $$` as the start of a string that swallowed every word after it, and a file
    was read through additional_result_filter, a URL called through a disk setting and a
    file written through ALTER ... INTO OUTFILE (found by an attacker's probe)."""
    path, secret = canary
    target = tmp_path / "out.txt"
    name = "p$$" if "p$$" in param else "p"
    for sql in (
        f"SELECT {param} AS v SETTINGS additional_result_filter = "
        f"'toUInt8(file(''{path}'')) = 1'",
        f"SELECT {param} AS v INTO OUTFILE '{target}'",
        f"SELECT {param} AS v, file('{path}') AS w",
    ):
        resp = run(http, sql, WRITER, **{f"param_{name}": "hello"})
        refused(resp, 497, 358, 164, 62, 36, 457)
        assert secret not in resp.text
    assert not target.exists()
    alive(http)


@pytest.mark.parametrize("auth", [None, WRITER, AGENCY], ids=["default", "writer", "agency"])
def test_a_column_list_in_a_string_cannot_hide_behind_a_comment_or_a_scalar(
        http: httpx.Client, canary, auth) -> None:
    """A third probe: a comment at the end of a column list ended the wrapper the policy
    parses it in (so it passed as data), and two scalar functions parse a column list too."""
    path, secret = canary
    default = f"x String DEFAULT toUInt8(file(''{path}''))"
    for sql in (f"SELECT * FROM generateRandom('{default} --') LIMIT 1",
                f"SELECT * FROM null('{default} #!')",
                f"SELECT * FROM null('{default} /*')",
                f"SELECT structureToProtobufSchema('{default}', 'M')",
                f"SELECT structureToCapnProtoSchema('{default}', 'M')"):
        resp = run(http, sql, auth)
        refused(resp, 497, 164, 62, 36)
        assert secret not in resp.text
    alive(http)


def test_settings_that_rewrite_or_route_a_query_are_refused(http: httpx.Client, canary
                                                             ) -> None:
    """select, filter, order and sort wrap every statement in SQL from their value (the
    interface's own formatQuery ran it before any check); implicit_table_at_top_level names
    a table, a path too; the AI functions call a host (a third probe)."""
    path, secret = canary
    settings = {"select": f"file('{path}')", "filter": f"toUInt8(file('{path}')) = 1",
                "order": f"file('{path}')", "sort": "x",
                "implicit_table_at_top_level": f"`{path}`",
                "schema_inference_hints": f"x String DEFAULT file('{path}')",
                "url_base": "http://127.0.0.1:9/", "s3_base": "http://127.0.0.1:9/",
                "default_view_definer": "nobody", "polyglot_dialect": "sqlite"}
    for name, value in settings.items():
        resp = run(http, "SELECT 1 AS x", WRITER, "body", **{name: value})
        refused(resp, 497, 164)
        assert secret not in resp.text
        quoted = value.replace("'", "\\'")
        resp = run(http, f"SELECT 1 AS x SETTINGS {name} = '{quoted}'", WRITER)
        refused(resp, 497, 164, 62)  # 62: sort is a keyword there
        assert secret not in resp.text
    for sql in ("SELECT aiGenerate('hello')", "SELECT AIClassify('x', ['a', 'b'])"):
        refused(run(http, sql, WRITER), 497, 164, 46, 36, 42)
    # A column named like one of them stays.
    assert run(http, "SELECT 1 AS filter ORDER BY filter", WRITER).text == "1\n"
    alive(http)


def test_large_parameters_are_not_kept_by_the_parse_cache(http: httpx.Client) -> None:
    """A 2 KB statement naming a 500 KB parameter 100 times grew the collector by 1.1 GB a
    request, kept by the parse cache (a third probe)."""
    refs = ", ".join(f"length({{p:String}}) AS c{i}" for i in range(100))
    value = "x" * 500_000
    # As clickhouse-connect sends a long parameter: a field of a multipart form.
    answers: list[httpx.Response] = []
    grew = peak_growth(lambda: answers.extend(
        http.post("/", params={"query": f"SELECT {refs}"},
                  files={"param_p": (None, value + str(i))}) for i in range(5)))
    assert grew < 400 << 20, grew
    for resp in answers:
        refused(resp, 229)  # 50 MB of copies in the tree: too large
    one = http.post("/", params={"query": "SELECT length({p:String})"},
                    files={"param_p": (None, value)})
    assert one.text == "500000\n"
    alive(http)


@pytest.mark.parametrize("auth", [None, WRITER, AGENCY], ids=["default", "writer", "agency"])
def test_a_column_list_must_be_a_plain_string_of_a_checkable_size(http: httpx.Client, canary,
                                                                  auth) -> None:
    """A fourth probe: a column list the engine works out when the query runs (concat(), a
    WITH alias) was never checked, and one just under the query size limit failed the
    check's own parse and passed for data; both read any file for every user."""
    path, secret = canary
    alias = f"a UInt8, b String ALIAS file(''{path}'')"
    for sql in (f"SELECT b FROM generateRandom(concat('a UInt8, b String ALIAS fi', "
                f"'le(''{path}'')')) LIMIT 1",
                f"WITH '{alias}' AS s SELECT b FROM generateRandom(s) LIMIT 1",
                f"SELECT b FROM generateRandom('a UInt8, ' || 'b String ALIAS {alias[18:]}') "
                "LIMIT 1"):
        resp = run(http, sql, auth)
        refused(resp, 497, 164, 62, 36)
        assert secret not in resp.text
    padded = f"a UInt8, b String ALIAS file('{path}')".ljust(262_124)
    resp = http.post("/", params={"query": "SELECT b FROM generateRandom({s:String}) LIMIT 1"},
                     files={"param_s": (None, padded)}, auth=auth)
    refused(resp, 497, 164, 62, 36)
    assert secret not in resp.text
    # A plain literal column list stays (generateRandom with its seed and lengths).
    resp = run(http, "SELECT a FROM generateRandom('a UInt8', 1, 10, 2) LIMIT 3", auth)
    assert resp.status_code == 200 and len(resp.text.splitlines()) == 3, resp.text
    alive(http)


def test_a_writer_cannot_lower_the_query_size_to_pass_a_column_list(http: httpx.Client,
                                                                    canary) -> None:
    path, secret = canary
    sql = f"SELECT b FROM generateRandom('a UInt8, b String ALIAS file(''{path}'')') LIMIT 1"
    resp = run(http, sql, WRITER, max_query_size="200")
    assert resp.status_code >= 400 and secret not in resp.text


def test_the_avro_schema_registry_is_fixed(http: httpx.Client) -> None:
    """A writer made the collector call any URL as its Avro schema registry (a probe)."""
    for name in ("format_avro_schema_registry_url", "output_format_avro_confluent_subject"):
        resp = run(http, "SELECT 1", WRITER, "body", **{name: "http://127.0.0.1:9/x"})
        refused(resp, 164, 452, 497)


def test_a_writers_text_settings_come_from_an_allow_list(http: httpx.Client) -> None:
    """Each probe found settings whose text values run SQL or name a table or a host: a
    writer's text settings (String, Map or URI in system.settings) now come from an
    allow-list, so that one the next engine version adds is refused until it is read."""
    for name, value in (("cluster_for_parallel_replicas", "default"),
                        ("promql_database", "tagwerk"),
                        ("s3queue_default_zookeeper_path", "/x")):
        refused(run(http, "SELECT 1", WRITER, "body", **{name: value}), 497)
        refused(run(http, f"SELECT 1 SETTINGS {name} = '{value}'", WRITER), 497)
    # Text settings that label or format stay, and so do numbers and flags.
    for name, value in (("log_comment", "nightly"), ("format_csv_delimiter", ";"),
                        ("insert_deduplication_token", "t1"), ("max_threads", "1"),
                        ("output_format_json_quote_64bit_integers", "0")):
        resp = run(http, "SELECT 1", WRITER, "body", **{name: value})
        assert resp.text == "1\n", (name, resp.text)


@pytest.mark.parametrize("auth", [None, WRITER], ids=["default", "writer"])
def test_a_time_zone_is_never_a_file(http: httpx.Client, tmp_path: Path, auth) -> None:
    """cctz opens a time zone named file:<path>: any user probed host files with it, and a
    pipe's path (/proc/self/fd/N) hung the engine's time zone lock past every time limit
    (a sixth probe)."""
    zone = tmp_path / "zone"
    zone.write_bytes(Path("/usr/share/zoneinfo/UTC").read_bytes())
    for sql in (f"SELECT toTimeZone(now(), 'file:{zone}')",
                f"SELECT CAST(now() AS DateTime('file:{zone}'))",
                f"SELECT toDateTime64(now(), 3, 'FILE:{zone}')"):
        refused(run(http, sql, auth), 497, 164)
    refused(run(http, "SELECT toTimeZone(now(), {z:String})", auth, param_z=f"file:{zone}"),
            497, 164)
    refused(run(http, "SELECT now()", auth, session_timezone=f"file:{zone}"), 497, 164)
    assert run(http, "SELECT timezone()", auth, session_timezone="Europe/Berlin").text == \
        "Europe/Berlin\n"
    alive(http)


@pytest.mark.parametrize("auth", [None, WRITER], ids=["default", "writer"])
def test_a_time_zone_or_type_built_by_the_query_is_refused(
    http: httpx.Client, tmp_path: Path, auth
) -> None:
    """A zone or type name the query computes (concat, base64Decode, a WITH alias, a scalar
    subquery) holds no 'file:' the text check could see, and the engine opened it as a file:
    a pipe's path hung its time zone lock, and with it every query and the storing of hits
    (stop 36's open item). Where the engine reads a zone or a type name, only a literal or a
    query parameter may stand (policy.ZONE_ARGUMENTS)."""
    zone = tmp_path / "zone"
    zone.write_bytes(Path("/usr/share/zoneinfo/UTC").read_bytes())
    built = f"concat('fi', 'le:{zone}')"
    encoded = base64.b64encode(f"file:{zone}".encode()).decode()
    typed = f"concat('DateTime(''fi', 'le:{zone}'')')"
    for sql in (f"SELECT toTimeZone(now(), {built})",
                f"SELECT toTimezone(now(), base64Decode('{encoded}'))",
                f"WITH {built} AS z SELECT toString(now(), z)",
                f"SELECT toHour(now(), (SELECT {built}))",
                f"SELECT now({built})",
                f"SELECT dateDiff('day', now(), now(), {built})",
                f"SELECT toStartOfInterval(now(), INTERVAL 1 HOUR, {built})",
                f"SELECT makeDateTime64(2020, 1, 1, 0, 0, 0, 0, 3, {built})",
                f"SELECT CAST(now(), {typed})",
                f"SELECT accurateCastOrNull(now(), {typed})",
                f"SELECT JSONExtract('{{\"a\": 1}}', 'a', {typed})",
                f"SELECT JSONExtract('{{\"a\": {{\"b\": 1}}}}', 'a', 'b', {typed})",
                f"SELECT defaultValueOfTypeName({typed})",
                f"SELECT DATE_DIFF('day', now(), now(), {built})"):
        refused(run(http, sql, auth), 497)
    # A fifth probe's (stop 37): a type name in a string is parsed once more, so escapes
    # undone twice, or a hex, binary or $$ string inside it, named a file; so did a
    # parameter's escaped value, a quoted subcolumn name, and functions whose zone follows
    # a UInt64, a UUID or a Dynamic (the table's first probe never called them so).
    hexed = f"file:{zone}".encode().hex()
    bits = "".join(f"{byte:08b}" for byte in f"file:{zone}".encode())
    for sql in (f"SELECT CAST(now(), 'DateTime(\\'fil\\\\x65:{zone}\\')')",
                f"SELECT JSONExtract('{{\"a\":0}}', 'a', 'DateTime(\\'fil\\\\x65:{zone}\\')')",
                f"SELECT * FROM values('t DateTime(\\'fil\\\\x65:{zone}\\')', 0)",
                f"SELECT * FROM generateRandom('t DateTime(\\'fil\\\\x65:{zone}\\')', 1) LIMIT 1",
                f"SELECT CAST(now(), 'DateTime(x\\'{hexed}\\')')",
                f"SELECT CAST(now(), 'DateTime(b\\'{bits}\\')')",
                f"SELECT * FROM values('t DateTime(x\\'{hexed}\\')', 0)",
                f"SELECT snowflakeIDToDateTime(toUInt64(0), 0, {built})",
                f"SELECT snowflakeIDToDateTime64(toUInt64(0), 0, {built})",
                "SELECT UUIDv7ToDateTime(toUUID('018f8d2a-0000-7000-8000-000000000000'), "
                f"{built})",
                f"SELECT dynamicElement(now()::Dynamic, {typed})",
                "SELECT d.`DateTime('fil\\\\x65:\\\\x2ftmp')` FROM (SELECT now()::Dynamic AS d)"):
        refused(run(http, sql, auth), 497, 164)
    refused(run(http, "SELECT toTimeZone(now(), {z:String})", auth,
                param_z=f"fil\\x65:{zone}"), 497, 164)
    # An eighth probe's (stop 37): a parameter's type is built while the engine parses the
    # statement, before any check (its zone loaded, a FIFO hung the lock); an aggregate
    # state of Dynamic or JSON carries its values' types, zones included, in its bytes.
    for zone_literal in (f"'file:{zone}'", f"x'{hexed}'"):
        refused(run(http, f"SELECT {{p:DateTime({zone_literal})}}", auth,
                    param_p="2020-01-01 00:00:00"), 497, 164)
    state = "01" + "12" + f"{len(f'file:{zone}'):02x}" + f"file:{zone}".encode().hex() + "00" * 4
    for kind in ("Dynamic", "JSON", "Nullable(Dynamic)"):
        refused(run(http, f"SELECT finalizeAggregation(CAST(unhex('{state}'), "
                    f"'AggregateFunction(any, {kind})'))", auth), 497, 164)
    many = ", ".join(f"toDateTime(0, 'Etc/GMT+{i % 12}{chr(97 + i % 26) * (i // 26)}')"
                     for i in range(200))
    refused(run(http, f"SELECT {many}", auth), 497)
    # A ninth probe's (stop 37): a Joda parser reads a zone's name from the parsed text
    # where its format has z; thousands of strings each read back from the engine.
    for sql in (f"SELECT parseDateTimeInJodaSyntax(concat('2020-01-01 00:00:00 ', {built}), "
                "'yyyy-MM-dd HH:mm:ss z')",
                f"SELECT parseDateTime64InJodaSyntaxOrNull(concat('2020-01-01 00:00:00 ', "
                f"{built}), concat('yyyy-MM-dd HH:mm:ss ', 'z'))",
                "SELECT parseDateTimeInJodaSyntax('2020-01-01 UTC', 'yyyy-MM-dd \\x7a')",
                "SELECT CAST(1, 'AggregateFunction(sequenceMatch("
                + ", ".join(f"\\'(?{i}){zone.parent.name}\\'" for i in range(300))
                + "), UInt8)')"):
        refused(run(http, sql, auth), 497)
    assert run(http, "SELECT count() FROM values('a String', "
               + ", ".join(f"'{i}'" for i in range(2000)) + ")", auth).text == "2000\n"
    assert run(http, "SELECT toString(parseDateTimeInJodaSyntax('2020-01-02', 'yyyy-MM-dd'))",
               auth).text == "2020-01-02 00:00:00\n"
    # A tenth probe's: a Dynamic or JSON subcolumn named by a type whose zone is written in
    # hex or in bits (200 with the file's zone, for default).
    for name in (f"DateTime(x'{hexed}')", f"DateTime(b'{bits}')"):
        refused(run(http, f"SELECT assumeNotNull(d.`{name}`) FROM (SELECT toDateTime(0)::Dynamic "
                    "AS d)", auth), 497)
        refused(run(http, f"SELECT assumeNotNull(j.a.:`{name}`) FROM values('j JSON', "
                    "'{\"a\":1}')", auth), 497)
    assert run(http, "SELECT d.`DateTime('UTC')` IS NULL FROM (SELECT 1::Dynamic AS d)",
               auth).text == "1\n"
    # An eleventh probe's: an Identifier parameter's value is a name, and a subcolumn's
    # type; and many column lists in one statement, each read back (10,000 engine calls).
    for query, value in (("SELECT assumeNotNull(d.{p:Identifier}) FROM (SELECT "
                          "toDateTime(0)::Dynamic AS d)", f"DateTime(x'{hexed}')"),
                         ("SELECT {p:Identifier} FROM (SELECT toDateTime(0)::Dynamic AS d)",
                          f"d.DateTime(x'{hexed}')")):
        refused(run(http, query, auth, param_p=value), 497)
    lists = " UNION ALL ".join(f"SELECT 1 FROM values('c{i} String, d{i} DateTime(''UTC'')', "
                               "('a', 0))" for i in range(300))
    refused(run(http, lists, auth), 497)
    assert run(http, "SELECT {p:Identifier} FROM (SELECT 7 AS x)", auth, param_p="x").text \
        == "7\n"
    # A twelfth probe's: the engine takes a type or a column list with a trailing ';',
    # which the check's wrapper did not parse, so such a string went unchecked.
    for sql in (f"SELECT CAST(0, 'DateTime(x''{hexed}'');')",
                f"SELECT toString(CAST(0, 'DateTime(x''{hexed}'') ; '))",
                f"SELECT toString(c) FROM values('c DateTime(x''{hexed}'');', 0)",
                f"SELECT d.`DateTime(x'{hexed}');` FROM (SELECT toDateTime(0)::Dynamic AS d)",
                "SELECT d.`" + "a." * 3000 + "DateTime(1)` FROM (SELECT now()::Dynamic AS d)"):
        refused(run(http, sql, auth), 497)
    refused(run(http, "SELECT toString(CAST(0, {p:String}))", auth,
                param_p=f"DateTime(x'{hexed}');"), 497)
    # A thirteenth probe's: untuple(), * and COLUMNS() stand for several arguments, which
    # the tree shows as one, so no zone position was found (toDateTime(untuple(tuple(0,
    # z))) loaded the file for every user, and a pipe's path hung the zone lock).
    joda = f"untuple(tuple(concat('1970 ', {built}), concat('yyyy ', 'z')))"
    for sql in (f"SELECT toDateTime(untuple(tuple(0, {built})))",
                f"WITH tuple(0, {built}) AS t SELECT toDateTime(untuple(t))",
                f"SELECT accurateCast(untuple(tuple(0, {typed})))",
                f"SELECT parseDateTimeInJodaSyntax({joda})",
                f"SELECT toDateTime(*) FROM (SELECT 0 AS a, {built} AS b)",
                f"SELECT toDateTime(s.*) FROM (SELECT 0 AS a, {built} AS b) AS s",
                f"SELECT toDateTime(COLUMNS('a|b')) FROM (SELECT 0 AS a, {built} AS b)",
                f"SELECT toDateTime(COLUMNS(a, b)) FROM (SELECT 0 AS a, {built} AS b)",
                # A fourteenth probe's: untuple() behind an alias spreads where it is used.
                f"WITH untuple(tuple(0, {built})) AS u SELECT toDateTime(u)",
                f"SELECT untuple(tuple(0, {built})) AS u, toDateTime(u)"):
        refused(run(http, sql, auth), 497)
    assert run(http, "SELECT untuple(tuple(1, 'a')), count(*)", auth).text == "1\ta\t1\n"
    # What data teams write stays as it was: zones and types as literals or parameters,
    # columns and expressions wherever a date or a number goes.
    for sql, expected in (
        ("SELECT toString(toTimeZone(toDateTime('2026-01-01 12:00:00', 'UTC'), "
         "'Europe/Berlin'))", "2026-01-01 13:00:00\n"),
        ("SELECT dateDiff('day', toDate('2026-01-01'), toDate('2026-01-01') + number) "
         "FROM numbers(3)", "0\n1\n2\n"),
        ("SELECT toString(toStartOfInterval(toDateTime('2026-01-01 12:34:00', 'UTC') "
         "+ INTERVAL 1 DAY, INTERVAL 1 HOUR))", "2026-01-02 12:00:00\n"),
        ("SELECT formatDateTime(toDate('2026-01-01'), '%Y')", "2026\n"),
        ("SELECT toTypeName(CAST(1, 'UInt8')), JSONExtract('{\"a\": 7}', 'a', 'UInt8')",
         "UInt8\t7\n"),
        # Numbers among a type's arguments (the tree prints UInt64_3, not SQL).
        ("SELECT toTypeName(CAST(0, 'DateTime64(3, \\'UTC\\')')), toString(d) "
         "FROM values('d DateTime64(3, \\'UTC\\')', 0)",
         "DateTime64(3, \\'UTC\\')\t1970-01-01 00:00:00.000\n"),
    ):
        assert run(http, sql, auth).text == expected, sql
    resp = run(http, "SELECT toString(toTimeZone(toDateTime('2026-01-01 12:00:00', 'UTC'), "
               "{z:String}))", auth, param_z="Asia/Tokyo")
    assert resp.text == "2026-01-01 21:00:00\n"
    alive(http)


@pytest.mark.parametrize("auth", [None, WRITER], ids=["default", "writer"])
def test_settings_that_name_files_are_fixed(http: httpx.Client, canary, auth) -> None:
    path, secret = canary
    for name in ("format_template_row", "format_template_resultset", "format_schema",
                 "output_format_schema", "input_format_record_errors_file_path"):
        for how in ("url", "body"):
            resp = run(http, "SELECT 1 AS x FORMAT Template", auth, how, **{name: str(path)})
            refused(resp, 164, 452)
            assert secret not in resp.text
        resp = run(http, f"SELECT 1 AS x SETTINGS {name} = '{path}' FORMAT Template", auth)
        refused(resp, 164, 452)
        assert secret not in resp.text


def test_the_sql_dialect_is_clickhouse_s_own(http: httpx.Client) -> None:
    # Statements are checked as ClickHouse's dialect parses them: no other may run them.
    for auth in (None, WRITER):
        for settings in ({"dialect": "kusto"}, {"dialect": "prql"},
                         {"allow_experimental_kusto_dialect": "1"}):
            refused(run(http, "SELECT 1", auth, **settings), 164, 452)
        refused(run(http, "SELECT 1 SETTINGS dialect = 'kusto'", auth), 164, 452)


def test_readonly_limits_cannot_be_raised(http: httpx.Client) -> None:
    for name, value in (("max_memory_usage", "0"), ("max_execution_time", "0"),
                        ("max_memory_usage", str(10 << 30)), ("max_threads", "64"),
                        ("max_result_bytes", "0"), ("allow_ddl", "1"), ("readonly", "0"),
                        ("log_comment", "x"), ("additional_table_filters", "{}"),
                        ("allow_introspection_functions", "1"), ("MAX_THREADS", "64")):
        for how in ("url", "body"):
            resp = run(http, "SELECT getSetting('max_threads')", None, how, **{name: value})
            if name == "readonly":  # ignored, as before: readonly is ours to set
                assert resp.text == "2\n"
                continue
            refused(resp, 164, 115)
        if name not in ("allow_ddl", "allow_introspection_functions"):  # these: no change
            resp = run(http, f"SELECT 1 SETTINGS {name} = '{value}'")
            refused(resp, 164, 115)
    caps = "SELECT getSetting('max_memory_usage'), getSetting('max_execution_time'), " \
        "getSetting('max_threads'), getSetting('readonly')"
    assert run(http, caps).text == f"{256 << 20}\t20\t2\t1\n"
    # Lowering a limit is fine.
    assert run(http, caps, max_execution_time="5").text == f"{256 << 20}\t5\t2\t1\n"


def test_a_hostile_query_hits_the_memory_limit(http: httpx.Client) -> None:
    for sql in ("SELECT length(groupArray(number)) FROM numbers(2000000000)",
                "SELECT groupUniqArray(toString(number)) FROM numbers(100000000)"):
        resp = run(http, sql)
        refused(resp, 241)
        assert "MEMORY_LIMIT_EXCEEDED" in resp.text
    alive(http)


@pytest.mark.parametrize("call", [
    "editDistance(repeat('a', 65536), repeat('b', 65536 + number * 0))",
    "levenshteinDistanceUTF8(repeat('a', 65536), repeat('b', 65536 + number * 0))",
    "damerauLevenshteinDistance(repeat('a', 65536), repeat('b', 65536 + number * 0))",
    "arrayLevenshteinDistance(range(65536), range(1, 65537 + number * 0))",
    "arraySimilarity(range(9), range(9 + number * 0), [1.], [1.])",
    "arrayFold((acc, x) -> acc + x, range(65536 + number * 0), 0::UInt64)",
    "hasAny(range(100000 + number * 0), range(100000, 200000))",  # a fourteenth probe's
    "hasAll(range(100000 + number * 0), range(100000, 200000))",
])
def test_a_reader_cannot_run_seconds_on_one_row(http: httpx.Client, call: str) -> None:
    """The engine checks the time limit between blocks only, and a cancelled query runs on
    to its block's end: one row of these took seconds to minutes, 65,536 rows a block hours,
    past max_execution_time, a KILL and the client's leaving, with a reader's slot taken (a
    thirteenth probe). A reader gets none of them; a read-write user (an operator) does."""
    for auth in (None, AGENCY):
        refused(run(http, f"SELECT {call} FROM numbers(3)", auth), 497)
    assert run(http, "SELECT editDistance('kitten', 'sitting')", WRITER).text == "3\n"
    alive(http)


def test_the_service_tables_are_not_readable(http: httpx.Client, store) -> None:
    key_hash = store.rows("SELECT * FROM tagwerk.sites LIMIT 1")
    secrets_seen = [str(v) for row in key_hash for v in row.values() if len(str(v)) >= 16]
    attempts = [
        "SELECT * FROM tagwerk.sites",
        "SELECT * FROM `tagwerk`.`sites`",
        'SELECT * FROM "tagwerk"."sites"',
        "SELECT * FROM TAGWERK_is_not.sites",  # unknown database: the engine says so
        "SELECT * FROM tagwerk.events WHERE site_id IN tagwerk.sites",
        "SELECT * FROM tagwerk.events WHERE site_id IN (SELECT site_id FROM tagwerk.sites)",
        "SELECT * FROM tagwerk.events e JOIN tagwerk.sites s ON e.site_id = s.site_id",
        "WITH s AS (SELECT * FROM tagwerk.sites) SELECT * FROM s",
        "SELECT 1 UNION ALL SELECT count() FROM tagwerk.container_drafts",
        "SELECT * FROM view(SELECT * FROM tagwerk.sites)",
        "SELECT * FROM merge('tagwerk', 'sites')",
        "SELECT * FROM merge(REGEXP('tag'), '.*')",
        "SELECT * FROM mergeTreeIndex('tagwerk', 'sites')",
        "SELECT joinGet('tagwerk.sites', 'name', 'demo')",
        "SELECT dictGet('tagwerk.sites', 'name', 1)",
        "SELECT hasColumnInTable('tagwerk', 'sites', 'read_key_hash')",
        "SHOW CREATE TABLE tagwerk.sites",
        "SELECT * FROM tagwerk.schema_migrations",
        "SELECT * FROM tagwerk.container_previews",
        "SELECT * FROM system.parts",
        "SELECT * FROM system.query_log",
        f"SELECT * FROM {HIDERS[0].format('x')} tagwerk.sites",
    ]
    for sql in attempts:
        for how, params in (("body", {}), ("url", {}), ("body", {"database": "tagwerk"})):
            resp = run(http, sql, None, how, **params)
            refused(resp, 497, 164, 60, 81, 62, 36, 46)
            assert not any(s in resp.text for s in secrets_seen)
    for sql in ("SELECT * FROM sites", "SELECT * FROM events WHERE site_id IN sites"):
        refused(run(http, sql, database="tagwerk"), 497)
        resp = http.post("/", content=sql, headers={"X-ClickHouse-Database": "tagwerk"})
        refused(resp, 497)
    # system.tables lists only what the user may read.
    listed = run(http, "SELECT name FROM system.tables WHERE database = 'tagwerk'").text.split()
    assert sorted(listed) == sorted(["consent_log", "events",
                                     *(name.split(".")[1] for name in AGGREGATE_TABLES),
                                     *(name.split(".")[1] for name in AGGREGATE_VIEWS)])
    assert run(http, "SELECT count() > 0 FROM tagwerk.events").text == "1\n"
    assert run(http, "SELECT count() >= 0 FROM events", database="tagwerk").text == "1\n"


@pytest.mark.parametrize("auth", [None, AGENCY], ids=["default", "agency"])
def test_the_identity_links_in_memory_are_not_readable(http: httpx.Client, store, auth) -> None:
    """The copy of every site's identity links (migration 0032) and consent decisions
    (0052) is no read-only user's: not as a table, not through dictGet or dictionary(), not
    by its source query."""
    for name in ("identity_links_dict", "identity_held_dict", "consent_decisions_dict"):
        for sql in (f"SELECT * FROM tagwerk.{name}",
                    f"SELECT * FROM dictionary('tagwerk.{name}')",
                    f"SELECT dictGet('tagwerk.{name}', 'value', toUInt64(1))",
                    f"SELECT dictGetOrDefault('tagwerk.{name}', 'value', toUInt64(1), '')",
                    f"SELECT * FROM tagwerk.events WHERE site_id IN (SELECT value FROM "
                    f"tagwerk.{name})",
                    f"SHOW CREATE DICTIONARY tagwerk.{name}",
                    "SELECT * FROM tagwerk.identity_links_by_identifier",
                    f"SYSTEM RELOAD DICTIONARY tagwerk.{name}"):
            refused(run(http, sql, auth), 497, 164, 60, 81, 62, 36, 46)
        # (They exist: the refusals above are not the engine's "unknown table".)
        assert run(http, f"SELECT count() >= 0 FROM tagwerk.{name}", WRITER).text == "1\n"
    alive(http)


def test_line_breaks_in_identifiers_cannot_hide_a_node(http: httpx.Client, canary) -> None:
    path, secret = canary
    # A fake line that breaks the declared child counts: the tree is not trusted.
    for sql in ("SELECT 1 AS `x\n Literal 'y'`",
                "SELECT `a\nTableIdentifier b` FROM tagwerk.events",
                "SELECT 1 AS `q) (children 2`"):
        refused(run(http, sql), 36, 47)
    # A fake that keeps the counts can only add a node, never hide a real one: the real
    # file() beside it is still refused, and alone it is just an alias.
    fake = "`a (children 1)\n     Function file`"
    resp = run(http, f"SELECT file('{path}') AS {fake}")
    refused(resp, 164, 36)
    assert secret not in resp.text
    assert run(http, f"SELECT 1 AS {fake}").text == "1\n"


def test_a_site_scoped_user_sees_its_sites_only(http: httpx.Client) -> None:
    def sites(sql: str, **params) -> list[str]:
        resp = run(http, sql, AGENCY, **params)
        assert resp.status_code == 200, resp.text
        return sorted(set(resp.text.split()))

    assert sites("SELECT site_id FROM tagwerk.events WHERE event = 'sec_probe'") == ["sec-a"]
    assert sites("SELECT site_id FROM events WHERE event = 'sec_probe'",
                 database="tagwerk") == ["sec-a"]
    assert sites("SELECT site_id FROM (SELECT * FROM tagwerk.events) WHERE event = "
                 "'sec_probe'") == ["sec-a"]
    assert sites("SELECT count() FROM tagwerk.events WHERE site_id = 'sec-b'") == ["0"]
    refused(run(http, "SELECT * FROM tagwerk.consent_log", AGENCY), 497)
    refused(run(http, "SELECT * FROM tagwerk.events", AGENCY,
                additional_table_filters="{}"), 164)
    # The unscoped default user sees both sites.
    resp = run(http, "SELECT DISTINCT site_id FROM tagwerk.events WHERE event = 'sec_probe' "
               "ORDER BY site_id")
    assert resp.text == "sec-a\nsec-b\n"


def test_a_site_scoped_user_reads_the_aggregate_views_of_its_sites_only(
        http: httpx.Client) -> None:
    """page_entries (a view over session_entries) is among the data a read-only user reads,
    and a site-scoped one sees its sites' entries only: the view reads session_entries
    under that table's row policy."""
    def paths(auth) -> list[str]:
        resp = run(http, "SELECT path FROM tagwerk.page_entries WHERE path LIKE '/sec-%' "
                   "ORDER BY path", auth)
        assert resp.status_code == 200, resp.text
        return resp.text.split()

    assert paths(None) == ["/sec-a-entry", "/sec-b-entry"]
    assert paths(ANALYST) == ["/sec-a-entry"]
    resp = run(http, "SELECT DISTINCT site_id FROM tagwerk.session_entries", ANALYST)
    assert resp.text.split() == ["sec-a"], resp.text
    refused(run(http, "SELECT * FROM tagwerk.page_entries", AGENCY), 497)  # not its table


def slow_query(url: str, auth, sql: str, out: list) -> threading.Thread:
    def go() -> None:
        out.append(httpx.post(url, content=sql, auth=auth, timeout=60,
                              params={"max_block_size": "1"}))

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_other_users_queries_are_invisible_and_unkillable(url: str, http: httpx.Client) -> None:
    out: list[httpx.Response] = []
    thread = slow_query(url, WRITER, "SELECT sleepEachRow(0.2) FROM numbers(10)", out)
    try:
        wait_for(lambda: run(http, "SELECT count() FROM system.processes WHERE query LIKE "
                                   "'%sleepEachRow(0.2)%' AND query NOT LIKE "
                                   "'%system.processes%'", WRITER).text != "0\n")
        mine = run(http, "SELECT count() FROM system.processes").text
        assert mine == "1\n"  # this query alone
        for sql in ("KILL QUERY WHERE 1 SYNC", "KILL QUERY WHERE user = 'default' SYNC",
                    "SHOW PROCESSLIST"):
            resp = run(http, sql)
            assert resp.status_code == 200, resp.text
            assert "sleepEachRow" not in resp.text
    finally:
        thread.join()
    assert out[0].status_code == 200, out[0].text  # it ran to its end


def test_a_site_scoped_user_reads_no_process_list_but_kills_its_queries(
    url: str, http: httpx.Client
) -> None:
    """system.processes counts what a running query read: every site's rows of the parts
    read, as the summary did (the row policy filters after reading)."""
    for sql in ("SELECT read_rows, total_rows_approx FROM system.processes",
                "SHOW PROCESSLIST"):
        refused(run(http, sql, AGENCY), 497)
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(httpx.post(
        url, content="SELECT count() FROM numbers_mt(1000000000000)", auth=AGENCY, timeout=60)))
    thread.start()
    try:
        # (its own query: any other, a view's refresh, counted as it before it started)
        wait_for(lambda: out or run(http, "SELECT count() FROM system.processes WHERE query "
                                    "LIKE '%numbers_mt(1000000000000)%' AND query NOT LIKE "
                                    "'%system.processes%'", WRITER).text != "0\n")
        assert not out, out[0].text
        resp = run(http, "KILL QUERY WHERE 1 SYNC", AGENCY)
        assert resp.status_code == 200, resp.text
    finally:
        thread.join(30)
    assert not thread.is_alive()
    assert out[0].status_code != 200 and "QUERY_WAS_CANCELLED" in out[0].text, out[0].text


def running(store, marker: str) -> bool:
    """Whether a query with ``marker`` in its text runs (this probe itself excluded)."""
    return bool(store.rows(
        "SELECT 1 FROM system.processes WHERE query LIKE {m:String} AND query NOT LIKE "
        "'%system.processes%'", {"m": f"%{marker}%"}))


def test_a_query_is_cancelled_when_its_client_goes_away(url: str, store) -> None:
    for user in (None, WRITER):
        marker = f"sec_cancel_{uuid.uuid4().hex[:8]}"
        with send_raw(url, long_query(marker), user):
            wait_for(lambda: running(store, marker))  # noqa: B023 (used at once)
        started = time.monotonic()
        wait_for(lambda: not running(store, marker), timeout=10)  # noqa: B023
        assert time.monotonic() - started < 10


def test_header_values_from_the_request_cannot_break_the_answer(http: httpx.Client) -> None:
    for query_id in ("a\r\nX-Injected: 1", "a\nb", "a\x00b", "x" * 1000):
        resp = http.post("/", params={"query_id": query_id}, content="SELECT 1")
        refused(resp, 36)
        assert "x-injected" not in resp.headers
    resp = http.post("/", params={"session_timezone": "UTC\r\nX-Injected: 1"},
                     content="SELECT 1")
    assert resp.status_code >= 400 and "x-injected" not in resp.headers
    alive(http)


def test_ingestion_keeps_acknowledging_under_hostile_queries(tmp_path: Path) -> None:
    """``tagwerk serve`` with a 2 GiB limit: memory bombs from the read-only user are refused
    by the engine's limits while pixels keep being answered and land; the process lives."""
    from tests.servers import Server

    server = Server(tmp_path / "var", "--memory-limit", "2G").start()
    try:
        sql_url = f"http://127.0.0.1:{server.sql_port}/"
        answers: list[httpx.Response] = []

        def bomb() -> None:
            answers.append(httpx.post(sql_url, timeout=60, content=(
                "SELECT length(groupArray(number)) FROM numbers(2000000000)")))

        threads = [threading.Thread(target=bomb) for _ in range(3)]
        for thread in threads:
            thread.start()
        acknowledged = 0
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while any(thread.is_alive() for thread in threads):
                resp = client.get("/p.gif", params={"site": "demo", "event": "sec_hostile"})
                assert resp.status_code == 200
                acknowledged += 1
        for thread in threads:
            thread.join()
        assert acknowledged > 0
        for resp in answers:
            assert resp.status_code >= 400
            assert resp.headers["X-ClickHouse-Exception-Code"] in ("241", "202"), resp.text
        assert wait_for(lambda: server.sql(
            "SELECT count() FROM tagwerk.events WHERE event = 'sec_hostile'"
        ) == f"{acknowledged}\n", timeout=15)
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()


def test_control_characters_in_literals_are_data(http: httpx.Client) -> None:
    # Only a line break in a name could fake a line of the tree; in a literal it is escaped.
    resp = run(http, "SELECT length('a\\nb\\x01\\x1c\\t'), splitByChar('\\n', 'x\\ny')")
    assert resp.text == "6\t['x','y']\n", resp.text


def test_deep_queries_and_introspection_are_refused_cleanly(http: httpx.Client) -> None:
    deep = "SELECT " + "abs(" * 600 + "1" + ")" * 600
    resp = run(http, deep)
    assert 400 <= resp.status_code < 500 or resp.headers.get("X-ClickHouse-Exception-Code") in (
        "167", "168"), resp.text  # the engine's AST depth limits, not a Python error
    assert "recursion" not in resp.text
    refused(run(http, "SELECT addressToLine(toUInt64(1))"), 446)
    refused(run(http, "SELECT 1", output_format_pretty_max_rows="100000000"), 164)
    alive(http)


def test_a_site_scoped_user_learns_nothing_of_other_sites(http: httpx.Client) -> None:
    """Errors and exceptions raised per row are oracles: the site filter must come first
    (a row policy in the engine; additional_table_filters ran after an explicit PREWHERE)."""
    leak = "concat(site_id, '|', event)"
    for clause in ("PREWHERE", "WHERE"):
        for cond in (f"toUInt8(if(site_id = 'sec-a', '0', {leak})) = 0",
                     "throwIf(site_id = 'sec-b', 'leak-b') = 0",
                     "throwIf(site_id != 'sec-a', 'leak-other') = 0"):
            sql = f"SELECT count() FROM tagwerk.events {clause} event = 'sec_probe' AND {cond}"
            resp = run(http, sql, AGENCY)
            assert "sec-b" not in resp.text and "leak" not in resp.text, resp.text
            assert resp.text == "1\n", resp.text
    for sql in ("SELECT throwIf(site_id = 'sec-b', 'leak-b') FROM tagwerk.events",
                "SELECT * FROM (SELECT * FROM tagwerk.events) WHERE throwIf(site_id = 'sec-b')",
                "SELECT count() FROM tagwerk.events AS e ARRAY JOIN [1] AS x "
                "PREWHERE throwIf(site_id = 'sec-b', 'leak-b') = 0"):
        assert "leak" not in run(http, sql, AGENCY).text
    # What counts every site's rows is not for a site-scoped user.
    for sql in ("EXPLAIN ESTIMATE SELECT * FROM tagwerk.events",
                "SELECT total_rows FROM system.tables WHERE name = 'events'",
                "SELECT * FROM system.columns", "SELECT * FROM information_schema.tables",
                "SELECT * FROM system.parts"):
        refused(run(http, sql, AGENCY), 164, 497)
    # SHOW TABLES reads system.tables for the names alone: those of its own tables.
    assert run(http, "SHOW TABLES FROM tagwerk", AGENCY).text == "events\n"
    # A thirteenth probe's: virtual columns place the user's rows among every site's
    # (_part_offset: how many rows of other sites come first in a part; _part: the inserts).
    for sql in ("SELECT _part, min(_part_offset) FROM tagwerk.events GROUP BY _part",
                "SELECT max(_block_offset) FROM tagwerk.events",
                "SELECT count() FROM tagwerk.events WHERE _part_starting_offset > 0",
                "SELECT e._part_index FROM tagwerk.events AS e",
                "SELECT tagwerk.events._part_data_version FROM tagwerk.events"):
        refused(run(http, sql, AGENCY), 497)
    refused(run(http, "SELECT max({c:Identifier}) FROM tagwerk.events", AGENCY,
                param_c="_part_offset"), 497)
    assert run(http, "SELECT count() > 0 FROM tagwerk.events", AGENCY).text == "1\n"
    # A fourteenth probe's: what the engine read counts every site's rows of the parts it
    # read (the row policy filters after reading): in the summary, and in the errors of a
    # read limit the user lowered.
    resp = run(http, "SELECT count() FROM tagwerk.events", AGENCY)
    summary = orjson.loads(resp.headers["x-clickhouse-summary"])
    assert summary["read_rows"] == summary["total_rows_to_read"] == summary["result_rows"]
    for setting in ("max_rows_to_read", "max_bytes_to_read", "max_rows_to_read_leaf",
                    "min_execution_speed"):
        refused(run(http, "SELECT count() FROM tagwerk.events", AGENCY, **{setting: "1"}),
                164)
    assert run(http, "SELECT 1", None, max_rows_to_read="10").text == "1\n"


def test_metadata_the_engine_reads_for_its_own_statements_is_hidden(http: httpx.Client) -> None:
    setup = ("CREATE TABLE default.sec_m (id UInt64, secret String) ENGINE = MergeTree "
             "ORDER BY id", "INSERT INTO default.sec_m VALUES (1, 'x')",
             "ALTER TABLE default.sec_m UPDATE secret = 'mutation-secret' WHERE 1")
    for sql in setup:
        assert run(http, sql, WRITER).status_code == 200
    try:
        for auth in (None, AGENCY):
            for sql in ("KILL MUTATION WHERE 1 TEST", "SHOW MERGES", "SHOW DICTIONARIES",
                        "SHOW CLUSTERS"):
                resp = run(http, sql, auth)
                assert resp.status_code == 200, resp.text
                assert "sec_m" not in resp.text and "mutation-secret" not in resp.text
            refused(run(http, "SELECT * FROM system.mutations", auth), 497)
    finally:
        run(http, "DROP TABLE default.sec_m", WRITER)


def test_table_names_that_are_paths_never_read_files(http: httpx.Client, canary) -> None:
    path, secret = canary
    for auth in (None, WRITER, AGENCY):
        for sql in (f"SELECT * FROM default.`{path}`", f"SELECT * FROM `{path}`",
                    f"SELECT 1 WHERE 'x' IN default.`{path}`",
                    f"SELECT * FROM default.`..{path}`"):
            resp = run(http, sql, auth)
            refused(resp, 497, 164)
            assert secret not in resp.text


def test_a_shows_filter_reads_no_file_nor_other_tables(http: httpx.Client, canary) -> None:
    """The engine's tree of a SHOW statement leaves out its WHERE and LIMIT, where any
    expression may stand: file() read any file for every user, read-only ones included,
    and system.tables' columns counted every site's rows (found by an attacker's probe)."""
    path, secret = canary
    for auth in (None, WRITER, AGENCY):
        for sql in (f"SHOW TABLES FROM tagwerk WHERE toUInt8(file('{path}')) = 1",
                    f"SHOW TABLES FROM tagwerk WHERE name = file('{path}')",
                    f"SHOW COLUMNS FROM events FROM tagwerk WHERE toUInt8(file('{path}')) = 1",
                    f"SHOW DICTIONARIES WHERE toUInt8(file('{path}')) = 1",
                    f"SHOW TABLES FROM tagwerk LIMIT length(file('{path}'))",
                    "SHOW TABLES FROM tagwerk WHERE total_rows >= 1",
                    "SHOW TABLES FROM tagwerk WHERE name IN tagwerk.sites"):
            resp = run(http, sql, auth)
            refused(resp, 497, 164)
            assert secret not in resp.text
    # The forms without an expression stay.
    assert run(http, "SHOW TABLES FROM tagwerk LIKE 'ev%'", AGENCY).text == "events\n"
    alive(http)


def test_a_result_is_bounded_once_formatted(http: httpx.Client) -> None:
    # 2 MB of control characters: 2 MB in the engine's blocks, 12 MB as escaped JSON.
    resp = run(http, "SELECT repeat('\\x01', 1000000) AS s FROM numbers(2) FORMAT JSON")
    refused(resp, 396)
    assert "once formatted" in resp.text
    assert run(http, "SELECT repeat('a', 1000) FORMAT JSON").status_code == 200
    # A writer is trusted with large results.
    resp = run(http, "SELECT repeat('\\x01', 1000000) FROM numbers(2) FORMAT JSON", WRITER)
    assert resp.status_code == 200 and len(resp.content) > 8 << 20


def peak_growth(do: Callable[[], None]) -> int:
    """By how many bytes this process's peak resident memory (the engine's included) grew
    while ``do`` ran."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from now
    before = _status_kb("VmRSS")
    do()
    return (_status_kb("VmHWM") - before) << 10


def _status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith(f"{field}:"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def roomy(store) -> Iterator[str]:
    """The SQL interface with a gigabyte per query, as a collector with 4 GB gives: the
    module's 256 MB stops these queries in the engine, before their result grows."""
    limits = QueryLimits(max_memory_usage=1 << 30, max_execution_time=20,
                         max_result_bytes=8 << 20)
    with serve(build_sql_app(store, USERS, loopback_only=True, limits=limits)) as base:
        yield base


@pytest.mark.parametrize("sql", [
    # One constant: counted once by the engine's max_result_bytes, 1.5 GB as text.
    "SELECT repeat('x', 1000) FROM numbers(1500000)",
    # A long name repeated on every row: 1.5 GB as JSON lines from 150,000 rows of 1 byte.
    f"SELECT 1 AS `{'n' * 10_000}` FROM numbers(150000) FORMAT JSONEachRow",
], ids=["constant", "long-name"])
def test_a_result_is_bounded_in_memory_while_it_is_formatted(roomy: str, sql) -> None:
    """A read-only user's result, as it is formatted, counts toward the query's memory
    limit, and at most max_result_bytes of it (8 MB here) is held: chDB's query() formatted
    all of it into a buffer of its own, outside that limit, before any check could look
    (3.7 GB for the first query here, 4 GB in an attacker's probe)."""
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=roomy, timeout=60) as http:
        grew = peak_growth(lambda: answers.append(run(http, sql)))
        # The result's limit, or the query's memory limit while one block is formatted.
        refused(answers[0], 396, 241)
        assert grew < (1 << 30) + (200 << 20), grew
        alive(http)


@pytest.mark.parametrize("sql", [
    # (A read-only user's SETTINGS may only repeat the values in force.)
    "SELECT number FROM numbers(3) WHERE number > {n:UInt8} SETTINGS max_threads = 2 "
    "FORMAT CSVWithNames SETTINGS max_threads = 2",
    "SELECT * FROM (WITH 2 AS two SELECT two UNION ALL SELECT 3) ORDER BY 1 "
    "FORMAT JSONCompactEachRow",  # (a UNION's parts come in any order)
    "(SELECT 'a FORMAT b') FORMAT TSV",
    "SHOW TABLES FROM tagwerk LIKE 'ev%' FORMAT JSONEachRow",
    "SHOW COLUMNS FROM events FROM tagwerk LIKE 'site%'",
    "SHOW CREATE TABLE tagwerk.events FORMAT TSVRaw",
    "DESCRIBE TABLE tagwerk.events FORMAT TSV SETTINGS max_threads = 2",
    "EXISTS TABLE tagwerk.events",
    "EXPLAIN SELECT 1 FORMAT TSV",
    "SHOW PROCESSLIST",
    "KILL QUERY WHERE query_id = 'nobody' SYNC",
])
def test_every_reading_statement_answers_through_the_bound(http: httpx.Client, sql) -> None:
    """The bounded result (collector/sqlhttp/results.py) puts its INTO OUTFILE clause where
    each statement's grammar wants it, before its own FORMAT and the SETTINGS after it."""
    resp = run(http, sql, param_n="0")
    assert resp.status_code == 200, resp.text
    if not sql.startswith(("SHOW PROCESSLIST", "KILL", "SHOW TABLES")):  # the user's own
        assert resp.text == run(http, sql, WRITER, param_n="0").text
    if sql.startswith("SHOW TABLES"):
        assert resp.text == '{"name":"events"}\n'


def send_raw(url: str, body: bytes, user: tuple[str, str] | None = None,
             query_id: str = "") -> socket.socket:
    """A POST of ``body`` on a socket of its own, left open: closing it hangs up."""
    host, port = url.removeprefix("http://").split(":")
    auth = b"" if user is None else b"Authorization: Basic %s\r\n" % base64.b64encode(
        ":".join(user).encode())
    if query_id:
        auth += b"X-ClickHouse-Query-Id: %s\r\n" % query_id.encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
                 % (auth, len(body), body))
    return sock


def long_query(marker: str) -> bytes:
    """Minutes of work, were it not cancelled (the time limit here is 20 s)."""
    return f"SELECT sum(cityHash64(number)), '{marker}' FROM numbers(1e12)".encode()


def test_one_user_cannot_take_every_reader_slot(url: str, http: httpx.Client, store) -> None:
    marker = f"sec_slots_{uuid.uuid4().hex[:8]}"
    socks = [send_raw(url, long_query(marker)) for _ in range(2)]
    try:
        wait_for(lambda: len(store.rows(
            "SELECT 1 FROM system.processes WHERE query LIKE {m:String} AND query NOT LIKE "
            "'%system.processes%'", {"m": f"%{marker}%"})) == 2)
        resp = run(http, "SELECT 1")
        refused(resp, 202)
        assert "for user default" in resp.text
        assert run(http, "SELECT 1", AGENCY).text == "1\n"
    finally:
        for sock in socks:
            sock.close()  # the client goes away: its query is cancelled
    wait_for(lambda: not running(store, marker), timeout=10)


@pytest.mark.parametrize("spec, message", [
    ({"password": "p", "sites": ["Shop A"]}, "not a site id"),
    ({"password": "p", "sites": ["a,b"]}, "not a site id"),
    ({"password": "p", "sites": []}, "must be a list"),
    ({"password": "p", "sites": ["a"], "tables": ["sites"]}, "tables must be among"),
    ({"password": "p", "sites": ["a"], "tables": ["tagwerk.*"]}, "tables must be among"),
    ({"password": "p", "sites": ["a"], "readonly": False}, "read-only users only"),
    ({"password": 7}, "needs a password"),
    ({"password": "p", "tables": "events"}, "must be a list"),
])
def test_the_users_file_refuses_scopes_the_engine_cannot_enforce(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_users(json.dumps({"u": spec}))


def test_every_function_of_the_engine_was_reviewed(store) -> None:
    """HOST_ROUTES lists what to refuse, so a function it was not written against would
    pass it: the engine's functions are compared with the ones it was (a newer chDB fails
    here, and its new functions are refused at run time until they are reviewed)."""
    names = [row["name"] for row in store.rows(
        "SELECT name FROM system.functions WHERE origin = 'System' "
        "UNION ALL SELECT name FROM system.table_functions")]
    assert len(names) > 1500
    assert policy.unreviewed(names) == frozenset(), (
        "read what each of these functions reaches; add those that reach files, programs, "
        "hosts or the process to policy.HOST_ROUTES, then every name to "
        "collector/sqlhttp/reviewed_functions.txt")


@pytest.mark.parametrize("sql", ["SELECT newShinyFetch('http://10.0.0.1/')",
                                 "SELECT 1 FROM numbers(1) WHERE new_shiny_fetch('x') = ''",
                                 "SELECT * FROM NEWSHINYFETCH('x')"])
def test_a_function_nobody_reviewed_is_refused(store, sql: str) -> None:
    parsed = parse(store.connection(), sql, {})
    unreviewed = policy.unreviewed(["newShinyFetch", "toHour"])
    assert unreviewed == {"newshinyfetch"}
    for scope in (None, policy.Scope(frozenset(), frozenset(), "tagwerk", explain=False)):
        with pytest.raises(SqlError, match="not reviewed") as caught:
            policy.check(parsed.tree, parsed.sql, scope is not None, scope,
                         unreviewed=unreviewed)
        assert caught.value.code == 497
    known = parse(store.connection(), "SELECT toHour(now())", {})
    policy.check(known.tree, known.sql, False, None, unreviewed=unreviewed)


def test_a_parameters_type_is_checked_before_the_engine_builds_it(url: str, tmp_path: Path
                                                                   ) -> None:
    """The engine builds a parameter's type while it parses the statement (EXPLAIN AST with
    the values): a zone in it, written plainly or as x'...', was opened before any check, and
    a FIFO's path hung the engine's time zone lock (an eighth probe). Here the FIFO is
    written to if the request hangs, so that a failure does not hang the tests after it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for zone in (f"'file:{fifo}'", "x'" + f"file:{fifo}".encode().hex() + "'"):
        try:
            resp = httpx.post(url, params={"param_p": "2020-01-01 00:00:00"}, timeout=5,
                              content=f"SELECT {{p:DateTime({zone})}}")
        except httpx.TimeoutException:
            with open(fifo, "wb") as writer:  # releases the engine's lock
                writer.write(b"not a zone")
            pytest.fail(f"the engine opened the FIFO named in {zone}")
        refused(resp, 497)
    with httpx.Client(base_url=url, timeout=10) as http:
        assert run(http, "SELECT toString(toTimeZone(toDateTime(0, 'UTC'), 'Asia/Seoul'))"
                   ).text == "1970-01-01 09:00:00\n"


def test_a_column_may_not_hold_an_aggregate_state_of_self_typed_values(http: httpx.Client
                                                                      ) -> None:
    """A writer's table with an aggregate state of Dynamic: a string inserted into it is read
    as the state's bytes, which name a zone that every reader of the table then loads (a
    ninth probe: 200 with the file's zone)."""
    for sql in ("CREATE TABLE default.agg_dyn (a AggregateFunction(any, Dynamic)) "
                "ENGINE = Memory",
                "CREATE TABLE default.agg_json (a SimpleAggregateFunction(any, JSON)) "
                "ENGINE = MergeTree ORDER BY tuple()"):
        refused(run(http, sql, WRITER), 497)
    run(http, "CREATE TABLE default.agg_ok (a UInt8) ENGINE = Memory", WRITER).raise_for_status()
    try:
        refused(run(http, "ALTER TABLE default.agg_ok ADD COLUMN b AggregateFunction(any, "
                    "Dynamic)", WRITER), 497)
    finally:
        run(http, "DROP TABLE default.agg_ok", WRITER)


@pytest.mark.parametrize("auth", [None, WRITER], ids=["default", "writer"])
def test_a_column_list_with_a_trailing_semicolon_is_checked(http: httpx.Client, canary,
                                                            auth) -> None:
    """values('b String ALIAS file(...);', 1): the engine parses the column list with its
    ';', the check's wrapper did not, and took it for data: any file, for default (a twelfth
    probe)."""
    path, secret = canary
    for sql in (f"SELECT b FROM values('a UInt8, b String ALIAS file(''{path}'', "
                "''RawBLOB'');', 1)",
                f"SELECT b FROM values('a UInt8, b String ALIAS file(''{path}'', "
                "''RawBLOB'') ; ;', 1)",
                "SELECT b FROM values('a UInt8, b String ALIAS hostName();', 1)"):
        resp = run(http, sql, auth)
        assert secret not in resp.text
        refused(resp, 497, 164)
    assert run(http, "SELECT a FROM values('a UInt8;', 5)", auth).text == "5\n"
    alive(http)


def test_a_writers_insert_data_runs_no_sql(http: httpx.Client, canary) -> None:
    """An INSERT's VALUES data was interpreted as SQL by the engine, out of every check's
    sight: a writer read any file with ``VALUES (file('/path'))``, and any table function,
    subquery or zone would have run too. Values are literals only now."""
    path, secret = canary
    assert run(http, "CREATE TABLE default.sec_v (s String, d DateTime) ENGINE = MergeTree "
               "ORDER BY s", WRITER).status_code == 200
    try:
        for values in (f"(file('{path}'), 0)",
                       f"((SELECT * FROM file('{path}', 'LineAsString')), 0)",
                       "('x', toDateTime(0, concat('fi', 'le:/nope')))",
                       "('x', CAST(0 AS DateTime('file:/nope')))"):
            for sql in (f"INSERT INTO default.sec_v VALUES {values}",
                        f"INSERT INTO default.sec_v FORMAT Values {values}"):
                resp = run(http, sql, WRITER)
                assert resp.status_code >= 400, resp.text
                assert "time zone" not in resp.text, resp.text  # not even opened
        resp = run(http, "SELECT * FROM format(Values, 's String', "
                   f"'(file(''{path}''))')", WRITER)
        assert resp.status_code >= 400 and secret not in resp.text, resp.text
        for name in ("input_format_values_interpret_expressions",
                     "input_format_values_deduce_templates_of_expressions"):
            refused(run(http, "INSERT INTO default.sec_v VALUES ('x', 0)", WRITER,
                        **{name: "1"}), 497)
            refused(run(http, f"INSERT INTO default.sec_v SETTINGS {name} = 1 "
                        "VALUES ('x', 0)", WRITER), 497)
        assert run(http, "INSERT INTO default.sec_v VALUES ('a\\tb', '2026-01-01 00:00:00'), "
                   "('c', 1700000000)", WRITER).status_code == 200
        stored = run(http, "SELECT s FROM default.sec_v ORDER BY s", WRITER).text
        assert stored == "a\\tb\nc\n" and secret not in stored
    finally:
        run(http, "DROP TABLE default.sec_v", WRITER)


def test_insert_data_never_names_a_type(http: httpx.Client) -> None:
    """Formats whose data names its columns' types (…WithNamesAndTypes, Native, Arrow, JSON's
    metadata, RowBinary's Dynamic values) had the engine parse those names, escapes undone:
    ``DateTime('\\u0066ile:/path')`` in a header opened the file as a time zone, and a
    pipe's path hung the zone lock and the storing of hits (a fifteenth probe)."""
    assert run(http, "CREATE TABLE default.sec_t (a DateTime) ENGINE = MergeTree ORDER BY a",
               WRITER).status_code == 200
    header = b'["a"]\n["DateTime(\\u0027\\u0066ile:/nope\\u0027)"]\n[0]\n'
    try:
        for fmt in ("JSONCompactEachRowWithNamesAndTypes", "TSVWithNamesAndTypes",
                    "CSVWithNamesAndTypes", "RowBinaryWithNamesAndTypes", "Native", "Arrow",
                    "ArrowStream", "JSONCompact", "JSON", "JSONColumnsWithMetadata",
                    "RowBinary", "rowbinary", "native",
                    # A re-probe's: RowBinary's other forms (a Dynamic value's type code
                    # holds its zone's name).
                    "RowBinaryWithNamesAndTypesAndDefaults", "RowBinaryWithDefaults",
                    "rowbinarywithdefaults"):
            resp = http.post("/", params={"query": f"INSERT INTO default.sec_t FORMAT {fmt}"},
                             content=header, auth=WRITER)
            refused(resp, 497)
            assert "Cannot load" not in resp.text and "names types" in resp.text
            refused(run(http, f"SELECT * FROM format({fmt}, x'{header.hex()}')", WRITER), 497)
            refused(run(http, f"SELECT * FROM format('{fmt}', 'a DateTime', "
                        f"x'{header.hex()}')", WRITER), 497)
        resp = http.post("/", params={"query": "INSERT INTO default.sec_t FORMAT "
                                      "JSONCompactEachRowWithNames"},
                         content=b'["a"]\n[0]\n', auth=WRITER)
        assert resp.status_code == 200, resp.text
        # A re-probe's: the engine's other binary parsers are refused too, until reviewed
        # (a damaged DWARF file aborted the engine for the whole collector).
        for fmt in ("DWARF", "Npy", "ParquetMetadata", "Puffin", "PuffinMetadata", "Template",
                    "Protobuf", "MySQLDump", "Avro", "dwarf"):
            resp = http.post("/", params={"query": f"INSERT INTO default.sec_t FORMAT {fmt}"},
                             content=b"\x7fELF", auth=WRITER)
            refused(resp, 497)
            refused(run(http, f"SELECT * FROM format({fmt}, 'a String', 'x')", WRITER), 497)
        parquet = run(http, "SELECT toDateTime(7) AS a FORMAT Parquet", WRITER).content
        for fmt, data in (("TSV", b"1\n"), ("CSVWithNames", b"a\n2\n"),
                          ("JSONEachRow", b'{"a": 3}\n'), ("Parquet", parquet)):
            resp = http.post("/", params={"query": f"INSERT INTO default.sec_t FORMAT {fmt}"},
                             content=data, auth=WRITER)
            assert resp.status_code == 200, (fmt, resp.text)
    finally:
        run(http, "DROP TABLE default.sec_t", WRITER)
    alive(http)


def test_orc_zone_settings_are_not_a_writers(http: httpx.Client) -> None:
    """The ORC library opens a zone setting's value under /usr/share/zoneinfo, ../ and all:
    a writer probed host files, hung a query on a pipe, and with an empty file (/proc/version)
    aborted the engine for the whole collector (a sixteenth probe)."""
    for name in ("input_format_orc_reader_time_zone_name",
                 "output_format_orc_writer_time_zone_name"):
        refused(run(http, "SELECT toDateTime(0) AS d FORMAT ORC", WRITER,
                    **{name: "../../../../../proc/version"}), 497)
        refused(run(http, "SELECT toDateTime(0) AS d SETTINGS "
                    f"{name} = '../../../../../proc/version' FORMAT ORC", WRITER), 497)
    alive(http)


def test_a_statements_bytes_that_are_not_utf8_are_a_400(http: httpx.Client) -> None:
    """The engine's canonical text of a string written with \\x escapes holds the bytes
    themselves: a 500 when they were not UTF-8 (a re-probe's)."""
    for auth in (None, WRITER):
        resp = run(http, "SELECT '\\xd8\\x00\\xff'", auth)
        assert 400 <= resp.status_code < 500, resp.text
        assert "UTF-8" in resp.text
    alive(http)


def test_a_query_is_cancelled_when_its_client_hangs_up_before_it_starts(
    url: str, store
) -> None:
    """A hang-up that comes before the engine has the query (while it is parsed and
    checked) cancels it all the same once it starts: a cancel that finds nothing is not
    the end of it."""
    for user, pause in itertools.product((None, WRITER), (0, 0.002, 0.005, 0.01, 0.02)):
        marker = f"sec_early_{uuid.uuid4().hex[:8]}"
        with send_raw(url, long_query(marker), user):
            time.sleep(pause)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not running(store, marker):  # noqa: B023
            time.sleep(0.01)
        wait_for(lambda: not running(store, marker), timeout=5)  # noqa: B023


def test_a_query_id_still_running_is_refused_and_a_retry_is_never_cancelled(
    url: str, http: httpx.Client, store
) -> None:
    """As ClickHouse does, a second query with the id of one of the user's queries still
    running is refused (216), not run beside it: the first one's cancel on hang-up finds
    its queries by that id and would cancel the second too. Another user may use the id."""
    query_id = f"sec-dup-{uuid.uuid4().hex[:8]}"
    marker = f"sec_dup_{uuid.uuid4().hex[:8]}"
    with send_raw(url, long_query(marker), query_id=query_id):
        wait_for(lambda: running(store, marker))
        resp = run(http, "SELECT 1", query_id=query_id)
        refused(resp, 216)
        assert resp.status_code == 409
        assert query_id in resp.text and "already running" in resp.text
        assert run(http, "SELECT 1", auth=WRITER, query_id=query_id).text == "1\n"
    deadline = time.monotonic() + 10
    while (resp := run(http, "SELECT sleepEachRow(0.1) FROM numbers(5) FORMAT Null",
                       query_id=query_id)).status_code == 409:
        assert time.monotonic() < deadline, "the hung-up query still runs"
        time.sleep(0.05)
    assert resp.status_code == 200, resp.text
    wait_for(lambda: not running(store, marker), timeout=5)
    alive(http)
