"""Privacy operations over HTTP, with the admin key.

    POST {site}/privacy/erase    {"id": "kind:id"}   erase the person everywhere
    GET  {site}/privacy/access?id=kind:id           everything stored about the person
"""

from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collector.api import body, query
from collector.api.access import ADMIN, ApiError, json_response, keyed
from collector.api.persons import actor, identifier
from collector.api.slots import slots
from collector.privacy import erase as erasure
from collector.privacy.access import access as access_request
from collector.service import Collector
from collector.sites import Site
from collector.web.held import HeldResponse

ACCESS_PER_SITE = 1
# An answer not read whole by then is cut (65 MB at 220 KB/s), and the site's slot freed.
ACCESS_SEND_SECONDS = 300


@keyed(ADMIN)
async def erase(request: Request, collector: Collector, site: Site) -> Response:
    query.params(request, ())
    data = await body.json_object(request, ("id",), ("id",))
    kind, ident = identifier(site, data["id"], "id")
    wait = erasure.wait_flushed(lambda: collector.spool.durable,
                                lambda: collector.spool.checkpoint.flushed)

    def flush(timeout: float) -> bool:
        # The tombstones are written: rows this collector spooled before them are checked
        # again as they are flushed (also should the wait time out), then waited for.
        collector.flusher.recheck(collector.spool.durable)
        return wait(timeout)

    removing = True  # rows may be gone: also when the erasure fails half-way
    try:
        done = await run_in_threadpool(erasure.erase, collector.store, site,
                                       collector.tombstones, kind, ident, actor(site), flush)
    except erasure.NotFound as exc:
        removing = False
        raise ApiError(404, str(exc), "id") from None
    except erasure.TooLarge as exc:
        removing = False
        raise ApiError(409, str(exc), "id") from None
    finally:  # the copies and kept answers about anyone may hold the erased rows
        collector.link_index.changed(None)  # (first: as the change feed tells them)
        collector.identities_changed()
        if removing:  # (a failure of its own then is the answer's)
            await run_in_threadpool(collector.link_index.forget_erased)
    return json_response(done)


@keyed(ADMIN)
async def access(request: Request, collector: Collector, site: Site) -> Response:
    if request.method == "HEAD":  # the whole query and an audited access, for no body
        raise ApiError(405, "an access request is a GET: HEAD would run it all the same",
                       "method", {"Allow": "GET"})
    values = query.params(request, ("id",))
    if "id" not in values:
        raise ApiError(400, "'id' is required: ?id=kind:id", "id")
    kind, ident = identifier(site, values["id"], "id")
    # An answer holds up to access.MAX_ROWS rows of every column in memory (hundreds of MB
    # for a customer with tens of thousands of hits): one at a time per site.
    running = slots(request, "tagwerk_access_requests", ACCESS_PER_SITE)
    if not running.take(site.site_id):
        raise ApiError(429, f"at most {ACCESS_PER_SITE} access request of a site at once; try "
                       "again when it has finished", headers={"Retry-After": "5"})

    def answer() -> bytes | None:  # built in the thread: tens of MB of JSON
        found = access_request(collector.store, site, collector.tombstones, kind, ident,
                               actor(site))
        return None if found is None else orjson.dumps(found)

    try:
        body = await run_in_threadpool(answer)
        if body is None:
            raise ApiError(404, f"nobody is known by {kind}:{ident[:64]} on this site", "id")
    except BaseException:
        running.give(site.site_id)
        raise
    # The slot covers the answer until it is sent: given back as it was built, clients
    # that read nothing each left one in memory (probe 62: 20 of them, 1.2 GB).
    return HeldResponse(body, release=lambda: running.give(site.site_id),
                        deadline=ACCESS_SEND_SECONDS, headers={"Cache-Control": "no-store"},
                        media_type="application/json")
