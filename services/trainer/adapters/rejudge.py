"""Re-scoring a challenger against a newer champion, in a worker process.

A challenger's comparison goes stale when the champion changes while it
trains. Throwing it away would discard a model that may be much better;
re-using the old figures would compare it with a model that no longer
serves. So both are scored again on the challenger's own holdout (stored
next to it). The challenger never saw those rows; the newer champion may
have, which can only favour the champion, never the challenger.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq

from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef
from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema, Task
from services.trainer.adapters import pipelines
from services.trainer.domain.fairness import fairness_report
from services.trainer.domain.training import paired_comparison, scores


def rejudge(spec: dict[str, Any]) -> dict[str, Any]:
    """Metrics of the challenger and of the current champion on the challenger's holdout, and their paired test."""
    store = ArtifactStore(spec["artifacts_root"])
    schema = DatasetSchema.model_validate(spec["dataset_schema"])
    holdout = pq.read_table(io.BytesIO(store.get(ArtifactRef.model_validate(spec["holdout"])))).to_pandas()
    x, y = features_frame(schema, holdout), holdout[schema.target.name]
    if schema.task is Task.REGRESSION:
        y = y.astype(float)
    # Usually in the worker that trained the challenger, and the champion too: both still in memory.
    challenger = pipelines.load(store, ArtifactRef.model_validate(spec["challenger"]))
    champion = pipelines.load(store, ArtifactRef.model_validate(spec["champion"]))
    mine, theirs = (fairness_report(schema, m, holdout, x, y, spec.get("min_group_rows", 20))
                    for m in (challenger, champion))  # fmt: skip
    mine_predicted, theirs_predicted = challenger.predict(x), champion.predict(x)
    return {
        "metrics": scores(schema, mine_predicted, y),
        "champion_metrics": scores(schema, theirs_predicted, y),
        "comparison": paired_comparison(schema, mine_predicted, theirs_predicted, y),
        "holdout_rows": len(holdout),
        "fairness": mine.differences if mine else None,
        "champion_fairness": theirs.differences if theirs else None,
    }


def holdout_parquet(frame: Any) -> bytes:
    """The holdout rows as Parquet bytes (what ``rejudge`` reads back)."""
    import pyarrow as pa

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()
