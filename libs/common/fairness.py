"""Group metrics and fairness differences, per declared sensitive feature: one definition for the
trainer (on the holdout, for the card and the promotion gate) and the monitor (on live labels), so a
holdout figure and a live figure of the same name measure the same thing.

Computed with fairlearn's ``MetricFrame`` (one metric table per sensitive
feature, its ``difference()`` the largest gap between groups). fairlearn fits
the dependencies: a 140 KB pure-Python wheel whose only new dependency is
narwhals, on the numpy/pandas/scikit-learn already here. AIF360 would bring its
own dataset classes and a much larger dependency tree for the same figures.

What is computed, for each sensitive feature (a missing value is a group of
its own, ``(missing)``; live, a value that never reached the monitor is the group ``(unknown)``, shown
but never compared: it is not a group of people):

* classification: per-group accuracy, error rate, selection rate, true and
  false positive rates; ``demographic_parity_difference`` (the largest gap in
  selection rate), ``equalized_odds_difference`` (the larger of the largest
  TPR gap and the largest FPR gap) and ``accuracy_difference``. "Selection"
  is predicting the positive class: the schema's target categories' last one
  (or the last class in sorted order) for a binary target. For more classes,
  each class is taken as positive in turn (one against the rest) and the
  largest difference over classes is reported, so no class can hide a gap.
* regression: per-group MAE and RMSE, and ``mae_difference``.

Groups with fewer than ``min_group_rows`` rows are shown in the group
table but left out of the differences: a difference between a 3-row group and
the rest is noise, and the promotion gate compares differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error

from libs.common.groups import (
    CLASSIFICATION_DIFFERENCES,
    MISSING_GROUP,
    REGRESSION_DIFFERENCES,
    UNKNOWN_GROUP,
    comparable,
    difference_key,
    group_name,
)
from libs.common.schema import DatasetSchema, Task

__all__ = [
    "CLASSIFICATION_DIFFERENCES",
    "MISSING_GROUP",
    "REGRESSION_DIFFERENCES",
    "UNKNOWN_GROUP",
    "FairnessReport",
    "classification_report",
    "difference_key",
    "group_frame",
    "group_name",
    "group_report",
    "regression_report",
]


@dataclass(frozen=True)
class FairnessReport:
    """Per-feature group tables and the flat differences ``{"<metric>:<feature>": value}``."""

    differences: dict[str, float] = field(default_factory=dict)
    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per sensitive feature: one row per group (group, count, and the metrics)."""
    positive_class: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"differences": self.differences, "groups": self.groups, "positive_class": self.positive_class}


def group_frame(schema: DatasetSchema, values: pd.DataFrame) -> pd.DataFrame:
    """Sensitive columns as group names (:func:`group_name` with each column's declared type)."""
    return pd.DataFrame({
        name: [group_name(v, spec.dtype if (spec := schema.column(name)) else None) for v in values[name].tolist()]
        for name in values.columns
    })  # fmt: skip


def group_labels(values: pd.Series) -> pd.Series:
    """Group names as strings; a value still missing is its own group (names pass through unchanged)."""
    return values.astype(object).where(values.notna(), MISSING_GROUP).astype(str)


def _compared(counts: pd.Series, min_group_rows: int) -> pd.Index:
    """The groups to compare (a handful per feature: one check each)."""
    return pd.Index([g for g, n in counts.items() if comparable(str(g), int(n), min_group_rows)])


def _rows(by_group: pd.DataFrame, counts: pd.Series) -> list[dict[str, Any]]:
    rows = []
    for group, values in by_group.iterrows():
        row = {"group": str(group), "count": int(counts.get(group, 0))}
        row.update({k: _finite(v) for k, v in values.items()})
        rows.append(row)
    return rows


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


def _spread(values: pd.Series) -> float:
    finite = values.dropna()
    return float(finite.max() - finite.min()) if len(finite) > 1 else 0.0


def positive_class(schema: DatasetSchema, classes: list[str]) -> str | None:
    """The class whose prediction counts as "selected" for a binary target (None for more classes)."""
    declared = schema.target.categories
    if declared and len(declared) == 2 and set(classes) <= set(declared):
        return declared[-1]  # a live window may hold one class only; the target still has two
    if len(classes) != 2:
        return None
    return sorted(classes)[-1]


