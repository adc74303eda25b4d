"""What a job adds for governance, in the worker after training: group metrics on the holdout for the
challenger and the champion (the promotion gate compares them) and, later in the job, the cards' facts.

Kept out of ``worker`` so training itself stays one readable flow; everything here is computed from
what the job already holds in memory (the rows, the fitted pipeline, the champion).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema, Task
from services.trainer.domain.fairness import FairnessReport, fairness_report
from services.trainer.domain.training import TrainingResult


def holdout_rows(schema: DatasetSchema, frame: pd.DataFrame, result: TrainingResult) -> pd.DataFrame:
    """The holdout as ``train`` split it (the newest labelled rows), with every stored column."""
    return frame.dropna(subset=[schema.target.name]).tail(result.holdout_rows).reset_index(drop=True)


def holdout_target(schema: DatasetSchema, holdout: pd.DataFrame) -> pd.Series:
    y = holdout[schema.target.name]
    return y.astype(float) if schema.task is Task.REGRESSION else y


def fairness(
    schema: DatasetSchema, holdout: pd.DataFrame, result: TrainingResult, champion: Any, min_group_rows: int
) -> tuple[FairnessReport | None, FairnessReport | None]:
    """The challenger's and the champion's group metrics on the same holdout (None: nothing declared or
    no champion comparable on these rows)."""
    if not schema.sensitive:
        return None, None
    x, y = features_frame(schema, holdout), holdout_target(schema, holdout)
    mine = fairness_report(schema, result.pipeline, holdout, x, y, min_group_rows)
    theirs = None
    if champion is not None and result.champion_metrics is not None:
        theirs = fairness_report(schema, champion, holdout, x, y, min_group_rows)
    return mine, theirs
