"""``tagwerk container ...`` against a running collector (through its SQL interface)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from collector import cli
from collector.containers import default_container
from tests.helpers import wait_for
from tests.servers import Server
from tests.test_cli import tagwerk
from tests.test_containers import ORIGINS, full
from tests.test_tag_serving import BUNDLE, ENGINE, HEAD, TAIL


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    dist = tmp_path_factory.mktemp("container-cli-dist")
    (dist / "tag.js").write_bytes(BUNDLE)
    (dist / "tag.basic.js").write_bytes(BUNDLE)  # the build of containers like the default
    (dist / "engine.js").write_bytes(ENGINE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TAGWERK_TAG_DIR", str(dist))  # the subprocess's bundle directory
        server = Server(tmp_path_factory.mktemp("container-cli") / "var").start()
    yield server
    server.stop()


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The command in this process (fast); it reaches the server as a separate one would."""
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def live_config(server, site, path="{site}.js", head=HEAD):
    response = httpx.get(f"{server.url}/t/" + path.format(site=site))
    assert response.status_code == 200, response.text
    return orjson.loads(response.content[len(head):-len(TAIL)])


def live_engine(server, site):
    return live_config(server, site, "{site}/tm.js", ENGINE[:-len(BUNDLE)] + HEAD)


def test_container_commands(server, tmp_path, capsys):
    data = str(server.data_dir)
    origins = [arg for o in ORIGINS for arg in ("--origin", o)]
    code, out, _ = run(capsys, "site", "create", "cli-box", *origins, "--data-dir", data)
    assert code == 0

    bad = full()
    bad["tags"][0]["purpose"] = "ads"
    bad["settings"]["endpiont"] = "/c"
    (tmp_path / "bad.json").write_bytes(orjson.dumps(bad))
    result = tagwerk("container", "push", str(tmp_path / "bad.json"), "--site", "cli-box",
                     "--data-dir", data, check=False)
    assert result.returncode == 2
    assert "settings.endpiont: unknown key (did you mean 'endpoint'?)" in result.stderr
    assert "tags[0].purpose: unknown purpose 'ads'" in result.stderr

    (tmp_path / "broken.json").write_text("{")
    code, _, err = run(capsys, "container", "push", str(tmp_path / "broken.json"),
                       "--site", "cli-box", "--data-dir", data)
    assert code == 2 and "not valid JSON" in err
    code, _, err = run(capsys, "container", "push", str(tmp_path / "missing.json"),
                       "--site", "cli-box", "--data-dir", data)
    assert code == 2 and "cannot read" in err

    one, two = full(), full()
    two["tags"] = two["tags"][1:]
    for doc, note in ((one, "first"), (two, "second")):
        (tmp_path / "c.json").write_bytes(orjson.dumps(doc))
        code, out, _ = run(capsys, "container", "push", str(tmp_path / "c.json"),
                           "--site", "cli-box", "--data-dir", data)
        assert code == 0 and "saved the draft of cli-box" in out
        code, out, _ = run(capsys, "container", "publish", "--site", "cli-box", "--note", note,
                           "--data-dir", data)
        assert code == 0 and "published version" in out

    code, out, _ = run(capsys, "container", "rollback", "1", "--site", "cli-box",
                       "--data-dir", data)
    assert code == 0 and "version 1 of cli-box is live again" in out
    # The running collector serves what the command made live (seen within its cache's TTL):
    # version 1's tags, in the engine the tag loads.
    wait_for(lambda: len(live_engine(server, "cli-box")["g"]) == len(one["tags"]))

    code, out, _ = run(capsys, "container", "versions", "--site", "cli-box", "--data-dir", data)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["version", "live", "policy", "created", "note"]
    assert [row.split()[:2] for row in rows] == [["1", "*"], ["2", rows[1].split()[1]]]
    assert rows[0].endswith("first") and rows[1].endswith("second") and "*" not in rows[1]

    code, out, _ = run(capsys, "container", "show", "--site", "cli-box", "--version", "1",
                       "--data-dir", data)
    assert code == 0 and orjson.loads(out) == one
    code, out, _ = run(capsys, "container", "show", "--site", "cli-box", "--data-dir", data)
    assert code == 0 and orjson.loads(out) == two

    for args, message in [
        (["rollback", "9", "--site", "cli-box"], "has no version 9"),
        (["show", "--version", "9", "--site", "cli-box"], "has no version 9"),
        (["publish", "--site", "nope"], "unknown site 'nope'"),
        (["versions", "--site", "nope"], "unknown site 'nope'"),
    ]:
        code, _, err = run(capsys, "container", *args, "--data-dir", data)
        assert code == 2 and message in err, (args, err)


