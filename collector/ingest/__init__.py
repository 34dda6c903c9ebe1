"""Ingestion: everything a hit goes through, from the request to the spool record.

A hit's path, in order:

1. ``fasthttp``: ``GET /p.gif`` and ``POST /collect`` answered inside uvicorn's protocol,
   without the ASGI layer (the hot paths); or ``endpoints``: the same steps as ASGI
   handlers (``/collect``, ``/p.gif``, ``/api/v1/batch``), which serve every request the
   fast path leaves to them. ``consentlog``: ``POST /consent``, the consent log, checked
   like a hit.
2. ``endpoints``: site, key and origin checks; the request's ``Context``, with
   ``webconsent`` (the consent cookie, ``Sec-GPC`` and the ``tw_id`` device cookie).
3. ``events``: each hit validated and turned into a ``tagwerk.events`` row: consent
   applied, ``ids`` (UUIDv7 event ids), ``geo`` (MaxMind), ``useragent`` (device class and
   bot flag; the accurate answer from ``uarules``, Matomo's Device Detector rules).
4. ``collector.spool``: the request's rows are one spool record, on disk before the 2xx;
   the flusher moves it into ClickHouse.

A new ingestion endpoint goes here, next to ``endpoints`` (and in ``collector.app.INGEST``).
Shared HTTP pieces (errors, proxies, ``Authorization``, limits) are in ``collector.web``.
"""
