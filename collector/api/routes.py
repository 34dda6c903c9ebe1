"""The read side's route table: every endpoint under /api/v1/sites/{site}/ that gives data
back, in one place."""

from __future__ import annotations

from starlette.routing import Route

from collector.api import products, recommend

SITE = "/api/v1/sites/{site}"

ROUTES: list[Route] = []
ROUTES += products.routes(SITE)  # top, trending, related: the read key
ROUTES += recommend.ROUTES  # the browser-safe variant under /t/{site}/recommend/
