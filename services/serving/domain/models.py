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
from typing import Protocol

import numpy as np

from libs.common.events import ArtifactRef, OnnxExport
from libs.common.schema import DatasetSchema
from services.serving.domain.batching import MicroBatcher
from services.serving.domain.features import Columns, CompiledSchema


@dataclass(frozen=True)
class Inference:
    """One inference call's answer: a label (or value) per row, and class probabilities for classifiers."""

    labels: np.ndarray
    probabilities: np.ndarray | None

    def slice(self, start: int, stop: int) -> Inference:
        probs = self.probabilities[start:stop] if self.probabilities is not None else None
        return Inference(self.labels[start:stop], probs)

    @staticmethod
    def concat(parts: list[Inference]) -> Inference:
        matrices = [p.probabilities for p in parts if p.probabilities is not None]
        matrix = np.concatenate(matrices) if len(matrices) == len(parts) else None
        return Inference(np.concatenate([p.labels for p in parts]), matrix)


class ModelRuntime(Protocol):
    """What runs a version: onnxruntime or scikit-learn (``services.serving.adapters.runtimes``)."""

    name: str
    classes: list[str] | None
    inline_rows: int
    """Batches up to this many rows are inferred on the event loop; bigger ones in a thread."""

    def infer(self, columns: Columns) -> Inference: ...


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a version is served by, and why (shown by ``GET /v1/models/{m}``)."""

    runtime: ModelRuntime
    reason: str


@dataclass(frozen=True)
class BatchPolicy:
    """Micro-batching bounds (from the service's settings)."""

    enabled: bool = True
    max_rows: int = 256
    max_wait_s: float = 0.001
    observe: Callable[[str, int, int], None] | None = None
    """Told (model, requests, rows) of every inference call, for metrics."""


@dataclass(frozen=True)
class LoadedModel:
    model: str
    version: int
    choice: RuntimeChoice
    schema: DatasetSchema
    artifact: ArtifactRef
    generation: float
    """Ordering of the promotion that loaded it (event time); a late, older load never wins."""
    onnx: OnnxExport | None = None
    memory_bytes: int | None = None
    """What serving this version costs in memory: the growth of the process's resident memory while it
    loaded and made its first inference (loads run one at a time; None where /proc is unavailable)."""
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    batching: BatchPolicy = field(default_factory=lambda: BatchPolicy())
    compiled: CompiledSchema = field(init=False)
    """The schema's checks, compiled once for this version."""
    batcher: MicroBatcher[Columns, Inference] = field(init=False)
    """Gathers concurrent requests for this version (and only this version) into one inference call."""

    def __post_init__(self) -> None:
        runtime, policy, model = self.choice.runtime, self.batching, self.model
        observe = policy.observe
        batcher = MicroBatcher(
            runtime.infer, Columns.concat, inline_rows=runtime.inline_rows,
            max_rows=policy.max_rows, max_wait_s=policy.max_wait_s, enabled=policy.enabled,
            on_call=(lambda requests, rows: observe(model, requests, rows)) if observe is not None else None,
        )  # fmt: skip
        object.__setattr__(self, "compiled", CompiledSchema(self.schema))
        object.__setattr__(self, "batcher", batcher)

    @property
    def runtime(self) -> ModelRuntime:
        return self.choice.runtime

    @property
    def classes(self) -> list[str] | None:
        return self.runtime.classes


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
