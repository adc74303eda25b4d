"""Live group metrics: the group of each labelled prediction per sensitive feature, and the figures
per group over the latest labelled predictions.

A dataset's sensitive features are model inputs (their values are in the logged prediction) or
attributes that are not inputs (their values come with the label: ``attributes`` on feedback). A value
that never reached the monitor is the group ``(unknown)``: counted and shown, never compared. The
figures are :mod:`libs.common.fairness`'s, the trainer's own on the holdout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from libs.common.groups import UNKNOWN_GROUP, comparable, group_name
from libs.common.schema import DatasetSchema, Task

if TYPE_CHECKING:
    from libs.common.fairness import FairnessReport


@dataclass(frozen=True, slots=True)
class Labelled:
    """One labelled prediction as the live group window holds it."""

    prediction: Any
    label: Any
    groups: Mapping[str, str]
    """Sensitive feature → group name."""


@dataclass(frozen=True, slots=True)
class GroupFigures:
    group: str
    count: int
    compared: bool
    """Known and at least ``min_group_rows``: part of the differences."""
    metrics: dict[str, float | None]


@dataclass(frozen=True, slots=True)
class FeatureGroups:
    feature: str
    source: Literal["input", "attribute"]
    """input (logged with the prediction) or attribute (sent with the label)."""
    unknown: int
    differences: dict[str, float]
    """metric → the largest gap between compared groups."""
    groups: list[GroupFigures]
    """Largest first."""


@dataclass(frozen=True, slots=True)
class LiveGroups:
    """The live group figures of one version over its latest labelled predictions."""

    version: int
    labels: int
    min_group_rows: int
    positive_class: str | None = None
    differences: dict[str, float] = field(default_factory=dict)
    """Flat ``<metric>:<feature>``, as the trainer's holdout figures are named."""
    features: list[FeatureGroups] = field(default_factory=list)


def live_groups(schema: DatasetSchema, version: int, rows: Sequence[Labelled], min_group_rows: int) -> LiveGroups:
    """Per sensitive feature: each group's figures, the unknown count and the differences."""
    report = live_report(schema, rows, min_group_rows)
    features = []
    for name in schema.sensitive:
        table = report.groups.get(name, []) if report is not None else []
        figures = sorted((_figures(row, min_group_rows) for row in table), key=lambda g: (-g.count, g.group))
        differences = report.differences if report is not None else {}
        features.append(FeatureGroups(
            feature=name, source="input" if schema.feature(name) is not None else "attribute",
            unknown=sum(g.count for g in figures if g.group == UNKNOWN_GROUP),
            differences={k.split(":", 1)[0]: v for k, v in differences.items() if k.split(":", 1)[1] == name},
            groups=figures,
        ))  # fmt: skip
    return LiveGroups(
        version=version, labels=len(rows), min_group_rows=min_group_rows,
        positive_class=report.positive_class if report else None,
        differences=dict(report.differences) if report else {}, features=features,
    )  # fmt: skip


def _figures(row: Mapping[str, Any], min_group_rows: int) -> GroupFigures:
    group, count = str(row["group"]), int(row["count"])
    metrics = {k: v for k, v in row.items() if k not in ("group", "count")}
    return GroupFigures(group, count, comparable(group, count, min_group_rows), metrics)


def input_groups(schema: DatasetSchema, features: Mapping[str, Any]) -> dict[str, str] | None:
    """The groups of the sensitive model inputs in a logged prediction (None: the schema has none).
    An input absent from the logged features is left out, so it ends up unknown, not "missing"."""
    inputs = [f for f in schema.features if f.name in schema.sensitive]
    if not inputs:
        return None
    return {f.name: group_name(features[f.name], f.dtype) for f in inputs if f.name in features}


def row_groups(
    schema: DatasetSchema, logged: Mapping[str, str] | None, attributes: Mapping[str, Any] | None
) -> dict[str, str]:
    """Each sensitive feature's group for one labelled prediction: a model input's as logged with the
    prediction, otherwise as sent with the label; ``(unknown)`` when neither carried it."""
    groups = {}
    for name in schema.sensitive:
        spec = schema.column(name)
        if logged and name in logged:
            groups[name] = logged[name]
        elif attributes and name in attributes:
            groups[name] = group_name(attributes[name], spec.dtype if spec else None)
        else:
            groups[name] = UNKNOWN_GROUP
    return groups


def live_report(schema: DatasetSchema, rows: Sequence[Labelled], min_group_rows: int) -> FairnessReport | None:
    """The group figures of these labelled predictions, or None without any.

    Classification compares labels and predictions as strings (as the live accuracy does); regression
    as numbers, rows that are not numbers left out."""
    if schema.task is Task.REGRESSION:
        rows = [r for r in rows if _number(r.prediction) and _number(r.label)]
    if not rows or not schema.sensitive:
        return None
    # pandas and fairlearn are imported here, not at start-up: most models declare no sensitive feature.
    import pandas as pd

    from libs.common.fairness import group_report

    if schema.task is Task.CLASSIFICATION:
        y, predicted = pd.Series([str(r.label) for r in rows]), np.array([str(r.prediction) for r in rows])
    else:
        y, predicted = pd.Series([float(r.label) for r in rows]), np.array([float(r.prediction) for r in rows])
    groups = pd.DataFrame({name: [r.groups.get(name, UNKNOWN_GROUP) for r in rows] for name in schema.sensitive})
    return group_report(schema, y, predicted, groups, min_group_rows)


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)
