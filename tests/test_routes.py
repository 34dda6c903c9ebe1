"""The route table (``collector/routes.py``) is the only place that declares paths, and
every entry in it can be reached: no (path, method) twice, no route hidden behind an
earlier one or behind an ingestion path."""

from __future__ import annotations

import ast

import pytest
from starlette.convertors import IntegerConvertor
from starlette.routing import Match, Route

from collector import health
from collector.containers import default_container, validate
from collector.routes import (
    FAST,
    INGEST,
    INGESTION,
    ROUTES,
    TABLE,
    UNMATCHED,
    Ingest,
    UInt32,
    Unmatched,
    parts,
    taken,
)
from tests.test_layout import MODULES

TABLE_MODULE = "collector.routes"
# ClickHouse's HTTP interface is another server, on its own port, with ClickHouse's paths.
OTHER_SERVERS = {"collector.sqlhttp.interface"}
DECLARING = {"Route", "Mount", "Host", "Router", "WebSocketRoute", "Ingest", "Unmatched"}


def declarations(source: str) -> list[str]:
    """Where ``source`` declares routes: imports starlette.routing, calls a route's
    constructor, or binds the name ``ROUTES``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "starlette.routing":
            found.append(f"line {node.lineno}: imports from starlette.routing")
        elif isinstance(node, ast.Import) and any(a.name == "starlette.routing"
                                                  for a in node.names):
            found.append(f"line {node.lineno}: imports starlette.routing")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name in DECLARING:
                found.append(f"line {node.lineno}: {name}(...)")
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) \
                and node.id == "ROUTES":
            found.append(f"line {node.lineno}: binds {node.id}")
    return found


def test_only_the_route_table_declares_routes():
    found = {module: declarations(path.read_text()) for module, path in MODULES.items()
             if module != TABLE_MODULE and module not in OTHER_SERVERS}
    assert {module: lines for module, lines in found.items() if lines} == {}


def test_the_check_sees_a_declaration():
    assert sorted(declarations("from starlette.routing import Route\n"
                               "ROUTES = [Route('/x', f)]\nrouting.Mount('/y', app)\n")) == [
        "line 1: imports from starlette.routing", "line 2: Route(...)",
        "line 2: binds ROUTES", "line 3: Mount(...)"]
    assert declarations(MODULES[TABLE_MODULE].read_text())


def pairs() -> list[tuple[str, str]]:
    found = [(entry.path, entry.method) for entry in INGESTION]
    for route in ROUTES:
        assert route.methods, f"{route.path} answers every method: name them"
        found += [(route.path, method) for method in sorted(route.methods)]
    return found


def test_every_path_and_method_is_declared_once():
    declared = pairs()
    assert len(declared) == len(set(declared)), sorted(
        pair for pair in declared if declared.count(pair) > 1)


def sample(route: Route, value: str = "x") -> str:
    """A path the route's pattern matches: each parameter a plain value of its kind."""
    return route.path_format.format(**{
        name: "7" if isinstance(convertor, IntegerConvertor | UInt32) else value
        for name, convertor in route.param_convertors.items()})


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.path)
def test_every_route_is_reached(route):
    """The first route matching one of its paths is itself, for each of its methods, and
    the path is not taken by ingestion before the router sees it."""
    path = sample(route)
    assert path not in INGEST
    for method in route.methods or ():
        scope = {"type": "http", "path": path, "method": method, "root_path": ""}
        first = next(r for r in ROUTES if r.matches(scope)[0] is Match.FULL)
        assert first is route, f"{method} {path} goes to {first.path}"


def test_the_ingestion_lookups_come_from_the_table():
    assert {(path, method) for path, methods in INGEST.items() for method in methods} == {
        (entry.path, entry.method) for entry in INGESTION}
    assert {(path.decode(), method.decode()) for method, paths in FAST.items()
            for path in paths} == {(e.path, e.method) for e in INGESTION if e.fast}


def test_the_parts_are_in_the_order_they_are_answered():
    assert TABLE[-1] is UNMATCHED and set(UNMATCHED.methods) == {"GET", "HEAD"}
    route, ingest = ROUTES[0], INGESTION[0]
    for misordered in ([route, ingest, UNMATCHED], [ingest, UNMATCHED, route],
                       [ingest, route], [ingest, route, UNMATCHED, UNMATCHED]):
        with pytest.raises(ValueError):
            parts(misordered)
    assert parts([ingest, route, UNMATCHED]) == ((ingest,), [route], UNMATCHED)
    assert isinstance(ingest, Ingest) and isinstance(UNMATCHED, Unmatched)


