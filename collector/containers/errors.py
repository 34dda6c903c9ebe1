"""Validation errors that name the field, a missing version, a stale draft ETag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# -- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    field: str  # a JSON path: tags[2].purpose; "" for the document itself
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "error": str(self)}


class ContainerError(ValueError):
    """A container was refused; ``errors`` name every problem found, in document order."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @property
    def field(self) -> str:
        return self.errors[0].field if self.errors else ""


class NotFound(LookupError):
    """An unknown version."""


class PreconditionFailed(Exception):
    """The draft is no longer the one the caller's If-Match names; ``current`` is its ETag."""

    def __init__(self, current: str) -> None:
        self.current = current
        super().__init__(f"the draft has changed: its ETag is now {current}; "
                         "read it again and redo the change")
