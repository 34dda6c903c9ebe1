"""The fast path (``collector/ingest/fasthttp.py``) and the HTTP limits under it
(``collector/web/limits.py``) extend uvicorn's httptools protocol through names uvicorn
does not promise to keep. Each test here checks one of them on the installed uvicorn and,
when it is gone or changed, fails with a message naming the uvicorn version, the name, and
what to do, rather than leaving it to an obscure failure deep in an HTTP test."""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from typing import Any

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from collector.ingest import fasthttp
from collector.ingest.fasthttp import UVICORN_INTERNALS, _Pending

ADVICE = ("collector/ingest/fasthttp.py and collector/web/limits.py rely on it. Keep uvicorn "
          "within the range pinned in pyproject.toml, or adapt those two modules to this "
          "version (their docstrings list what they use) and widen the pin.")

# Besides fasthttp's own (UVICORN_INTERNALS), what limits.py overrides, calls or reads.
LIMITS_METHODS = ("on_url", "on_header", "send_400_response", "data_received",
                  "connection_made", "connection_lost")
LIMITS_ATTRIBUTES = ("pipeline", "flow", "timeout_keep_alive", "timeout_keep_alive_task")

# The signatures the overrides are written for: parameter names after ``self``.
SIGNATURES = {
    "on_message_begin": [], "on_headers_complete": [], "on_body": ["body"],
    "on_message_complete": [], "on_response_complete": [], "on_url": ["url"],
    "on_header": ["name", "value"], "send_400_response": ["msg"], "data_received": ["data"],
    "connection_made": ["transport"], "connection_lost": ["exc"],
}


def broken(what: str) -> str:
    return f"uvicorn {uvicorn.__version__}: {what}. {ADVICE}"


@pytest.mark.parametrize("name", [*UVICORN_INTERNALS["methods"], *LIMITS_METHODS])
def test_protocol_methods(name: str) -> None:
    method = getattr(HttpToolsProtocol, name, None)
    assert callable(method), broken(f"HttpToolsProtocol.{name} is gone")
    params = [p for p in inspect.signature(method).parameters][1:]
    assert params == SIGNATURES[name], broken(
        f"HttpToolsProtocol.{name} takes ({', '.join(params)}), not "
        f"({', '.join(SIGNATURES[name])})")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default)

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never reached: no full head
    raise AssertionError("the head is incomplete")


def _protocol_mid_head() -> HttpToolsProtocol:
    """uvicorn's own protocol, connected, with a request's head half read."""
    config = Config(_app, http="httptools", lifespan="off", log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                     _loop=loop)
        protocol.connection_made(_Transport())
        protocol.data_received(b"POST /collect?x=1 HTTP/1.1\r\nHost: a\r\n"
                               b"Expect: 100-continue\r\nContent-Length: 2\r\n")
    finally:
        loop.close()
    return protocol


def test_protocol_attributes() -> None:
    protocol = _protocol_mid_head()
    for name in (*UVICORN_INTERNALS["attributes"], *LIMITS_ATTRIBUTES):
        assert hasattr(protocol, name), broken(
            f"HttpToolsProtocol no longer sets self.{name} (connected, a head half read)")
    # What the fast path reads from them, with the meaning it assumes.
    assert protocol.url == b"/collect?x=1", broken("self.url is not the raw request target")
    assert (b"host", b"a") in protocol.headers, broken(
        "self.headers is not a list of (lower-case name, value) bytes pairs")
    assert protocol.expect_100_continue is True, broken(
        "self.expect_100_continue is not set by on_header")
    assert protocol.parser.get_method() == b"POST", broken("self.parser.get_method() changed")
    assert isinstance(protocol.scope, dict) and "headers" in protocol.scope, broken(
        "self.scope is not the ASGI scope built in on_message_begin")
    assert protocol.cycle is None, broken("self.cycle is not None before the first request")
    assert isinstance(protocol.server_state.default_headers, list), broken(
        "self.server_state.default_headers is not a list of header pairs")
    assert hasattr(protocol.flow, "read_paused"), broken("self.flow.read_paused is gone")


def test_cycle_stand_in_has_what_uvicorn_reads() -> None:
    """While the fast path holds a request, ``self.cycle`` is a ``_Pending``: it must have
    every attribute uvicorn's protocol reads or writes on ``self.cycle``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(HttpToolsProtocol)))
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "cycle" and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"}
    assert used, broken("HttpToolsProtocol no longer uses self.cycle")
    has = set(_Pending.__slots__) | {"message_event"}
    assert used <= has, broken(
        f"uvicorn's protocol uses self.cycle.{', self.cycle.'.join(sorted(used - has))}, "
        "which the fast path's stand-in (fasthttp._Pending) lacks")
    assert set(UVICORN_INTERNALS["cycle"]) <= has


def test_status_lines() -> None:
    lines = getattr(httptools_impl, "STATUS_LINE", None)
    assert isinstance(lines, dict), broken("httptools_impl.STATUS_LINE is gone")
    for status in (200, 202, 204, 400, 403, 404, 408, 413, 414, 415, 431, 500, 503):
        line = lines.get(status)
        assert isinstance(line, bytes) and line.startswith(b"HTTP/1.1 %d " % status) \
            and line.endswith(b"\r\n"), broken(f"STATUS_LINE[{status}] is {line!r}")


def test_fast_path_subclasses_the_protocol() -> None:
    assert issubclass(fasthttp.IngestProtocol, HttpToolsProtocol)
