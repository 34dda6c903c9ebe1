"""The read side's route table: every endpoint under /api/v1/sites/{site}/ that gives data
back, in one place."""

from __future__ import annotations

from starlette.routing import Route

SITE = "/api/v1/sites/{site}"

ROUTES: list[Route] = []
