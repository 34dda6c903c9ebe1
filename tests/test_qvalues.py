"""One reading of ``q=`` for every negotiated header: the tag's files and the SQL interface's
answers (Accept-Encoding) and the visitor's language (Accept-Language) refuse and accept
the same items."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from collector.ingest.accept import preferred_language
from collector.sqlhttp import SqlUser, build_sql_app
from collector.web.qvalues import weighted
from tests.helpers import make_client

# (parameters after the item, whether the item is acceptable)
WEIGHTS = [
    ("", True),
    (";q=1", True),
    (";q=0.5", True),
    ("; Q = 0.001", True),
    (";q=0", False),
    (";Q=0", False),  # the parameter's name is case-insensitive
    (";q=0.000", False),
    (";q=-1", False),
    (";q=x", False),  # malformed: not acceptable, in every parser
    (";q=nan", False),
    (";level=1;q=0", False),
]


def test_weighted():
    assert weighted("de-DE, de;q=0.9 ,, en;Q=0.1;x=y, *;q=0") == [
        ("de-DE", 1.0), ("de", 0.9), ("en", 0.1), ("*", 0.0)]
    assert weighted("a, b, c", limit=2) == [("a", 1.0), ("b", 1.0)]
    assert weighted("") == []
    assert weighted("gzip;q=inf") == [("gzip", 0.0)]


@pytest.fixture(scope="module")
def tags(store, tmp_path_factory) -> Iterator[tuple[TestClient, str]]:
    client, collector = make_client(store, tmp_path_factory.mktemp("qvalues"))
    with client:
        if collector.sites.get("qvalues-test") is None:
            collector.sites.create("qvalues-test", ["https://shop.example"])
        yield client, "qvalues-test"


@pytest.fixture(scope="module")
def sql(store) -> Iterator[TestClient]:
    users = {"default": SqlUser("default", "", readonly=True)}
    with TestClient(build_sql_app(store, users, loopback_only=False)) as client:
        yield client


@pytest.mark.parametrize(("params", "acceptable"), WEIGHTS)
def test_every_negotiation_weighs_alike(tags, sql, params, acceptable):
    client, site = tags
    tag = client.get(f"/t/{site}.js", headers={"Accept-Encoding": "gzip" + params})
    assert tag.status_code == 200
    assert (tag.headers.get("content-encoding") == "gzip") is acceptable
    answer = sql.get("/", params={"query": "SELECT 1", "enable_http_compression": "1"},
                     headers={"Accept-Encoding": "gzip" + params})
    assert answer.status_code == 200, answer.text
    assert (answer.headers.get("content-encoding") == "gzip") is acceptable
    assert preferred_language("de" + params) == ("de" if acceptable else "")
