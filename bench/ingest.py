"""CPU per hit of the fast path, in process: uvicorn's parser, the fast path
(``collector/ingest/fasthttp.py``), the accept step and the answer, for ``GET /p.gif``,
``POST /collect`` with one event and with a batch of 10 (as ``bench/load.py`` sends; its
figure is per event) on a kept-alive connection, on uvloop's event loop as ``tagwerk
serve`` runs. No socket and no disk: the transport is a stub and the spool calls back at
once, so what is measured is the collector's own work per hit, which ``bench/load.py``
cannot isolate on a shared machine. Timed by thread CPU time, best of several rounds (other
processes still add noise: compare runs made side by side).

    python bench/ingest.py [--rounds 15] [--hits 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import types
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.server import ServerState

from collector.app import protocol_for
from collector.config import Settings
from collector.containers import Containers
from collector.enrich.client_hash import ClientSalts
from collector.enrich.geo import GeoIP
from collector.ingest import accept
from collector.metrics import Metrics
from collector.sites import Site, Sites
from collector.web.ratelimit import RateLimit

ORIGIN = "https://shop.example"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
HEAD = (f"Host: c.example\r\nUser-Agent: {CHROME}\r\nAccept-Language: de-DE,de;q=0.9\r\n"
        "Cookie: tw_id=abc\r\n").encode()
PIXEL = (b"GET /p.gif?site=s1&event=page_view&url=https%3A%2F%2Fshop.example%2Fa"
         b"&consent=analytics&props.x=1 HTTP/1.1\r\n" + HEAD + b"\r\n")
BODY = orjson.dumps({"site": "s1", "event": "page_view", "url": ORIGIN + "/a",
                     "consent": ["analytics"], "props": {"x": "1"}})


def post(body: bytes) -> bytes:
    return (b"POST /collect HTTP/1.1\r\n" + HEAD + b"Origin: " + ORIGIN.encode()
            + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


COLLECT = post(BODY)
# bench/load.py's batch: 10 e-commerce events in one request.
BATCH = post(orjson.dumps({"site": "s1", "events": [
    {"event": "view_item", "url": f"{ORIGIN}/p/{i}", "consent": ["analytics"],
     "device_id": "d-42", "items": [{"product_id": f"sku-{i}", "price": 19.9, "quantity": 1}]}
    for i in range(10)]}))


class _Spool:
    """Durable at once: the answer is written within ``submit``."""

    def submit(self, record: bytes, done: Callable[[Exception | None], None], loop: Any) -> None:
        done(None)


class _NoTombstones:
    """No person erased (the registry's own check is a set lookup per identifier)."""

    def blocks(self, site_id: str, row: dict[str, Any]) -> bool:
        return False


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("81.2.69.160", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default)

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.answers.append(data[:12])

    def close(self) -> None:
        pass


class _Collector(types.SimpleNamespace):
    """Weakly referable and hashable, as the per-collector limits keep it
    (``ratelimit.RateLimits``)."""

    __hash__ = object.__hash__


def collector() -> Any:
    """A stand-in for ``Collector`` with what the fast path reads, all in memory. The
    client's budget (a public address) is counted, as for any browser's hit, but never
    spent: the rounds send far more than one client may."""
    sites = Sites(None)  # type: ignore[arg-type]
    sites._set({"s1": Site("s1", origins=(ORIGIN,),  # noqa: SLF001 (a registry without a store)
                           _patterns=(re.compile(re.escape(ORIGIN)),))})
    stand_in = _Collector(
        sites=sites, containers=Containers(None),  # type: ignore[arg-type]
        tombstones=_NoTombstones(),
        metrics=Metrics(), geo=GeoIP(None), spool=_Spool(),
        client_salts=ClientSalts(None),  # type: ignore[arg-type]  # (a salt of its own)
        settings=Settings(data_dir="/tmp/tagwerk-bench-ingest"))
    accept.BUDGETS[stand_in] = RateLimit(rate=1e12, burst=1e12)
    return stand_in


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError(f"the ASGI path took {scope['path']}")


def connection(protocol_class: type) -> tuple[Any, _Transport, asyncio.AbstractEventLoop]:
    config = Config(_app, lifespan="off", log_config=None)
    config.load()
    loop = new_event_loop()
    state = ServerState()
    state.default_headers = [(b"date", formatdate(usegmt=True).encode())]  # as uvicorn's
    protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport, loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's, as uvicorn's loop="auto" picks it, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cpu_per_hit(protocol_class: type, request: bytes, hits: int, per: int = 1) -> float:
    """Microseconds of this thread's CPU per hit, ``hits`` requests of ``per`` hits each on
    one connection."""
    protocol, transport, loop = connection(protocol_class)
    feed = protocol.data_received
    try:
        feed(request)
        status = transport.answers[-1]
        assert status.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")), status
        began = time.thread_time()
        for _ in range(hits):
            feed(request)
        took = time.thread_time() - began
        assert len(transport.answers) == hits + 1
    finally:
        protocol.connection_lost(None)
        loop.close()
    return took / hits / per * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--hits", type=int, default=5000)
    args = parser.parse_args()
    protocol_class = protocol_for(collector())
    cases = (("pixel", PIXEL, 1), ("collect", COLLECT, 1), ("collect, batch of 10", BATCH, 10))
    best = dict.fromkeys((name for name, _, _ in cases), float("inf"))
    for _ in range(args.rounds):
        for name, request, per in cases:
            best[name] = min(best[name], cpu_per_hit(protocol_class, request, args.hits, per))
    for name, us in best.items():
        print(f"{name}: {us:.2f} us CPU per hit (best of {args.rounds} x {args.hits} requests)")


if __name__ == "__main__":
    main()
