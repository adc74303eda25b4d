"""Permutation importance on the holdout, bounded in time by a seeded subsample.

Shuffling one feature's column breaks its link with the target while keeping
its distribution; the drop in the primary metric is how much the model relies
on it, measured on rows it never saw (scikit-learn's ``permutation_importance``
on the raw features, so one-hot columns of a categorical count as one
feature). It costs (features × repeats + 1) predictions of the subsample,
which is why the subsample is bounded (``rows``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from threadpoolctl import threadpool_limits


def subsample(x: pd.DataFrame, y: pd.Series, rows: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """At most ``rows`` holdout rows, drawn without replacement with ``seed``."""
    if len(x) <= rows:
        return x, y
    picked = np.sort(np.random.default_rng(seed).choice(len(x), rows, replace=False))
    return x.iloc[picked], y.iloc[picked]


def importance(
    model: Any, x: pd.DataFrame, y: pd.Series, scoring: str, rows: int, repeats: int, seed: int
) -> dict[str, Any]:
    """Per feature the mean and spread of the metric's drop when it is shuffled, largest first."""
    xs, ys = subsample(x, y, rows, seed)
    with threadpool_limits(1, user_api="openmp"):
        found = permutation_importance(model, xs, ys, scoring=scoring, n_repeats=repeats, random_state=seed)
    ranked = sorted(
        ({"feature": name, "mean": float(m), "std": float(s)}
         for name, m, s in zip(x.columns, found.importances_mean, found.importances_std, strict=True)),
        key=lambda r: -r["mean"],
    )  # fmt: skip
    return {"method": "permutation", "scoring": scoring, "rows": len(xs), "repeats": repeats, "features": ranked}
