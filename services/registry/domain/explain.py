"""Per-feature contributions to single predictions: Shapley values estimated by permutation sampling.

For an instance x, a random order of the features and a background row b
(from the version's holdout), the features are switched one by one from b's
value to x's; each feature is credited with the change of the model's output
its switch caused (Štrumbelj & Kononenko, 2014, the sampling estimate of the
interventional Shapley value). Averaged over ``samples`` orders and background
rows, the contributions add up *exactly* to f(x) minus the mean of f over the
background rows drawn (every path telescopes from f(b) to f(x)); the estimate's
noise falls as 1/sqrt(samples).

Why not shap's TreeExplainer: its wheels pull numba and llvmlite (tens of MB)
into the service image, and the pipeline is preprocessing + a histogram
gradient-boosting model whose multi-class form it does not support; this
method needs only ``predict``/``predict_proba`` of the whole pipeline, so the
contributions are per raw feature (a one-hot categorical counts once) and any
runtime could be explained the same way. It is model-agnostic and costs
instances × samples × (features + 1) predictions, made in one batch.

The output explained: the predicted class's probability (classification), the
prediction itself (regression).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Rows scored per explanation request at most (instances × samples × (features + 1)).
MAX_ROWS = 200_000


@dataclass(frozen=True)
class Explanation:
    base_value: float
    """Mean output over the background rows drawn."""
    output: float
    """The model's output for the instance: base_value + sum of contributions."""
    contributions: dict[str, float]


def samples_within(requested: int, instances: int, features: int) -> int:
    """Samples per instance, cut so that one request scores at most ``MAX_ROWS`` rows."""
    return max(1, min(requested, MAX_ROWS // max(1, instances * (features + 1))))


def coalitions(x: pd.DataFrame, background: pd.DataFrame, samples: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows to score: for each instance and sample, a background row turned into the instance one
    feature at a time in a random order; and, per row, the feature switched last (-1 for the start)."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    orders = np.argsort(rng.random((n * samples, d)), axis=1)  # one permutation per (instance, sample)
    rank = np.argsort(orders, axis=1)  # rank[p, j]: when feature j is switched on path p
    step = np.tile(np.arange(d + 1), n * samples)  # 0..d on each path
    path = np.repeat(np.arange(n * samples), d + 1)
    switched = rank[path] < step[:, None]  # (rows, d): feature already x's value
    instance = path // samples
    drawn = rng.integers(0, len(background), n * samples)[path]
    columns = {}
    for j, name in enumerate(x.columns):
        mine, theirs = x[name].to_numpy()[instance], background[name].to_numpy()[drawn]
        columns[name] = np.where(switched[:, j], mine, theirs)
    last = np.where(step == 0, -1, orders[path, np.maximum(step - 1, 0)])
    return pd.DataFrame(columns).astype(x.dtypes.to_dict()), last


def explain(
    output: Callable[[pd.DataFrame, np.ndarray], np.ndarray],
    x: pd.DataFrame,
    background: pd.DataFrame,
    samples: int = 64,
    seed: int = 0,
) -> list[Explanation]:
    """Contributions per feature for each row of ``x``.

    ``output(rows, instance)`` gives the model's output for ``rows``, each row
    belonging to instance ``instance[k]`` (so a classifier can report the class
    predicted for that instance).
    """
    n, d = x.shape
    rows, last = coalitions(x, background, samples, seed)
    instance = np.repeat(np.arange(n * samples), d + 1) // samples
    values = np.asarray(output(rows, instance), dtype=float).reshape(n, samples, d + 1)
    gains = np.diff(values, axis=2)  # gain of each switch along each path
    features = last.reshape(n, samples, d + 1)[:, :, 1:]
    out = []
    for i in range(n):
        totals = np.zeros(d)
        np.add.at(totals, features[i].ravel(), gains[i].ravel())
        contributions = totals / samples
        base = float(values[i, :, 0].mean())
        out.append(Explanation(base, base + float(contributions.sum()),
                               {name: float(c) for name, c in zip(x.columns, contributions, strict=True)}))  # fmt: skip
    return out
