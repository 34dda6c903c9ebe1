"""``collector/web/uvicorn_protocol.py`` extends uvicorn's httptools protocol through names
uvicorn does not promise to keep; the HTTP limits and the ingestion fast path reach uvicorn
only through it. Each test here checks one entry of its ``UVICORN_INTERNALS`` on the
installed uvicorn and, when it is gone or changed, fails with a message naming the uvicorn
version, the name, and what to do, rather than leaving it to an obscure failure deep in an
HTTP test."""

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
from collector.sqlhttp.protocol import SqlProtocol
from collector.web import limits, uvicorn_protocol
from collector.web.uvicorn_protocol import UVICORN_INTERNALS, Pending, UvicornProtocol

ADVICE = ("collector/web/uvicorn_protocol.py relies on it (its UVICORN_INTERNALS lists what "
          "it uses). Keep uvicorn within the range pinned in pyproject.toml, or adapt that "
          "module to this version and widen the pin.")


def broken(what: str) -> str:
    return f"uvicorn {uvicorn.__version__}: {what}. {ADVICE}"


@pytest.mark.parametrize("name", UVICORN_INTERNALS["module"])
def test_module_names(name: str) -> None:
    assert hasattr(httptools_impl, name), broken(
        f"uvicorn.protocols.http.httptools_impl.{name} is gone")


@pytest.mark.parametrize("name", UVICORN_INTERNALS["methods"])
def test_protocol_methods(name: str) -> None:
    method = getattr(HttpToolsProtocol, name, None)
    assert callable(method), broken(f"HttpToolsProtocol.{name} is gone")
    params = [p for p in inspect.signature(method).parameters][1:]
    expected = UVICORN_INTERNALS["methods"][name]
    assert params == expected, broken(
        f"HttpToolsProtocol.{name} takes ({', '.join(params)}), not ({', '.join(expected)})")


def test_our_names_shadow_nothing_of_uvicorns() -> None:
    """The glue's own API (hooks, helpers, slots) must not override a name uvicorn's
    protocol has gained: only the listed methods are overridden on purpose."""
    ours = set(vars(UvicornProtocol)) | set(UvicornProtocol.__slots__)
    for cls in (limits.LimitedProtocol, fasthttp.IngestProtocol, SqlProtocol):
        ours |= set(vars(cls)) | set(getattr(cls, "__slots__", ()))
    theirs = {name for name in dir(HttpToolsProtocol) if not name.startswith("__")}
    clash = (ours & theirs) - set(UVICORN_INTERNALS["methods"])
    assert not clash, broken(
        f"HttpToolsProtocol now has {', '.join(sorted(clash))}, which our protocol classes "
        "define for their own use; rename ours")


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


