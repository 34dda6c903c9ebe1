"""Caps on concurrent uses of an expensive endpoint, per key (a site): one ``Slots`` per
app, hence per collector. A request past the cap is answered 429, not queued."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request


@dataclass
class Slots:
    """Concurrent uses per key, with a cap."""

    most: int
    used: dict[str, int] = field(default_factory=dict)

    def take(self, key: str) -> bool:
        if self.used.get(key, 0) >= self.most:
            return False
        self.used[key] = self.used.get(key, 0) + 1
        return True

    def give(self, key: str) -> None:
        self.used[key] -= 1
        if not self.used[key]:
            del self.used[key]


def slots(request: Request, name: str, most: int) -> Slots:
    """The app's ``Slots`` of this name (one per app: per collector)."""
    state = request.app.state
    found = getattr(state, name, None)
    if found is None:
        found = Slots(most)
        setattr(state, name, found)
    return found
