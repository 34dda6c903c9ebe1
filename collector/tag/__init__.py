"""The tag manager's side: what browsers load, and the containers behind it.

- ``serving``: ``GET /t/{site}.js`` (the prebuilt tag with the site's live container
  inlined, or a draft being previewed) and the bundle's static files; also the small
  static-asset library (``Dist``, ``Asset``: compressed variants, ETags) the demo uses.
- ``consent_texts``: ``GET /t/{site}/consent.json``, the banner's texts in one language.
- ``demo``: the demo shop at ``/demo/`` (the ``demo`` site's container is
  ``collector.containers.demo``: the service creates it, and must not import the tag's side).

A new endpoint that serves the tag or its assets goes here; hits the tag sends are
``collector.ingest``'s; the keyed API, containers' editing included (``api/container``),
is ``collector.api``.
"""