def _fed(cls: type[HttpToolsProtocol], data: bytes) -> HttpToolsProtocol:
    """A protocol of ``cls`` (uvicorn's or a subclass), connected, that received ``data``;
    an application task it started is cancelled, never run."""
    config = Config(_app, http="httptools", lifespan="off", log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        protocol.connection_made(_Transport())
        protocol.data_received(data)
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
    finally:
        loop.close()
    return protocol


def _protocol_mid_head() -> HttpToolsProtocol:
    """uvicorn's own protocol, connected, with a request's head half read."""
    return _fed(HttpToolsProtocol, b"POST /collect?x=1 HTTP/1.1\r\nHost: a\r\n"
                                   b"Expect: 100-continue\r\nContent-Length: 2\r\n")


def test_protocol_attributes() -> None:
    protocol = _protocol_mid_head()
    for name in UVICORN_INTERNALS["attributes"]:
        assert hasattr(protocol, name), broken(
            f"HttpToolsProtocol no longer sets self.{name} (connected, a head half read)")
    # What the glue reads from them, with the meaning it assumes.
    assert protocol.url == b"/collect?x=1", broken("self.url is not the raw request target")
    assert (b"host", b"a") in protocol.headers, broken(
        "self.headers is not a list of (lower-case name, value) bytes pairs")
    assert protocol.expect_100_continue is True, broken(
        "self.expect_100_continue is not set by on_header")
    for name in UVICORN_INTERNALS["parser"]:
        assert callable(getattr(protocol.parser, name, None)), broken(
            f"self.parser.{name}() is gone")
    assert protocol.parser.get_method() == b"POST", broken("self.parser.get_method() changed")
    assert isinstance(protocol.scope, dict) and "headers" in protocol.scope, broken(
        "self.scope is not the ASGI scope built in on_message_begin")
    assert protocol.cycle is None, broken("self.cycle is not None before the first request")
    assert protocol.client == ("127.0.0.1", 40000) and protocol.scheme == "http", broken(
        "self.client and self.scheme are not the peer's address and the URL scheme")
    state = protocol.server_state
    assert isinstance(getattr(state, "default_headers", None), list), broken(
        "self.server_state.default_headers is not a list of header pairs")
    assert isinstance(getattr(state, "total_requests", None), int), broken(
        "self.server_state.total_requests is not the count of answered requests")
    assert set(UVICORN_INTERNALS["server_state"]) == {"default_headers", "total_requests"}
    for name in UVICORN_INTERNALS["flow"]:
        assert hasattr(protocol.flow, name), broken(f"self.flow.{name} is gone")
    assert protocol.timeout_keep_alive_task is None and isinstance(
        protocol.timeout_keep_alive, (int, float)), broken(
        "self.timeout_keep_alive(_task) are not the keep-alive delay and its timer")


def test_cycle_stand_in_has_what_uvicorn_reads() -> None:
    """While a held request is read or answered, ``self.cycle`` is a ``Pending``: it must
    have every attribute uvicorn's protocol reads or writes on ``self.cycle``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(HttpToolsProtocol)))
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "cycle" and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"}
    assert used, broken("HttpToolsProtocol no longer uses self.cycle")
    has = set(Pending.__slots__) | {"message_event"}
    assert used <= has, broken(
        f"uvicorn's protocol uses self.cycle.{', self.cycle.'.join(sorted(used - has))}, "
        "which the stand-in (uvicorn_protocol.Pending) lacks")
    assert set(UVICORN_INTERNALS["cycle"]) <= has
    cycle_class = httptools_impl.RequestResponseCycle
    source = inspect.getsource(cycle_class.__init__)
    for name in (*UVICORN_INTERNALS["cycle"], *UVICORN_INTERNALS["cycle_read"]):
        assert f"self.{name} =" in source, broken(
            f"RequestResponseCycle no longer sets self.{name} in __init__")


def test_status_lines() -> None:
    lines = getattr(httptools_impl, "STATUS_LINE", None)
    assert isinstance(lines, dict), broken("httptools_impl.STATUS_LINE is gone")
    for status in (200, 202, 204, 400, 403, 404, 408, 413, 414, 415, 431, 500, 503):
        line = lines.get(status)
        assert isinstance(line, bytes) and line.startswith(b"HTTP/1.1 %d " % status) \
            and line.endswith(b"\r\n"), broken(f"STATUS_LINE[{status}] is {line!r}")


def test_both_protocols_subclass_the_glue() -> None:
    assert issubclass(limits.LimitedProtocol, uvicorn_protocol.UvicornProtocol)
    assert issubclass(fasthttp.IngestProtocol, HttpToolsProtocol)


def test_the_parser_calls_callbacks_of_the_protocol() -> None:
    """The chunk limits rely on httptools calling the protocol's on_chunk_header and
    on_chunk_complete: uvicorn must build its parser with the protocol as the callbacks."""
    seen: list[str] = []

    class Recording(HttpToolsProtocol):
        def on_chunk_header(self) -> None:
            seen.append("header")

        def on_chunk_complete(self) -> None:
            seen.append("complete")

    _fed(Recording, b"POST /collect HTTP/1.1\r\nHost: a\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    for name in UVICORN_INTERNALS["parser_callbacks"]:
        assert name.removeprefix("on_chunk_") in seen, broken(
            f"the parser does not call the protocol's {name}: uvicorn no longer builds "
            "HttpRequestParser(self)")
