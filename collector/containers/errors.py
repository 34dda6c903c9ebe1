"""Validation errors that name the field, and a missing version."""

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
