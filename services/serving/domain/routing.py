"""Traffic splits from aliases: which version answers a request, and which one shadows it.

``champion`` serves (the :class:`~services.serving.domain.models.ModelTable`);
this module adds, per model, the ``canary`` with its share of the traffic and
the ``shadow`` that gets a copy of every request. It is consulted on every
predict request, so it is plain data and arithmetic: one dict lookup when a
model has no split, a hash or a random draw when it has one, and no I/O. The
split changes only when ``model.promoted`` moves the canary or shadow alias
(the share travels in that event), never by asking a database.

A caller that sends a routing key (a customer id, a session) always reaches
the same side of the split for a given share: the key is hashed with BLAKE2b,
which is stable across processes and replicas (Python's ``hash`` is salted
per process) and spreads similar keys (``customer-1``, ``customer-2``)
uniformly. Raising the share only moves keys from the champion to the canary,
never back: a key's point on [0, 100) is fixed, and the canary takes the
points below its share. Requests without a key are split at random.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

M = TypeVar("M")

CANARY = "canary"
SHADOW = "shadow"
CHAMPION = "champion"


@functools.lru_cache(maxsize=1024)
def _keyed(salt: str) -> Any:
    # A hasher primed with the salt, copied per key: about 2.5x faster than a new one with ``person``.
    return hashlib.blake2b(digest_size=8, person=salt.encode()[:16])


def sticky_point(key: str, salt: str = "") -> float:
    """The routing key's fixed point on [0, 100); ``salt`` (the model) gives each model its own split."""
    hasher = _keyed(salt).copy()
    hasher.update(key.encode())
    return int.from_bytes(hasher.digest(), "big") * (100.0 / 2**64)


@dataclass(frozen=True)
class Split(Generic[M]):
    """A model's canary (with its share, in percent) and shadow; either may be absent."""

    canary: M | None = None
    share: float = 0.0
    shadow: M | None = None

    def to_canary(self, model: str, key: str | None, rng: random.Random) -> bool:
        """Whether this request goes to the canary: by the key's point when there is a key, else at random."""
        if self.canary is None or self.share <= 0.0:
            return False
        point = sticky_point(key, model) if key is not None else rng.random() * 100.0
        return point < self.share


class Splits(Generic[M]):
    """Model → its :class:`Split`; a model without canary or shadow has no entry (the common, cheapest case)."""

    def __init__(self, seed: int | None = None) -> None:
        self._splits: dict[str, Split[M]] = {}
        self.rng = random.Random(seed)
        """Draws for requests without a routing key (seeded in tests, so a split's count is reproducible)."""

    def get(self, model: str) -> Split[M] | None:
        return self._splits.get(model)

    def set_canary(self, model: str, canary: M | None, share: float = 0.0) -> None:
        """Point the canary at ``canary`` with ``share`` percent of the traffic (None clears it)."""
        self._put(model, replace(self._splits.get(model) or Split(), canary=canary, share=share if canary else 0.0))

    def set_shadow(self, model: str, shadow: M | None) -> None:
        """Copy every request of ``model`` to ``shadow`` (None stops the copies)."""
        self._put(model, replace(self._splits.get(model) or Split(), shadow=shadow))

    def _put(self, model: str, split: Split[M]) -> None:
        # One assignment: a request holds the Split it read, so it never sees half a change.
        if split.canary is None and split.shadow is None:
            self._splits.pop(model, None)
        else:
            self._splits[model] = split

    def pick(self, model: str, champion: M, key: str | None) -> tuple[M, str]:
        """The version that answers this request and its alias."""
        split = self._splits.get(model)
        if split is not None and split.canary is not None and split.to_canary(model, key, self.rng):
            return split.canary, CANARY
        return champion, CHAMPION

    def all(self) -> dict[str, Split[M]]:
        return dict(self._splits)
