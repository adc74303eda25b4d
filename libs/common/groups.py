"""Group names and difference names for fairness figures: the light half of :mod:`libs.common.fairness`.

Kept apart so the monitor can name the group of each labelled prediction on its hot path without
importing pandas and fairlearn (seconds at start-up); the figures themselves are computed by
:mod:`libs.common.fairness`, for the trainer's holdout and the monitor's live window alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from libs.common.schema import DType

MISSING_GROUP = "(missing)"
"""The group of a missing (null) value."""
UNKNOWN_GROUP = "(unknown)"
"""Live only: the group of a prediction whose sensitive value never reached the monitor (an attribute
not sent with its label). Shown with its count, never compared: it is not a group of people."""
#: The differences a challenger may not make worse (lower is fairer for each).
CLASSIFICATION_DIFFERENCES = ("demographic_parity_difference", "equalized_odds_difference", "accuracy_difference")
REGRESSION_DIFFERENCES = ("mae_difference",)


def difference_key(metric: str, feature: str) -> str:
    """The flat name of one difference, as events, the registry and the gate carry it."""
    return f"{metric}:{feature}"


def group_name(value: Any, dtype: DType | None = None) -> str:
    """One sensitive value as its group's name, the same whether it comes from a Parquet holdout (numpy
    scalars, NaN) or a JSON request (int, float, bool, None): whole numbers without ".0", booleans as
    true/false, a missing value ``(missing)``."""
    if value is None or (isinstance(value, float | np.floating) and not np.isfinite(value)):
        return MISSING_GROUP
    if dtype is DType.BOOLEAN or isinstance(value, bool | np.bool_):
        return str(value).lower() if isinstance(value, str) else str(bool(value)).lower()
    if dtype in (DType.NUMERIC, DType.INTEGER) and not isinstance(value, str):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def comparable(group: str, count: int, min_group_rows: int) -> bool:
    """Whether a group enters the differences: large enough, and not the unknown group (which is not a
    group of people)."""
    return group != UNKNOWN_GROUP and count >= min_group_rows
