"""An answer held in memory until it is sent, with what it holds (a slot, an engine's
buffer) given back only then: a client that does not read would otherwise leave the whole
answer in the transport's buffer while its slot went to the next request."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from collector.web.uvicorn_protocol import CUT

logger = logging.getLogger("collector.web")

# Pieces handed to the transport at a time: the server waits for the client to read each
# before the next (one write of it all would buffer the whole answer in the transport).
SEND_PIECE = 256 << 10


def _nothing() -> None:
    pass


async def cut(scope: Scope, deadline: float) -> None:
    """Close the connection of an answer not sent within ``deadline`` seconds, at once:
    uvicorn then sees its client gone (an application returning without the answer's last
    message is logged as an error)."""
    logger.info("an answer not sent within %g s, cut (%s)", deadline, scope.get("path", ""))
    close = scope.get("extensions", {}).get(CUT)
    if close is not None:
        close()
        await anyio.sleep(0)  # (the connection's loss is handled before we return)


class HeldResponse(Response):
    """A response whose body (a view of memory ``owner`` holds, or bytes) is kept until it
    is sent, in pieces of copies, and then ``release`` called, also when the client went
    away or was cut for not reading (the HTTP limits' write timeout). With a ``deadline``
    (s), an answer still not read whole then is cut: a client reading a few KB every few
    seconds would hold its slot for hours."""

    def __init__(self, body: bytes | memoryview, owner: Any = None,
                 release: Callable[[], None] = _nothing, deadline: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self.owner = owner
        self.release = release
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self.deadline or math.inf) as sending:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
                body = memoryview(self.body)
                for start in range(0, len(body), SEND_PIECE):
                    await send({"type": "http.response.body", "more_body": True,
                                "body": bytes(body[start:start + SEND_PIECE])})
                await send({"type": "http.response.body", "body": b""})
            if sending.cancelled_caught:  # unfinished: the connection is closed
                await cut(scope, self.deadline)
        finally:
            self.owner = self.body = None  # type: ignore[assignment]
            self.release()