# -- a container's own tag path is left to the last entry ------------------------------------


def described(route: Route) -> str:
    return f"{', '.join(sorted(route.methods or ()))} {route.path}"


def table_paths() -> dict[str, str]:
    """A path of every entry of the table, with the entry as ``taken`` names it: each
    ingestion path, and each route's pattern filled in plainly and with values ending in
    '.js' (a tag path's shape: the route table, not the shape, must refuse it)."""
    found = {entry.path: ", ".join(sorted(e.method for e in INGESTION if e.path == entry.path))
             + f" {entry.path}" for entry in INGESTION}
    for route in ROUTES:
        found.update({sample(route, value): described(route) for value in ("x", "x.js")})
    return found


@pytest.mark.parametrize(("path", "entry"), table_paths().items())
def test_every_path_of_the_table_is_refused_as_a_tag_path(path, entry):
    """Generated from the table: a new route is covered as soon as it is declared."""
    assert taken(path) == entry
    doc = default_container()
    doc["settings"]["tag_path"] = path
    assert [str(e) for e in validate(doc, taken=taken)] == [
        f"settings.tag_path: {path!r} is reserved: the collector's route {entry} answers it"]


@pytest.mark.parametrize(("path", "entry"), [
    ("/collect", "OPTIONS, POST /collect"),
    ("/p.gif", "GET, HEAD /p.gif"),
    ("/t/shop/tm.js", "GET, HEAD /t/{site}/tm.js"),
    ("/t/{site}/tm.js", "GET, HEAD /t/{site}/tm.js"),  # a template's {site}: any segment
    ("/t/x.css", "GET, HEAD /t/{name}.css"),
    ("/t/preview", "GET, HEAD /t/preview"),
    ("/demo", "GET, HEAD /demo"),
    ("/demo/x.js", "GET, HEAD /demo/{path:path}"),
    ("/demo/", "GET, HEAD /demo/{path:path}"),
    ("/api/v1/sites/a/container/publish", "POST /api/v1/sites/{site}/container/publish"),
    ("/api/v1/sites/a/persons/x.js", "GET, HEAD /api/v1/sites/{site}/persons/{ident:identifier}"),
    ("/assets/shop-tag.js", None),
    ("/t/shop/app.js", None),
    ("/collect.js", None),
    ("/api/v1/x.js", None),  # no route: containers reserve the API's namespace themselves
    ("/", None),
])
def test_taken_names_the_entry_that_answers(path, entry):
    assert taken(path) == entry


def test_taken_counts_the_routers_trailing_slash_redirect():
    """The router redirects a path that a route matches with a slash toggled, before it
    asks the last entry: such a path is taken too."""
    slashed = Route("/a/{name}.js/", health.healthz, methods=["GET"])
    plain = Route("/b/{name}.js", health.healthz, methods=["GET"])
    table = [INGESTION[0], slashed, plain, UNMATCHED]
    assert taken("/a/x.js", table) == "GET, HEAD /a/{name}.js/"
    assert taken("/b/x.js/", table) == "GET, HEAD /b/{name}.js"
    assert taken("/c/x.js", table) is None
    assert taken(INGESTION[0].path + "/", table) is None  # ingestion matches paths exactly


@pytest.mark.parametrize(("digits", "number"), [
    ("7", 7), ("0", 0), ("0000000007", 7), ("4294967295", 4294967295),
    ("4294967296", 4294967296), ("0" * 5000 + "12", 12), ("9" * 11, None), ("9" * 5000, None)])
def test_a_uint32_in_the_path_never_raises(digits, number):
    """Starlette's int convertor calls int() on any length, which raises beyond 4300 digits."""
    assert UInt32().convert(digits) == number
    scope = {"type": "http", "path": f"/api/v1/sites/a/container/versions/{digits}",
             "method": "GET", "root_path": ""}
    route = next(r for r in ROUTES if r.matches(scope)[0] is Match.FULL)
    assert route.matches(scope)[1]["path_params"]["n"] == number
    assert taken(scope["path"]) is not None
