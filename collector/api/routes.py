"""The read side's route table: every endpoint under /api/v1/sites/{site}/ that gives data
back, in one place."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Route

from collector.api import export, persons, privacy, products, recommend, stream

SITE = "/api/v1/sites/{site}"


class Identifier(Convertor[str]):
    """A ``kind:id`` path segment that may hold "/" (sent as %2F) and any other character:
    ``path`` stops at a line break, which must reach the endpoint to be refused there."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("identifier", Identifier())

ROUTES: list[Route] = [
    # Ids may hold "/" (sent as %2F): the profile's route is tried first.
    Route(SITE + "/persons/{ident:identifier}/profile", persons.profile, methods=["GET"]),
    Route(SITE + "/persons/{ident:identifier}", persons.person, methods=["GET"]),
    Route(SITE + "/identity/merge", persons.merge, methods=["POST"]),
    Route(SITE + "/identity/split", persons.split, methods=["POST"]),
    Route(SITE + "/identity/operations", persons.operations, methods=["GET"]),
    Route(SITE + "/identity/operations/{op_id}/undo", persons.undo, methods=["POST"]),
    Route(SITE + "/identity/overloaded", persons.overloaded, methods=["GET"]),
    Route(SITE + "/privacy/erase", privacy.erase, methods=["POST"]),
    Route(SITE + "/privacy/access", privacy.access, methods=["GET"]),
    Route(SITE + "/export", export.export, methods=["GET"]),
    Route(SITE + "/stream", stream.stream, methods=["GET"]),
]
ROUTES += products.routes(SITE)  # top, trending, related: the read key
ROUTES += recommend.ROUTES  # the browser-safe variant under /t/{site}/recommend/
