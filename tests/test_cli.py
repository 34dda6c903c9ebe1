"""The tagwerk command."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys

import httpx
import pytest

from tests.servers import Server


def tagwerk(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector", *args], capture_output=True,
                          text=True, check=check, timeout=120)


def test_migrate_print_for_a_cluster():
    out = tagwerk("migrate", "--print", "--cluster", "shop").stdout
    assert "CREATE TABLE IF NOT EXISTS tagwerk.events_local ON CLUSTER shop" in out
    assert "ENGINE = Distributed('shop', 'tagwerk', 'events_local'" in out


def test_bad_cluster_name_is_a_clear_error():
    result = tagwerk("migrate", "--print", "--cluster", "a b", check=False)
    assert result.returncode == 2
    assert "not a valid cluster name" in result.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("cli") / "var").start()
    yield server
    server.stop()


def test_site_create_and_sql_while_serving(server):
    data = str(server.data_dir)
    out = tagwerk("site", "create", "cli-shop", "--origin", "https://Shop.example/",
                  "--retention-days", "30", "--data-dir", data).stdout
    keys = dict(re.findall(r"^(write|read|admin) key:\s+(\S+)$", out, re.M))
    assert set(keys) == {"write", "read", "admin"}
    assert "origins:   https://shop.example" in out
    # The running collector knows the new site at once, and its write key works.
    response = httpx.post(f"{server.url}/api/v1/batch", json={"events": [{"event": "cli"}]},
                          headers={"Authorization": f"Bearer {keys['write']}"})
    assert response.status_code == 202, response.text
    stored = tagwerk("sql", "SELECT site_id, retention_days, write_key_hash != '' FROM "
                     "tagwerk.sites FINAL WHERE site_id = 'cli-shop'", "--data-dir", data).stdout
    assert stored.splitlines()[1] == "cli-shop\t30\t1"
    assert keys["write"] not in tagwerk("sql", "SELECT * FROM tagwerk.sites FORMAT TSV",
                                        "--data-dir", data).stdout


def test_serve_reads_no_file_of_the_directory_it_was_started_from(tmp_path):
    """chDB's default database reads a file of the working directory by a table's bare name,
    for a SQL user who may write (found by an attacker's probe: the users file, the site
    keys, serve.json's internal password): serve runs from an empty directory of its own,
    its relative paths taken from where it was started."""
    secret = secrets.token_hex(16)
    (tmp_path / "secret.txt").write_text(f"{secret}\n")
    server = Server(tmp_path / "var", cwd=tmp_path).start()
    try:
        runtime = json.loads((tmp_path / "var" / "serve.json").read_text())
        for sql in ("SELECT * FROM `secret.txt`", "SELECT * FROM default.`secret.txt`"):
            response = httpx.post(f"http://127.0.0.1:{server.sql_port}/", content=sql,
                                  auth=(runtime["sql_user"], runtime["sql_password"]))
            assert response.status_code >= 400 and secret not in response.text, response.text
        assert httpx.get(f"{server.url}/t/demo.js").status_code == 200
    finally:
        server.stop()


def test_site_create_refuses_bad_input(server):
    data = str(server.data_dir)
    for args, message in [
        (["Bad Name!"], "site id"),
        (["ok-name", "--origin", "ftp://x"], "not an origin"),
        (["demo"], "exists already"),
    ]:
        result = tagwerk("site", "create", *args, "--data-dir", data, check=False)
        assert result.returncode == 2 and message in result.stderr


def test_site_create_with_identity_settings(server):
    data = str(server.data_dir)
    tagwerk("site", "create", "cli-ids", "--identifier-kinds", "membership,crm",
            "--identity-max-persons", "5", "--data-dir", data)
    stored = tagwerk("sql", "SELECT identifier_kinds, identity_max_persons FROM tagwerk.sites "
                     "FINAL WHERE site_id = 'cli-ids' FORMAT TSV", "--data-dir", data).stdout
    assert stored.strip() == "['membership','crm']\t5"
    for args, message in [(["--identifier-kinds", "device"], "built-in"),
                          (["--identifier-kinds", "Bad-Kind"], "identifier kind"),
                          (["--identity-max-persons", "0"], "identity_max_persons")]:
        result = tagwerk("site", "create", "cli-ids-bad", *args, "--data-dir", data,
                         check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_sql_error_is_reported(server):
    result = tagwerk("sql", "SELECT nope FROM tagwerk.events", "--data-dir",
                     str(server.data_dir), check=False)
    assert result.returncode == 2
    assert "UNKNOWN_IDENTIFIER" in result.stderr


def test_sql_on_a_fresh_directory_without_a_server(tmp_path):
    out = tagwerk("sql", "SELECT count() FROM tagwerk.events", "--data-dir",
                  str(tmp_path / "fresh")).stdout
    assert out.splitlines() == ["count()", "0"]


def test_reserved_site_ids(server):
    for name in ("banner", "decide"):  # /t/banner.js, /t/decide.js are the tag's files
        result = tagwerk("site", "create", name, "--data-dir", str(server.data_dir), check=False)
        assert result.returncode == 2 and "reserved" in result.stderr


def test_demo_site_follows_the_port(tmp_path):
    """The demo shop keeps working when serve restarts on another port."""
    first = Server(tmp_path / "var").start()
    first.stop()
    second = Server(tmp_path / "var").start()  # a new free port, same data
    try:
        response = httpx.post(f"{second.url}/collect", content=b'{"site":"demo","event":"x"}',
                              headers={"Content-Type": "text/plain",
                                       "Origin": f"http://127.0.0.1:{second.port}"})
        assert response.status_code == 202
    finally:
        second.stop()
