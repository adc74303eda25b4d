"""A worker keeps its few most recently used pipelines in memory (services/trainer/adapters/pipelines.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.artifacts import ArtifactStore
from libs.common.errors import ArtifactNotFound
from libs.common.events import ArtifactRef
from services.trainer.adapters import pipelines


def _ref(n: int) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///nowhere/{n}.skops", sha256=f"{n:064x}", size=1)


def test_the_least_recently_used_pipeline_goes_first_and_kept_ones_never_touch_the_store(tmp_path: Path) -> None:
    empty = ArtifactStore(str(tmp_path))  # nothing in it: a pipeline read from it would fail
    kept = {n: object() for n in range(pipelines.CAPACITY + 1)}
    for n in range(pipelines.CAPACITY):
        pipelines.keep(_ref(n).sha256, kept[n])
    assert pipelines.load(empty, _ref(0)) is kept[0]  # used again: now the most recent
    pipelines.keep(_ref(pipelines.CAPACITY).sha256, kept[pipelines.CAPACITY])  # one too many: 1 goes, not 0
    assert pipelines.load(empty, _ref(0)) is kept[0]
    for n in range(2, pipelines.CAPACITY + 1):
        assert pipelines.load(empty, _ref(n)) is kept[n]
    with pytest.raises(ArtifactNotFound):  # forgotten: read from the store, where it is not
        pipelines.load(empty, _ref(1))