def test_tag_paths_and_the_routes(server, tmp_path, capsys):
    """The command asks the route table as the API does: a tag path a route answers is
    refused, nothing saved; a path of the site's own is saved and served."""
    data, site = str(server.data_dir), "cli-paths"
    code, _, _ = run(capsys, "site", "create", site, "--origin", ORIGINS[0],
                     "--origin", ORIGINS[1], "--data-dir", data)
    assert code == 0
    for tag_path, problem in [
        ("/t/shop/tm.js", "'/t/shop/tm.js' is reserved: the collector's route "
                          "GET, HEAD /t/{site}/tm.js answers it"),
        ("/demo/{site}.js", "'/demo/{site}.js' ('/demo/cli-paths.js' for this site) is "
                            "reserved: the collector's route GET, HEAD /demo/{path:path}"),
    ]:
        doc = full()
        doc["settings"]["tag_path"] = tag_path
        (tmp_path / "c.json").write_bytes(orjson.dumps(doc))
        code, _, err = run(capsys, "container", "push", str(tmp_path / "c.json"),
                           "--site", site, "--data-dir", data)
        assert code == 2 and f"settings.tag_path: {problem}" in err, err
    code, out, _ = run(capsys, "container", "show", "--site", site, "--data-dir", data)
    assert code == 0 and orjson.loads(out) == default_container()  # nothing saved

    doc = full()
    doc["settings"]["tag_path"] = "/assets/{site}-tag.js"
    (tmp_path / "c.json").write_bytes(orjson.dumps(doc))
    code, _, _ = run(capsys, "container", "push", str(tmp_path / "c.json"), "--site", site,
                     "--data-dir", data)
    assert code == 0
    code, _, _ = run(capsys, "container", "publish", "--site", site, "--data-dir", data)
    assert code == 0
    custom = wait_for(lambda: (r := httpx.get(f"{server.url}/assets/{site}-tag.js"))
                      .status_code == 200 and r)
    assert custom.content == httpx.get(f"{server.url}/t/{site}.js").content
    assert f'"{site}"'.encode() in custom.content


def test_demo_site_serves_its_container(server):
    assert live_config(server, "demo")["s"] == "demo"
    assert [t["id"] for t in live_engine(server, "demo")["g"]] == ["partner"]


def test_preview_link(server):
    site = "cli-preview"
    tagwerk("site", "create", site, "--origin", "https://shop.example",
            "--data-dir", str(server.data_dir))
    out = tagwerk("container", "preview", "--site", site, "--url", "https://shop.example/p",
                  "--collector", server.url, "--data-dir", str(server.data_dir))
    link = out.stdout.strip()
    assert link.startswith(f"{server.url}/t/preview?token=twp_")
    opened = httpx.get(link, follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"] == "https://shop.example/p?tagwerk_debug=1"
    bad = tagwerk("container", "preview", "--site", site, "--url", "https://evil.example/",
                  "--data-dir", str(server.data_dir), check=False)
    assert bad.returncode == 2 and "origins" in bad.stderr


def test_if_match(server, tmp_path, capsys):
    data, site = str(server.data_dir), "cli-etag"
    code, out, _ = run(capsys, "site", "create", site, "--origin", ORIGINS[0],
                       "--origin", ORIGINS[1], "--data-dir", data)
    assert code == 0
    admin = next(line.split()[-1] for line in out.splitlines() if line.startswith("admin key"))

    def push(doc, *extra):
        (tmp_path / "c.json").write_bytes(orjson.dumps(doc))
        return run(capsys, "container", "push", str(tmp_path / "c.json"), "--site", site,
                   "--data-dir", data, *extra)

    def shown():
        code, out, err = run(capsys, "container", "show", "--site", site, "--data-dir", data)
        assert code == 0
        return orjson.loads(out), err.strip().removeprefix("etag: ")

    default, seen = shown()  # the default container has an ETag too
    code, out, _ = push(full(), "--if-match", seen)
    assert code == 0 and f"saved the draft of {site}" in out
    etag = out.splitlines()[-1].removeprefix("etag: ")
    assert etag != seen and shown() == (full(), etag)

    # Stale: exit 3, the draft stays; no version either.
    code, _, err = push(default, "--if-match", seen)
    assert code == 3 and f"its ETag is now {etag}" in err
    code, _, err = run(capsys, "container", "publish", "--site", site, "--if-match", seen,
                       "--data-dir", data)
    assert code == 3 and etag in err
    assert shown() == (full(), etag)
    assert run(capsys, "container", "versions", "--site", site, "--data-dir", data)[1] \
        .startswith("no version published yet")

    # Malformed or empty: exit 2 before anything is read or written.
    for bad in ('"a" "b"', " ", "W/x"):
        code, _, err = push(default, "--if-match", bad)
        assert code == 2 and ("If-Match" in err or "--if-match is empty" in err), (bad, err)

    # The ETag as a shell passes it (quotes gone), or quoted: the reviewed draft is published.
    code, out, _ = run(capsys, "container", "publish", "--site", site, "--if-match",
                       etag.strip('"'), "--data-dir", data)
    assert code == 0 and "published version 1" in out
    code, out, _ = push(default, "--if-match", etag)
    assert code == 0 and shown()[0] == default
    code, out, _ = push(full(), "--if-match", "*")
    assert code == 0 and shown() == (full(), out.splitlines()[-1].removeprefix("etag: "))

    # The running collector's API names the same draft by the same ETag, and refuses the
    # ETag of the draft the command replaced.
    url, auth = f"{server.url}/api/v1/sites/{site}/container", {"Authorization": f"Bearer {admin}"}
    current = out.splitlines()[-1].removeprefix("etag: ")
    assert httpx.get(url, headers=auth).headers["etag"] == current
    r = httpx.post(url + "/publish", headers={**auth, "If-Match": etag})
    assert r.status_code == 412 and r.json()["etag"] == current