def classification_report(
    schema: DatasetSchema, y: pd.Series, predicted: np.ndarray, sensitive: pd.DataFrame, min_group_rows: int
) -> FairnessReport:
    truth, guess = y.astype(str).to_numpy(), np.asarray(predicted).astype(str)
    classes = sorted(set(truth) | set(guess))
    positive = positive_class(schema, classes)
    differences: dict[str, float] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    for feature in sensitive.columns:
        groups = group_labels(sensitive[feature])
        counts = groups.value_counts()
        large = _compared(counts, min_group_rows)
        cases = _cases(groups, truth, guess)
        accuracy = MetricFrame(
            metrics=accuracy_score,
            y_true=cases.truth,
            y_pred=cases.guess,
            sensitive_features=cases.groups,
            sample_params={"sample_weight": cases.weight},
        )
        table = pd.DataFrame({"accuracy": accuracy.by_group, "error_rate": 1 - accuracy.by_group}).astype(float)
        dp = eo = 0.0
        for cls in [positive] if positive is not None else classes:
            rates = _rates(cases, cls)
            if cls == positive:
                table = table.join(rates)
            rates = rates[rates.index.isin(large)]
            dp = max(dp, _spread(rates["selection_rate"]))
            eo = max(eo, _spread(rates["true_positive_rate"]), _spread(rates["false_positive_rate"]))
        differences[difference_key("demographic_parity_difference", feature)] = dp
        differences[difference_key("equalized_odds_difference", feature)] = eo
        gap = _spread(table["accuracy"][table.index.isin(large)])
        differences[difference_key("accuracy_difference", feature)] = gap
        tables[feature] = _rows(table, counts)
    return FairnessReport(differences, tables, positive)


@dataclass(frozen=True)
class _Cases:
    """The distinct (group, truth, prediction) cases of a classification and how many rows each stands for."""

    groups: pd.Series
    truth: np.ndarray
    guess: np.ndarray
    weight: np.ndarray


def _cases(groups: pd.Series, truth: np.ndarray, guess: np.ndarray) -> _Cases:
    """Rows folded into their distinct cases, each weighted by its count.

    Every classification figure here is a function of the per-group confusion counts, so fairlearn computes
    the same values from the weighted cases (``sample_weight``) as from the rows. Its metric wrapper costs
    microseconds per row and metric (it re-stacks each column element by element): on 10,000 rows and two
    sensitive features, seconds (bench/groups.py); folded, a few dozen cases per feature whatever the window,
    and what is left is MetricFrame's fixed cost.
    """
    folded = pd.DataFrame({"group": groups.to_numpy(), "truth": truth, "guess": guess}).value_counts(sort=False)
    index = folded.index.to_frame(index=False)
    return _Cases(pd.Series(index["group"].to_numpy(), name=groups.name), index["truth"].to_numpy(),
                  index["guess"].to_numpy(), folded.to_numpy())  # fmt: skip


def _rates(cases: _Cases, positive: str) -> pd.DataFrame:
    """Selection rate, TPR and FPR per group for one class taken as positive (fairlearn's MetricFrame)."""
    weight = {"sample_weight": cases.weight}
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
        },
        y_true=(cases.truth == positive).astype(int),
        y_pred=(cases.guess == positive).astype(int),
        sensitive_features=cases.groups,
        sample_params={"selection_rate": weight, "true_positive_rate": weight, "false_positive_rate": weight},
    )
    return frame.by_group.astype(float)


def regression_report(
    y: pd.Series, predicted: np.ndarray, sensitive: pd.DataFrame, min_group_rows: int
) -> FairnessReport:
    truth, guess = y.astype(float).to_numpy(), np.asarray(predicted, dtype=float)
    differences: dict[str, float] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    for feature in sensitive.columns:
        groups = group_labels(sensitive[feature])
        counts = groups.value_counts()
        frame = MetricFrame(
            metrics={"mae": mean_absolute_error, "rmse": lambda t, p: float(np.sqrt(mean_squared_error(t, p)))},
            y_true=truth, y_pred=guess, sensitive_features=groups,
        )  # fmt: skip
        table = frame.by_group.astype(float)
        kept = table[table.index.isin(_compared(counts, min_group_rows))]
        differences[difference_key("mae_difference", feature)] = _spread(kept["mae"])
        tables[feature] = _rows(table, counts)
    return FairnessReport(differences, tables)


def group_report(
    schema: DatasetSchema, y: pd.Series, predicted: np.ndarray, groups: pd.DataFrame, min_group_rows: int
) -> FairnessReport:
    """The classification or regression report, as the schema's task says; ``groups`` holds group names
    (:func:`group_frame`), one column per sensitive feature."""
    if schema.task is Task.CLASSIFICATION:
        return classification_report(schema, y, predicted, groups, min_group_rows)
    return regression_report(y, predicted, groups, min_group_rows)
