"""Group metrics of a model on the holdout, per declared sensitive feature.

The definitions (fairlearn's ``MetricFrame``, the differences, how values become
groups) live in :mod:`libs.common.fairness`, which the monitor uses on live labels
too: a holdout figure and a live one of the same name measure the same thing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from libs.common.fairness import (
    CLASSIFICATION_DIFFERENCES,
    MISSING_GROUP,
    REGRESSION_DIFFERENCES,
    FairnessReport,
    classification_report,
    difference_key,
    group_frame,
    group_report,
    regression_report,
)
from libs.common.schema import DatasetSchema

__all__ = [
    "CLASSIFICATION_DIFFERENCES",
    "MISSING_GROUP",
    "REGRESSION_DIFFERENCES",
    "FairnessReport",
    "classification_report",
    "difference_key",
    "fairness_report",
    "regression_report",
]


def fairness_report(
    schema: DatasetSchema, model: Any, holdout: pd.DataFrame, x: pd.DataFrame, y: pd.Series, min_group_rows: int = 20
) -> FairnessReport | None:
    """Group metrics of ``model`` on the holdout rows (``holdout`` holds the sensitive columns, ``x`` the
    features); None when the schema declares no sensitive feature or the model cannot score these rows."""
    present = [name for name in schema.sensitive if name in holdout.columns]
    if not present:
        return None
    try:
        predicted = model.predict(x)
    except (ValueError, KeyError):  # a champion trained on another schema
        return None
    groups = group_frame(schema, holdout[present].reset_index(drop=True))
    return group_report(schema, y.reset_index(drop=True), predicted, groups, min_group_rows)
