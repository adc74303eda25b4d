"""The models serving holds, and how one replaces another without a failed request.

A :class:`LoadedModel` is immutable. A request takes the current one for its
model once, at its start, and uses only that; a swap replaces the reference
in one assignment. So a request never sees half a swap, never waits for a
load (loading happens before the swap, off the event loop), and a request
that began on v1 finishes on v1 while the next one already runs on v2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from libs.common.events import ArtifactRef
from libs.common.schema import DatasetSchema


@dataclass(frozen=True)
class LoadedModel:
    model: str
    version: int
    pipeline: Any
    schema: DatasetSchema
    artifact: ArtifactRef
    generation: float
    """Ordering of the promotion that loaded it (event time); a late, older load never wins."""
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def classes(self) -> list[str] | None:
        classes = getattr(self.pipeline, "classes_", None)
        return [str(c) for c in classes] if classes is not None else None


class ModelTable:
    """Model name → the model currently served for it."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._on_change = on_change

    def get(self, model: str) -> LoadedModel | None:
        return self._models.get(model)

    def offer(self, loaded: LoadedModel) -> bool:
        """Swap ``loaded`` in unless something newer is already served; True if it was."""
        current = self._models.get(loaded.model)
        if current is not None and current.generation > loaded.generation:
            return False
        self._models[loaded.model] = loaded
        if self._on_change is not None:
            self._on_change(len(self._models))
        return True

    def all(self) -> list[LoadedModel]:
        return list(self._models.values())
