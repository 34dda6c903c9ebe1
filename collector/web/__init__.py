"""HTTP pieces every endpoint shares, whatever it serves (ingestion, tag, read API, SQL).

- ``http``: the small request type of the bare-ASGI ingestion paths, header helpers and the
  one JSON error shape (``{"error", "field"}``) every endpoint answers with.
- ``clientip``: what trusted reverse proxies say (the visitor's address, https or not).
- ``authorization``: ``Bearer`` and ``Basic`` keys from the ``Authorization`` header.
- ``qvalues``: ``q=`` weights of ``Accept-Language`` and ``Accept-Encoding``.
- ``limits``: uvicorn's httptools protocol with limits on header size and slow clients, the
  protocol of both of ``tagwerk serve``'s ports.

Nothing here knows about sites, hits or storage.
"""
