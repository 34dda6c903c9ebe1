"""The ``demo`` site's container, created by ``Collector._ensure_demo_site`` (so that
``/t/demo.js`` works at once): the default container plus one third-party-style marketing tag,
``partner.js`` from the demo shop's static files (``collector/tag/demo.py``).

Here among the containers, not beside the demo's pages (``collector.tag``): the service
creates this container, and the tag's side depends on the service, not the other way round.
"""

from __future__ import annotations

from typing import Any

from collector.containers import check, default_container

PARTNER_TAG: dict[str, Any] = {
    "id": "partner",
    "name": "Ad partner pixel (demo stand-in)",
    "type": "script",
    "purpose": "marketing",
    "src": "/demo/static/partner.js",
    "triggers": ["all_pages"],
}


def demo_container() -> dict[str, Any]:
    """The demo site's container: the default one (four purposes, English and German texts)
    and one third-party-style marketing tag on every page view."""
    doc = default_container()
    doc["tags"] = [dict(PARTNER_TAG)]
    check(doc)
    return doc
