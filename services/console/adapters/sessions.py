"""Who holds a session: the token's principal and roles, asked of the registry (``GET /v1/whoami``)
and kept for a few seconds so a page does not cost an extra round trip per click."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from services.console.adapters.backends import Backends


@dataclass(frozen=True)
class Person:
    """The signed-in principal."""

    name: str
    roles: tuple[str, ...]
    token: str


class Sessions:
    def __init__(self, backends: Backends, cache_s: float) -> None:
        self.backends = backends
        self.cache_s = cache_s
        self._known: dict[str, tuple[Person, float]] = {}

    async def person(self, token: str) -> Person:
        """The principal of ``token``; Unauthorized (from the registry) when it is not valid."""
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._known.get(key)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        found = await self.backends.get("registry", "/v1/whoami", token)
        person = Person(found["principal"], tuple(found["roles"]), token)
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[key] = (person, time.monotonic() + self.cache_s)
        return person

    def forget(self, token: str) -> None:
        self._known.pop(hashlib.sha256(token.encode()).hexdigest(), None)
