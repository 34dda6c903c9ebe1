"""The browser tag in js_snippet/: the committed dist/ is a fresh build, the tag's own tests
(node --test) pass, and the tag as served for the demo shop stays within its size budget.

Needs Node.js >= 20 with npm (both on every machine of this project). CI starts from a clean
clone: without js_snippet/node_modules, `npm ci` installs the pinned esbuild from the npm
registry first.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from collector.containers import container_policy_hash, normalize
from collector.containers.demo import demo_container
from collector.tag.serving import PLACEHOLDER, core_bundle, core_config, engine_config, js_json

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js_snippet"
DIST = JS / "dist"
BUDGET = json.loads((JS / "size-budget.json").read_text())


def gzip_size(data: bytes) -> int:
    """Bytes after gzip -9 -n (no file name in the header), as a server would send them."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "npm_config_update_notifier": "false"}
    return subprocess.run(
        args, cwd=JS, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _tail(r: subprocess.CompletedProcess[str]) -> str:
    return f"exit {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js and npm, and js_snippet's dev dependencies installed (`npm ci` if missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail(
            "node and npm are needed to build and test js_snippet/ (Node.js >= 20); "
            f"found node={node!r}, npm={npm!r}"
        )
    version = _run([node, "--version"], 30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.fail(f"js_snippet/ needs Node.js >= 20 (node --test, fetch); found {version}")
    if not (JS / "node_modules" / "esbuild" / "package.json").exists():
        r = _run([npm, "ci", "--no-audit", "--no-fund"], 600)
        assert r.returncode == 0, f"npm ci in js_snippet failed:\n{_tail(r)}"
    return node


def test_dist_is_a_fresh_build(node, tmp_path):
    r = _run([node, "build.mjs", str(tmp_path)], 300)
    assert r.returncode == 0, f"the build failed:\n{_tail(r)}"
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # dist/ is also the tagwerk_js package (its __init__.py): only the built files count.
    committed = {p.name: p.read_bytes() for p in DIST.iterdir() if p.suffix in (".js", ".css")}
    assert "tag.js" in fresh
    assert sorted(committed) == sorted(fresh), (
        f"js_snippet/dist/ holds {sorted(committed)}, a fresh build makes {sorted(fresh)}: "
        "run `npm run build` in js_snippet/ and commit dist/"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (
        f"js_snippet/dist/{', '.join(stale)} differ from a fresh build of src/: "
        "run `npm run build` in js_snippet/ and commit dist/"
    )


def test_build_is_deterministic(node, tmp_path):
    for out in ("a", "b"):
        r = _run([node, "build.mjs", str(tmp_path / out)], 300)
        assert r.returncode == 0, _tail(r)
    for p in (tmp_path / "a").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_node_tests_pass(node):
    npm = shutil.which("npm")
    r = _run([npm, "test"], 600)
    assert r.returncode == 0, f"`npm test` in js_snippet failed:\n{_tail(r)}"


def test_the_bundle_has_one_config_placeholder():
    # The server replaces this literal, quotes included, with the container's JSON.
    for name in ("tag.js", "tag.basic.js"):
        assert (DIST / name).read_text().count('"__TAGWERK_CONFIG__"') == 1, name


def served_demo() -> tuple[bytes, bytes]:
    """``/t/demo.js`` and ``/t/demo/tm.js`` as the collector serves them for the demo shop's
    container (collector/tag/serving.py; the version hash is always 12 hex digits)."""
    doc = normalize(demo_container())
    core = core_config("demo", doc, container_policy_hash(demo_container()), "0123456789ab")
    tag = (DIST / core_bundle(doc)).read_bytes().replace(PLACEHOLDER, js_json(core), 1)
    engine = (DIST / "engine.js").read_bytes().replace(PLACEHOLDER,
                                                         js_json(engine_config(doc)), 1)
    return tag, engine


def test_the_engine_has_one_config_placeholder():
    assert (DIST / "engine.js").read_text().count('"__TAGWERK_CONFIG__"') == 1


def test_the_demo_is_served_the_basic_core():
    assert core_bundle(normalize(demo_container())) == "tag.basic.js"


def test_tag_size_budget():
    tag, engine = served_demo()
    served, lazy = gzip_size(tag), gzip_size(engine)
    full = gzip_size((DIST / "tag.js").read_bytes())
    budget = BUDGET["tag_with_container_gzip"]
    assert served <= budget, f"/t/demo.js is {served} B gzipped, over the {budget} B budget"
    # Ceilings for what the budget does not cover, so that nothing grows unnoticed.
    assert full <= BUDGET["tag_gzip_ceiling"], f"dist/tag.js (all features) is {full} B gzipped"
    assert lazy <= BUDGET["engine_gzip_ceiling"], f"/t/demo/tm.js is {lazy} B gzipped"
    decide = gzip_size((DIST / "decide.js").read_bytes())
    assert decide <= BUDGET["decide_gzip_ceiling"], f"dist/decide.js is {decide} B gzipped"
