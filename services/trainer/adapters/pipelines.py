"""Fitted pipelines kept in a worker process's memory, by the sha256 of their skops bytes.

A worker runs job after job, and loading a pipeline from the store (skops
checks every type it rebuilds) took 11-13 s on a loaded machine, more than
the search it preceded. The champion of the next job is most often the model
the previous job trained; a drift job scores the earlier champions too (a
concept may recur); a re-judgement scores the challenger just trained and the
champion. So the few most recently used pipelines stay loaded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef

CAPACITY = 4
"""Pipelines kept at most; the least recently used goes first."""
_KEPT: OrderedDict[str, Any] = OrderedDict()


def load(store: ArtifactStore, ref: ArtifactRef) -> Any:
    """The pipeline ``ref`` names: from memory when this process trained or loaded it lately, else the store."""
    if ref.sha256 not in _KEPT:  # the same bytes, so the same object the store would give
        keep(ref.sha256, models.load(store, ref))
    _KEPT.move_to_end(ref.sha256)
    return _KEPT[ref.sha256]


def keep(sha256: str, pipeline: Any) -> None:
    """Keep ``pipeline`` (its skops bytes hash to ``sha256``), letting the least recently used go."""
    _KEPT[sha256] = pipeline
    _KEPT.move_to_end(sha256)
    while len(_KEPT) > CAPACITY:
        _KEPT.popitem(last=False)
