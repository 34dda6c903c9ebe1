"""Export across processes: ``tagwerk export`` beside a running collector (through its SQL
port), and two collector processes inserting into one ClickHouse at once."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import threading

import httpx
import orjson
import pyarrow.parquet as pq
import pytest

from tests.helpers import wait_for
from tests.servers import Server


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("exp") / "first", "--no-demo").start()
    try:
        yield server
    finally:
        server.stop()


def tagwerk(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector", *args, "--data-dir",
                           str(server.data_dir)], capture_output=True, text=True, timeout=60)


def create_site(server: Server, name: str) -> dict[str, str]:
    out = tagwerk(server, "site", "create", name).stdout
    return dict(re.findall(r"(write|read|admin) key:\s+(\S+)", out))


def send(url: str, key: str, markers: list[str]) -> None:
    body = {"events": [{"event": "page_view", "props": {"m": m}} for m in markers]}
    httpx.post(f"{url}/api/v1/batch", content=orjson.dumps(body), timeout=10, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ).raise_for_status()


def stored(server: Server, site: str) -> int:
    return int(server.sql("SELECT count() FROM tagwerk.events WHERE site_id = {s:String}",
                          s=site))


def test_export_command_beside_a_running_collector(first, tmp_path):
    keys = create_site(first, "cli-export")
    send(first.url, keys["write"], ["a", "b", "c"])
    wait_for(lambda: stored(first, "cli-export") == 3)
    done = tagwerk(first, "export", "--site", "cli-export", "--limit", "2",
                   "-o", str(tmp_path / "page1.ndjson"))
    assert done.returncode == 0, done.stderr
    since = re.search(r"cursor: (\S+)", done.stderr).group(1)
    assert "more:" in done.stderr
    rest = tagwerk(first, "export", "--site", "cli-export", "--since", since, "--format",
                   "parquet", "-o", str(tmp_path / "page2.parquet"))
    assert rest.returncode == 0, rest.stderr
    page1 = [orjson.loads(line)["props"]["m"] for line in
             (tmp_path / "page1.ndjson").read_bytes().splitlines()]
    page2 = pq.read_table(io.BytesIO((tmp_path / "page2.parquet").read_bytes()))
    assert len(page1) == 2 and page2.num_rows == 1
    bad = tagwerk(first, "export", "--site", "cli-export", "--since", "nonsense")
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_two_collector_processes_inserting_into_one_clickhouse(first, tmp_path):
    keys = create_site(first, "two-procs")
    info = json.loads((first.data_dir / "serve.json").read_text())
    url = (f"http://{info['sql_user']}:{info['sql_password']}@127.0.0.1:{first.sql_port}"
           "/tagwerk")
    second = Server(tmp_path / "second", "--no-demo", "--clickhouse-url", url).start()
    try:
        expected, seen, since = [], [], None
        writers = []
        for name, server in (("a", first), ("b", second)):
            markers = [f"{name}{batch}-{i}" for batch in range(8) for i in range(4)]
            expected += markers

            def write(server=server, markers=markers):
                for at in range(0, len(markers), 4):
                    send(server.url, keys["write"], markers[at:at + 4])
            writers.append(threading.Thread(target=write))
        for thread in writers:
            thread.start()

        def export_page() -> bool:
            nonlocal since
            query = {"limit": "5", **({"since": since} if since else {})}
            answer = httpx.get(f"{first.url}/api/v1/sites/two-procs/export", params=query,
                               headers={"Authorization": f"Bearer {keys['read']}"}, timeout=30)
            answer.raise_for_status()
            seen.extend(orjson.loads(line)["props"]["m"] for line in answer.content.splitlines())
            since = answer.headers["tagwerk-cursor"]
            return answer.headers["tagwerk-more"] == "false"

        while any(thread.is_alive() for thread in writers):
            export_page()
        wait_for(lambda: stored(first, "two-procs") == len(expected), timeout=30)
        while not export_page():
            pass
        assert sorted(seen) == sorted(expected)
    finally:
        second.stop()
