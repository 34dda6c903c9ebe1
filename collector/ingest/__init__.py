"""Ingestion: everything a hit goes through, from the request to the spool record.

A hit's path, one module a step:

1. ``routes``: ingestion's entries of the collector's route table (``collector.routes``:
   which adapter or handler serves a path and method, and which the fast path takes too)
   as the lookups of the two drivers.
2. A driver reads the request: ``fasthttp`` inside uvicorn's protocol, without the ASGI
   layer (the routes marked fast: ``GET /p.gif``, ``POST /collect``, ``POST /api/v1/batch``;
   ingestion's only module that touches uvicorn's internals), or ``asgi`` for every other
   request.
3. ``adapters``: the wire format turns it into plain data: the site (or the write key),
   the hits, the channel, the kind of answer (``answers``: the GIF, CORS, refusals).
4. ``accept``: the one step sequence every format shares: site, key and origin checks; the
   request's ``Context``, with ``webconsent`` (the consent cookie, ``Sec-GPC`` and the
   ``tw_id`` device cookie); ``events``: each hit validated and turned into a
   ``tagwerk.events`` row, consent applied, ``ids`` (UUIDv7 event ids), and
   ``collector.enrich``'s ``geo`` (MaxMind) and ``useragent`` (device class and bot flag;
   the accurate answer from ``uarules``, Matomo's Device Detector rules); the drop rules
   (erased person, bot, no consent); one record.
5. ``collector.spool``: the record (``spool.record``'s format) is on disk before the 2xx;
   the flusher moves it into ClickHouse.

``consentlog``: ``POST /consent``, the consent log, read like a hit (its adapter) but
stored in its own table.

A new ingestion endpoint is an adapter in ``adapters`` and an ``Ingest`` line in
``collector.routes`` (with ``fast=True`` for the fast path); nothing else. Shared HTTP
pieces (errors, proxies, ``Authorization``, limits) are in ``collector.web``.
"""
