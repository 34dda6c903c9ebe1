"""``POST /consent``: the consent log. Every decision a person makes in the banner (or a site
makes through ``tagwerk('consent', 'update', ...)``) is posted here and kept in
``tagwerk.consent_log``, in the merchant's own database, next to the hits it governs.

The request is read like a hit (``adapters.CONSENT``, ``accept.read``) and checked
(``consent/log.py`` names the field of any problem; 4xx, nothing stored), CORS like
``/collect`` with credentials, at most 8 KB, ``text/plain`` or JSON. The row gets the
device class and the country of the request (the same enrichment as hits:
``accept.hit_context``), never the IP address.

Durability is the hits': the row is one spool record, fsynced before the 202, and the
flusher inserts it exactly once. The record's metadata line is ``{"t":"consent_log"}``
instead of the events' ``{}``: the flusher groups a batch's records by that table name and
makes one insert per table, each with its own deduplication token
(``collector/spool/record.py``, ``flusher.py``).

A decision that denies analytics also clears the ``tw_id`` device cookie, if the request
carries one: the person need not wait for the next hit. And the ``tw_consent`` cookie the tag
wrote for the decision is set again by the collector, when the request carries it (Safari
caps cookies written by script at 7 days: ``webconsent.consent_renewal``).
"""

from __future__ import annotations

import orjson
from starlette.types import Send

from collector.ingest import accept, webconsent
from collector.ingest.adapters import CONSENT
from collector.ingest.answers import cors_headers
from collector.service import Collector
from collector.spool.record import CONSENT_LOG, encode_record
from collector.web.http import Hit, HTTPError, respond
from consent.log import DecisionError, decision_row
from consent.purposes import ANALYTICS


async def consent(c: Collector, hit: Hit, send: Send) -> None:
    """``POST /consent``: one decision; answers 202 ``{"accepted": 1}``."""
    origin = hit.headers.get("origin")
    try:
        site, data = await accept.read(c, CONSENT, hit)
        accept.check_origin(site, origin)
        ip = accept.client_address(c, hit)
        accept.spend(c, ip, [data])
        ctx = accept.hit_context(c, site, "web", hit, ip)
        try:
            row = decision_row(data, site.site_id, ctx.received_text,
                               ctx.agent.device_class, ctx.location.country)
        except DecisionError as exc:
            raise HTTPError(400, str(exc), "invalid", exc.field) from None
        record = encode_record([orjson.dumps(list(row.values()))], site.site_id, [],
                               table=CONSENT_LOG)
        await accept.spool(c, record)
    except HTTPError as exc:
        await respond(send, exc.status, exc.body(), headers=CONSENT.refused(c, exc, origin))
        return
    c.metrics.hits_accepted.inc("consent")
    headers = list(cors_headers(origin).items())
    trusted = webconsent.trusts(site, origin)  # else: no cookie of the visitor's touched
    if trusted and "tw_consent=" in hit.headers.get("cookie", ""):
        live = await c.containers.served(site.site_id)
        renewal = webconsent.consent_renewal(hit, row, live, ctx.received_at.timestamp(),
                                             c.settings.networks)
        if renewal:
            headers.append(("Set-Cookie", renewal))
    if trusted and ANALYTICS not in row["granted"]:
        sw = webconsent.site_web(c.containers, site.site_id)
        cleared = webconsent.clear(hit, sw, None, c.settings.networks)
        if cleared:
            headers.append(("Set-Cookie", cleared))
    await respond(send, 202, b'{"accepted":1}', headers=headers)
