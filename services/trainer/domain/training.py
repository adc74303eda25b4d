"""Model training and evaluation: scikit-learn pipelines from a dataset schema.

A job trains a Pipeline (median imputation for numeric features, a string
marker for missing categoricals then one-hot encoding, then a histogram
gradient-boosting estimator). Every step converts to ONNX (see ``export``):
a categorical ``SimpleImputer`` that fills NaN with its most frequent value
does not, a constant string marker does, and it is what serving feeds an ONNX
model for a missing category anyway. Trees need no scaling, so there is none.

The search is built to finish in seconds and to stay bounded however many
classes there are:

* the estimator stops early on an inner validation split and its iterations
  are capped so that iterations × trees per iteration (one per class beyond
  two) stay under ``max_trees``;
* the first candidate is the champion's own hyperparameters (or the
  defaults), fitted on all training rows first until early stopping or the
  budget's end: it is the answer whenever the budget allows nothing more, and
  the budget cuts it short rather than wait for it;
* the other candidates compete by successive halving (all on a few rows, the
  best third on three times as many, ...), as many as the wall-time budget
  affords, estimated from the first fit's time; the clock is read before each
  candidate, so a machine busier than the estimate cuts the search short
  instead of stretching the job (the best candidate scored so far wins);
* the budget bounds the whole of ``train``: the champion's predictions and the
  challenger's are inside it too;
* each fit uses one OpenMP thread and the fits run in parallel threads
  instead: on a shared 2-core machine OpenMP threads that wait for a busy core
  made one fit ten times slower, and a 10-class model minutes long.

Everything is seeded, so the same data, seed and budget give the same model as
long as the budget is not what cut the search short.

The challenger and the current champion are scored on the same holdout: the
most recent rows, which neither has seen, and which resemble what serving will
meet next more closely than a random split would.

A drift job trains on the rows that arrived after the drift began, as the
monitor dated it: the start of the window that first looked wrong, which can
hold hundreds of rows of the old concept. For the first post-drift model,
trained on few rows, they are a large share, and wrong for the new concept
(half of them when old and new agree on half the space). So a drift job
(``trim_to_change``) first looks for the change itself in the champion's
errors over those rows, in order: a CUSUM of their ranks, which under no
change is a Brownian bridge, whose maximum has the Kolmogorov distribution.
When the change is significant (``change_alpha``) the rows before it are
dropped. The champion was trained before the drift and has not seen these
rows, so in-sample fit cannot fake a change.

After a drift the concept may still be moving (gradual drift: old and new
mixed for thousands of rows), so all the rows since the drift are not always
the best window. Jobs that train on the rows since a drift also fit the
chosen hyperparameters on only the newest share of the training rows
(``recent_shares``: a half, a quarter), and keep whichever model scores best
on the holdout, the newest rows, which none of them has seen: the window that
best predicts the present (Klinkenberg & Joachims, "Detecting concept drift
with support vector machines", ICML 2000, choose a window size the same way).
After an abrupt change all rows since it usually win (more rows of one
concept); half way through a transition the newest rows do. Offline, on the
loop benchmark's gradual stream, rows 12,500-24,000 since the alarm: all rows
0.878 on the last rows, the newest half 0.921 (the oracle 0.920).

Weighing rows by recency instead (``recency_half_life``, off by default) does
much the same for gradual drift, but scikit-learn's histogram gradient
boosting fits 3-4 times slower with any sample weights (4,000 rows: 0.7 s
unweighted, 2.3 s with recency weights, 3.2 s with weights all 1), so under
load a refresh was cut at its budget after 40 iterations; and weights cost an
abrupt change a third of its effective rows (regression stream, 5,000 rows
since the change: RMSE 1.22 unweighted, 1.40 weighted and cut).

Concepts recur (seasons, regimes, a promotion that ends): the concept a drift
job meets may be one an earlier champion already learnt, on more rows than
the drift job has. So a drift job also scores the earlier champions it is
given (``earlier``) on its holdout, the newest labelled rows, and when one of
them beats the model it just trained there, that earlier pipeline is the
job's model (``reused_version``), unchanged: it is registered as a new version
and judged against the champion like any other challenger.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from joblib import parallel_config
from scipy.stats import binom, kstwobign, rankdata
from scipy.stats import t as student_t
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, ParameterSampler, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from threadpoolctl import threadpool_limits

from libs.common.frames import MISSING_CATEGORY, features_frame
from libs.common.schema import DatasetSchema, DType, Task

PRIMARY_METRIC = {Task.CLASSIFICATION: "accuracy", Task.REGRESSION: "r2"}

#: Hyperparameters the search varies. The number of iterations is not one of
#: them: early stopping picks it, under the cap of ``iteration_cap``.
SEARCH_SPACE: dict[str, list[Any]] = {
    "learning_rate": [0.05, 0.1, 0.2],
    "max_leaf_nodes": [15, 31, 63],
    "max_depth": [None, 4, 8],
    "min_samples_leaf": [10, 20, 40],
    "l2_regularization": [0.0, 0.1, 1.0],
}
#: scikit-learn's defaults: the first candidate when there is no champion.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_leaf_nodes": 31,
    "max_depth": None,
    "min_samples_leaf": 20,
    "l2_regularization": 0.0,
}
#: Boosting iterations the always-made first fit makes before it first looks at the clock.
ITERATION_CHUNK = 20
#: Each halving round keeps the best 1/HALVING_FACTOR of its candidates on HALVING_FACTOR× the rows.
HALVING_FACTOR = 3


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 42
    n_iter: int = 9
    """Candidates at most, the first being the champion's hyperparameters."""
    cv_folds: int = 3
    holdout_fraction: float = 0.2
    max_rows: int = 50_000
    time_budget_s: float = 6.0
    """Wall time the search may take; the first candidate is always fitted."""
    first_fit_budget_s: float | None = None
    """Wall time the first candidate's fit may take when that is longer than ``time_budget_s`` (None: the
    same). A job answering a drift searches briefly, but its one fit should not be cut: under load a
    refresh on 20,000 post-drift rows, cut at a 1.5 s budget, stopped boosting early and scored r2 0.85
    where a whole fit scores 0.95 (the loop benchmark's regression stream), and lost to the champion."""
    n_jobs: int = 2
    """Parallel fits (threads) during the search, each fit single-threaded."""
    max_iter: int = 300
    """Boosting iterations at most (early stopping usually ends sooner)."""
    max_trees: int = 1500
    """Trees per model at most: iterations × trees per iteration (one per class beyond two)."""
    trim_to_change: bool = False
    """Drop the rows before a significant change in the champion's errors (drift jobs)."""
    change_alpha: float = 0.001
    """Significance of that change."""
    min_rows_after_change: int = 200
    """Rows that must remain after the change for the rows before it to be dropped."""
    recency_half_life: float = 0.0
    """Half-life of the rows' weights, as a share of the training rows, newest weighing 1 (0: all weigh alike)."""
    recent_shares: tuple[float, ...] = ()
    """Also fit on only the newest of these shares of the training rows; the best on the holdout is kept."""
    recent_min_rows: int = 1000
    """Training rows a newest-rows window needs to be tried."""


@dataclass
class TrainingResult:
    pipeline: Pipeline
    params: dict[str, Any]
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    primary_metric: str
    training_rows: int
    holdout_rows: int
    train_frame: pd.DataFrame
    train_predictions: np.ndarray
    holdout_frame: pd.DataFrame
    """The holdout's features, as the pipeline takes them (what the ONNX parity check runs on)."""
    search: str
    """How the search went (candidates, rounds, seconds), for the job's record."""
    dropped_rows: int = 0
    """Rows before a change in the champion's errors, left out (``trim_to_change``)."""
    reused_version: int | None = None
    """The earlier champion whose pipeline this is, when it beat the new model on the holdout."""
    window_rows: int | None = None
    """The newest training rows the model was fitted on, when such a window beat all of them (``recent_shares``)."""
    comparison: dict[str, Any] | None = None
    """The paired test against the champion on the holdout rows (``paired_comparison``); None without one."""
    holdout_loss_sd: float | None = None
    """Standard deviation of the model's per-row loss on the holdout (``losses``): with ``holdout_rows``, how
    precisely ``metrics`` are known (the monitor judges live figures against them with that error)."""


def numeric_columns(schema: DatasetSchema) -> list[str]:
    return [f.name for f in schema.features if f.dtype in (DType.NUMERIC, DType.INTEGER, DType.BOOLEAN)]


def categorical_columns(schema: DatasetSchema) -> list[str]:
    return [f.name for f in schema.features if f.dtype is DType.CATEGORICAL]


def iteration_cap(config: TrainingConfig, n_classes: int) -> int:
    """Boosting iterations allowed: a multi-class model grows one tree per class per iteration.

    Capping trees rather than iterations keeps a 10-class model's cost near a
    binary one's, whatever the number of classes.
    """
    trees_per_iteration = n_classes if n_classes > 2 else 1
    return max(10, min(config.max_iter, config.max_trees // trees_per_iteration))


def build_pipeline(schema: DatasetSchema, seed: int, max_iter: int = 300) -> Pipeline:
    """The untrained pipeline for ``schema``: preprocessing built from the declared types."""
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median"), numeric_columns(schema)),
            ("categorical", categorical, categorical_columns(schema)),
        ],
        remainder="drop",
    )
    stopping: dict[str, Any] = {
        "max_iter": max_iter,
        "early_stopping": True,
        "validation_fraction": 0.1,
        "n_iter_no_change": 10,
        "random_state": seed,
    }
    estimator: HistGradientBoostingClassifier | HistGradientBoostingRegressor
    if schema.task is Task.CLASSIFICATION:
        estimator = HistGradientBoostingClassifier(**stopping)
    else:
        estimator = HistGradientBoostingRegressor(**stopping)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def champion_params(champion: Any) -> dict[str, Any] | None:
    """The searched hyperparameters of a fitted champion pipeline, if it has them all."""
    try:
        params = champion.named_steps["model"].get_params()
    except (AttributeError, KeyError, TypeError):
        return None
    if not all(name in params for name in SEARCH_SPACE):
        return None
    return {name: params[name] for name in SEARCH_SPACE}


def candidates(config: TrainingConfig, start: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``start`` (the champion's hyperparameters, else the defaults) then seeded random draws."""
    first = start or DEFAULT_PARAMS
    draws = ParameterSampler(SEARCH_SPACE, n_iter=max(1, config.n_iter) * 2, random_state=config.seed)
    out = [first]
    for params in draws:
        if len(out) >= config.n_iter:
            break
        if params not in out:
            out.append(params)
    return out


def halving_rounds(n_candidates: int) -> list[int]:
    """Candidates in each round of successive halving, until at most ``HALVING_FACTOR`` are left
    for the last round, on all rows (a further round of one candidate would decide nothing)."""
    rounds = [n_candidates]
    while rounds[-1] > HALVING_FACTOR:
        rounds.append(math.ceil(rounds[-1] / HALVING_FACTOR))
    return rounds


def affordable(n_candidates: int, fit_s: float, remaining_s: float, cv_folds: int, n_jobs: int) -> int:
    """How many candidates successive halving can try in ``remaining_s``, given one full fit took ``fit_s``.

    Early rounds fit on a fraction of the rows, but a boosting iteration has a
    fixed cost (a tree per class) whatever the rows, and measured fits on a
    third of the rows cost nearly a full one: so every fit counts as a full one.
    The winner is refitted on all rows at the end. Fewer than two candidates
    means no search at all.
    """
    while n_candidates >= 2:
        cost = sum(halving_rounds(n_candidates)) * cv_folds * fit_s / max(1, n_jobs) + fit_s
        if cost <= remaining_s:
            return n_candidates
        n_candidates = math.ceil(n_candidates / HALVING_FACTOR) if n_candidates > HALVING_FACTOR else 1
    return 1


def evaluate(schema: DatasetSchema, model: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Holdout metrics; the primary one (accuracy or r2) is higher-is-better."""
    return scores(schema, model.predict(x), y)


def scores(schema: DatasetSchema, predicted: Any, y: pd.Series) -> dict[str, float]:
    """The metrics of ``predicted`` against the truth ``y`` (what ``evaluate`` reports).

    Plain numpy, the same figures as scikit-learn's ``accuracy_score``,
    ``f1_score(average="macro")``, ``r2_score``...: those validate their input
    at length, which cost a drift job nearly a second on a busy machine.
    """
    if schema.task is Task.CLASSIFICATION:
        truth, guess = y.astype(str).to_numpy(), np.asarray(predicted).astype(str)
        f1 = []
        for label in np.union1d(truth, guess):
            tp = float(np.sum((guess == label) & (truth == label)))
            wrong = float(np.sum(guess == label) + np.sum(truth == label)) - 2 * tp
            f1.append(2 * tp / (2 * tp + wrong) if tp or wrong else 0.0)
        return {"accuracy": float(np.mean(truth == guess)), "f1_macro": float(np.mean(f1))}
    actual, estimate = y.astype(float).to_numpy(), np.asarray(predicted, dtype=float)
    error = estimate - actual
    total = float(np.sum((actual - actual.mean()) ** 2))
    r2 = 1.0 - float(np.sum(error**2)) / total if total > 0 else (1.0 if not np.any(error) else 0.0)
    return {"r2": r2, "rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def _with_params(pipeline: Pipeline, params: dict[str, Any]) -> Pipeline:
    return pipeline.set_params(**{f"model__{k}": v for k, v in params.items()})


class SingleThreaded(Pipeline):  # type: ignore[misc]
    """A pipeline that fits and predicts with one OpenMP thread in whatever thread calls it.

    ``threadpool_limits`` sets the OpenMP thread count of the calling thread
    only: the search's worker threads would otherwise each start as many OpenMP
    threads as there are cores, and on a busy 2-core machine those spin waiting
    for one another (a 1.5 s search budget took 7.6 s, a 6 s one 19-31 s, in the
    loop benchmark). Used for the search only; the model kept is a plain Pipeline.
    """

    def fit(self, X: Any, y: Any = None, **params: Any) -> SingleThreaded:
        with threadpool_limits(1, user_api="openmp"):
            super().fit(X, y, **params)
        return self

    def predict(self, X: Any, **params: Any) -> Any:
        with threadpool_limits(1, user_api="openmp"):
            return super().predict(X, **params)

    def score(self, X: Any, y: Any = None, **params: Any) -> float:
        with threadpool_limits(1, user_api="openmp"):
            return float(super().score(X, y, **params))


def _folds(schema: DatasetSchema, config: TrainingConfig, y: pd.Series) -> KFold | StratifiedKFold:
    stratify = schema.task is Task.CLASSIFICATION and y.value_counts().min() >= config.cv_folds
    kind = StratifiedKFold if stratify else KFold
    return kind(config.cv_folds, shuffle=True, random_state=config.seed)


def _search(
    schema: DatasetSchema,
    config: TrainingConfig,
    pipeline: Pipeline,
    tried: list[dict[str, Any]],
    xyw: tuple[pd.DataFrame, pd.Series, np.ndarray | None],
    deadline: float,
    estimate_s: float,
) -> tuple[int, str]:
    """The index of the best of ``tried`` by successive halving under cross-validation, and how far it got.

    Round after round the candidates left are cross-validated on HALVING_FACTOR
    times more rows (a seeded random subset; all rows in the last round), and
    the best 1/HALVING_FACTOR go on. Before each candidate the clock is read:
    one that would end after ``deadline`` (its cost estimated from the one
    before it, ``estimate_s`` for the very first) is not started, and the best
    of the round so far wins, compared on the same rows. The candidates enter
    each round best first (the champion's hyperparameters first in the first
    round), so a search cut short still returns the best one it knows.
    """
    x, y, weights = xyw
    n_classes = y.nunique() if schema.task is Task.CLASSIFICATION else 1
    # The first round's rows: enough per class and fold for an early-stopping split to hold every class.
    floor = config.cv_folds * 20 * n_classes
    rounds = halving_rounds(len(tried))
    order = np.random.default_rng(config.seed).permutation(len(x))
    alive, best = list(range(len(tried))), 0
    for i in range(len(rounds)):
        rows = min(len(x), max(floor, len(x) // HALVING_FACTOR ** (len(rounds) - 1 - i)))
        subset = np.sort(order[:rows])
        scored: dict[int, float] = {}
        for c in alive:
            if time.monotonic() + estimate_s > deadline:
                break
            began = time.monotonic()
            scored[c] = _cross_validated(
                schema, config, _with_params(clone(pipeline), tried[c]),
                (x.iloc[subset], y.iloc[subset], None if weights is None else weights[subset]),
            )  # fmt: skip
            estimate_s = time.monotonic() - began
        if scored:
            best = min(scored, key=lambda c: (-scored[c], c))
        if len(scored) < len(alive):
            return best, f"cut at the budget in halving round {i + 1}/{len(rounds)} after {len(scored)}/{len(alive)}"
        if i + 1 < len(rounds):
            alive = sorted(scored, key=lambda c: (-scored[c], c))[: rounds[i + 1]]
    return best, f"{len(rounds)} halving rounds"


def _cross_validated(
    schema: DatasetSchema,
    config: TrainingConfig,
    pipeline: Pipeline,
    xyw: tuple[pd.DataFrame, pd.Series, np.ndarray | None],
) -> float:
    """Mean cross-validated primary metric of ``pipeline``, its folds fitted in parallel threads."""
    x, y, weights = xyw
    model = SingleThreaded(pipeline.steps)
    params = {} if weights is None else {"model__sample_weight": weights}
    # Threads, not processes: HistGradientBoosting releases the GIL while it builds trees, and
    # starting worker processes (each importing scikit-learn) took longer than the search itself.
    with parallel_config(backend="threading"):
        cv = cross_val_score(
            model, x, y, scoring=PRIMARY_METRIC[schema.task], cv=_folds(schema, config, y),
            n_jobs=config.n_jobs, error_score="raise", params=params,
        )  # fmt: skip
    return float(np.mean(cv))


def _fit(
    schema: DatasetSchema,
    config: TrainingConfig,
    start: dict[str, Any] | None,
    xyw: tuple[pd.DataFrame, pd.Series, np.ndarray | None],
    deadlines: tuple[float, float],
) -> tuple[Pipeline, dict[str, Any], str]:
    """The fitted pipeline, its hyperparameters and how the search went, by the search's deadline (the
    first fit's may be later), both ``time.monotonic()``.

    ``xyw``: the rows, their targets and their weights (None: all alike)."""
    x, y, weights = xyw
    deadline, fit_deadline = deadlines
    started = time.monotonic()
    n_classes = int(y.nunique()) if schema.task is Task.CLASSIFICATION else 1
    base = build_pipeline(schema, config.seed, iteration_cap(config, n_classes))
    tried = candidates(config, start)
    pipeline = fit_within(_with_params(clone(base), tried[0]), x, y, fit_deadline, weights)
    fit_s = time.monotonic() - started
    tried = tried[: affordable(len(tried), fit_s, deadline - time.monotonic(), config.cv_folds, config.n_jobs)]
    best, how = 0, "no search"
    if len(tried) > 1:
        # The winner is refitted on all rows: that fit's time is kept out of the search's.
        first = config.cv_folds * fit_s / max(1, config.n_jobs)
        best, how = _search(schema, config, clone(base), tried, xyw, deadline - fit_s, first)
        if best != 0:
            pipeline = _with_params(clone(base), tried[best]).fit(x, y, model__sample_weight=weights)
    note = f"{len(tried)} candidates ({how}) in {time.monotonic() - started:.1f}s (first fit {fit_s:.1f}s)"
    return pipeline, tried[best], note


def fit_within(
    pipeline: Pipeline, x: pd.DataFrame, y: pd.Series, deadline: float, weights: np.ndarray | None = None
) -> Pipeline:
    """Fit ``pipeline`` until early stopping, the iteration cap or ``deadline`` (``time.monotonic()``).

    This is the fit that always happens, so it is what bounds a job's time when
    even one full fit would not fit the budget (many classes, a slow machine):
    it is cut short, not skipped. It fits ``ITERATION_CHUNK`` boosting
    iterations, then (warm start, which keeps the validation split and the
    trees) as many more as the time left affords at the rate measured so far,
    and so on: usually two calls, since each call costs a re-binning. Until the
    deadline binds the result is deterministic and all but equal to one
    uninterrupted fit (early stopping may end an iteration or two apart).
    """
    preprocess = pipeline.named_steps["preprocess"].fit(x, y)
    features = preprocess.transform(x)
    model = pipeline.named_steps["model"]
    cap = model.max_iter
    started = time.monotonic()
    model.set_params(warm_start=True, max_iter=min(cap, ITERATION_CHUNK))
    while True:
        model.fit(features, y, sample_weight=weights)
        now = time.monotonic()
        if model.n_iter_ < model.max_iter or model.max_iter >= cap or now >= deadline:
            break
        rate = (now - started) / model.n_iter_
        more = max(ITERATION_CHUNK, int((deadline - now) / rate)) if rate > 0 else cap
        model.set_params(max_iter=min(cap, model.n_iter_ + more))
    model.set_params(warm_start=False, max_iter=cap)
    return pipeline


@dataclass(frozen=True)
class Change:
    index: int
    """First row after the change."""
    statistic: float
    p_value: float
    before: float
    after: float
    """Mean loss before and after."""


def change_point(losses: np.ndarray) -> Change | None:
    """Where the mean of ``losses`` (in row order) changed most, and how significantly.

    The CUSUM of the losses' ranks, scaled by their spread and sqrt(n), is a
    Brownian bridge when nothing changed; its largest excursion has the
    Kolmogorov distribution, and where it lies estimates the change. Ranks make
    it hold for 0/1 errors and for heavy-tailed squared errors alike.
    """
    n = len(losses)
    if n < 20:
        return None
    ranks = rankdata(losses)
    spread = float(ranks.std())
    if spread == 0:
        return None
    bridge = np.cumsum(ranks - ranks.mean())[:-1] / (spread * math.sqrt(n))
    k = int(np.argmax(np.abs(bridge)))
    statistic = float(abs(bridge[k]))
    return Change(k + 1, statistic, float(kstwobign.sf(statistic)), float(np.mean(losses[: k + 1])),
                  float(np.mean(losses[k + 1 :])))  # fmt: skip


def losses(schema: DatasetSchema, predicted: Any, y: pd.Series) -> np.ndarray:
    """Per-row loss of ``predicted``: 0/1 errors, or squared errors."""
    if schema.task is Task.CLASSIFICATION:
        return np.asarray(np.asarray(predicted).astype(str) != y.astype(str).to_numpy(), dtype=float)
    return np.asarray((np.asarray(predicted, dtype=float) - y.astype(float).to_numpy()) ** 2, dtype=float)


def paired_comparison(
    schema: DatasetSchema, challenger: Any, champion: Any, y: pd.Series, chosen_among: int = 1
) -> dict[str, Any]:
    """How strongly the same holdout rows say the challenger errs less than the champion (one-sided).

    Paired, because both models predict the same rows: the rows both get right
    or both get wrong say nothing about which is better, and comparing two
    accuracies as if independent wastes that. An absolute step in the metric
    (the registry's ``min_gain``) is noise on a few hundred rows and throws
    away a real gain on thousands (r2 0.943 against 0.938 on 1,800 rows, a
    4 % lower RMSE, was rejected in the loop benchmark).

    Classification: McNemar's exact test. Of the rows exactly one of the two
    gets right, each is the challenger's with probability 1/2 when neither is
    better; p is the chance of the challenger winning at least as many.
    Regression: a one-sided paired t-test on the differences of squared errors
    (their mean over hundreds of rows is close to normal).

    ``chosen_among``: how many models the same holdout chose the challenger from (the full fit, the
    newest-rows windows, earlier champions). The best of several looks better on it than it is, so
    the p-value is multiplied by their number (Bonferroni; conservative) before it is reported.
    """
    mine, theirs = losses(schema, challenger, y), losses(schema, champion, y)
    difference = theirs - mine
    n = len(difference)
    if schema.task is Task.CLASSIFICATION:
        wins, discordant = int(np.sum(difference > 0)), int(np.sum(difference != 0))
        p = float(binom.sf(wins - 1, discordant, 0.5)) if discordant else 1.0
        test = "mcnemar"
    else:
        p, test = _paired_t(difference), "paired_t"
    chosen_among = max(1, chosen_among)
    return {"test": test, "rows": n, "p_value": min(1.0, max(0.0, p * chosen_among)), "chosen_among": chosen_among,
            "loss_difference": float(np.mean(difference)) if n else 0.0}  # fmt: skip


def _paired_t(difference: np.ndarray) -> float:
    """One-sided p-value that the mean of ``difference`` is positive (1.0 with fewer than two rows)."""
    n = len(difference)
    if n < 2:
        return 1.0
    mean, spread = float(np.mean(difference)), float(np.std(difference, ddof=1))
    if spread == 0:
        return 0.0 if mean > 0 else 1.0
    return float(student_t.sf(mean / (spread / math.sqrt(n)), n - 1))


def rows_after_change(loss: np.ndarray, config: TrainingConfig) -> tuple[int, Change | None]:
    """How many leading rows predate a significant rise of the champion's per-row ``loss`` (0: none)."""
    change = change_point(loss)
    if change is None or change.p_value >= config.change_alpha or change.after <= change.before:
        return 0, change
    if len(loss) - change.index < config.min_rows_after_change:
        return 0, change
    return change.index, change


def recency_weights(rows: int, half_life: float) -> np.ndarray | None:
    """Row weights halving every ``half_life`` × ``rows`` rows back from the newest (None: all alike)."""
    if half_life <= 0 or rows == 0:
        return None
    age = np.arange(rows - 1, -1, -1, dtype=float)
    return np.asarray(0.5 ** (age / (half_life * rows)))


def recent_windows(rows: int, shares: Sequence[float], min_rows: int) -> list[int]:
    """The sizes of the newest-rows windows to try besides all ``rows``, largest first: each share of
    ``rows`` that leaves at least ``min_rows`` (a window of a few hundred rows would win the holdout by
    chance more often than it predicts better)."""
    return sorted({int(rows * s) for s in shares if 0 < s < 1 and int(rows * s) >= min_rows}, reverse=True)


def best_earlier(
    primary: str, challenger: dict[str, float], earlier: list[tuple[int, dict[str, float]]]
) -> tuple[int, dict[str, float]] | None:
    """The earlier champion (version, holdout metrics) that beats ``challenger`` on ``primary``, if any.

    Strictly better only: on a tie the model trained on the newest rows wins.
    Among several, the best; among equals, the newest version.
    """
    ahead = [(v, m) for v, m in earlier if m[primary] > challenger[primary]]
    return max(ahead, key=lambda vm: (vm[1][primary], vm[0])) if ahead else None


def _predict(model: Any | None, x: pd.DataFrame) -> np.ndarray | None:
    """``model``'s predictions for ``x``; None without a model or when it was trained on another schema."""
    if model is None:
        return None
    try:
        return np.asarray(model.predict(x))
    except (ValueError, KeyError):
        return None


def train(
    schema: DatasetSchema,
    frame: pd.DataFrame,
    config: TrainingConfig,
    champion: Any | None = None,
    earlier: Sequence[tuple[int, Any]] = (),
) -> TrainingResult:
    """Search, fit and evaluate a challenger (and the champion) on ``frame``, in row order.

    ``time_budget_s`` bounds the whole call, not the search alone: the
    champion's predictions (for the change point and its holdout figures) come
    first and are made once, and the time they took is set aside for the
    challenger's own predictions at the end (train and holdout rows in one call).

    ``earlier``: (version, pipeline) of earlier champions; one that beats the
    challenger on the holdout is returned instead (see the module docstring).
    """
    now = time.monotonic()
    deadline = now + config.time_budget_s
    fit_deadline = now + max(config.time_budget_s, config.first_fit_budget_s or 0.0)
    frame = frame.dropna(subset=[schema.target.name]).tail(config.max_rows).reset_index(drop=True)
    x_all, y_all = features_frame(schema, frame), frame[schema.target.name]
    if schema.task is Task.REGRESSION:
        y_all = y_all.astype(float)
    with threadpool_limits(1, user_api="openmp"):  # one thread per fit: see the module docstring
        began = time.monotonic()
        champion_predicted = _predict(champion, x_all)
        reserve = max(time.monotonic() - began, 0.05 * config.time_budget_s)
        dropped = 0
        if config.trim_to_change and champion_predicted is not None:
            dropped, _ = rows_after_change(losses(schema, champion_predicted, y_all), config)
        x_all, y_all = x_all.iloc[dropped:].reset_index(drop=True), y_all.iloc[dropped:].reset_index(drop=True)
        holdout_rows = max(1, int(len(x_all) * config.holdout_fraction))
        if len(x_all) - holdout_rows < config.cv_folds * 2:
            raise ValueError(f"too few rows to train: {len(x_all)}")
        x_train, y_train = x_all.iloc[:-holdout_rows], y_all.iloc[:-holdout_rows]
        x_hold, y_hold = x_all.iloc[-holdout_rows:], y_all.iloc[-holdout_rows:]
        weights = recency_weights(len(x_train), config.recency_half_life)
        # The models the holdout chooses among: this fit, each newest-rows window, each earlier champion.
        chosen_among = (
            1 + len(recent_windows(len(x_train), config.recent_shares, config.recent_min_rows)) + len(earlier)
        )
        pipeline, params, search = _fit(
            schema, config, champion_params(champion), (x_train, y_train, weights),
            (deadline - reserve, fit_deadline - reserve),
        )  # fmt: skip
        predicted = pipeline.predict(x_all)
        metrics = scores(schema, predicted[-holdout_rows:], y_hold)
        window = _recent_window(
            schema, config, pipeline, (x_train, y_train), (x_all, y_hold), metrics, fit_deadline - reserve
        )
        if window is not None:
            kept, pipeline, predicted, window_metrics = window
            primary = PRIMARY_METRIC[schema.task]
            search = f"{search}; the newest {kept} of {len(x_train)} training rows kept ({primary} " \
                     f"{window_metrics[primary]:.4f} on the holdout, all rows {metrics[primary]:.4f})"  # fmt: skip
            x_train, metrics = x_train.iloc[-kept:], window_metrics
        reused = _reuse(schema, earlier, x_all, y_hold, metrics)
    if dropped:
        search = f"{search}; {dropped} rows before the change left out"
    if reused is not None:
        version, pipeline, predicted, earlier_metrics = reused
        primary = PRIMARY_METRIC[schema.task]
        search = f"{search}; earlier champion v{version} reused ({primary} {earlier_metrics[primary]:.4f} " \
                 f"on the holdout, the new model {metrics[primary]:.4f})"  # fmt: skip
        params, metrics = {**(champion_params(pipeline) or {}), "reused_version": version}, earlier_metrics
    champion_metrics, comparison = None, None
    if champion_predicted is not None:
        champion_hold = champion_predicted[dropped:][-holdout_rows:]
        champion_metrics = scores(schema, champion_hold, y_hold)
        comparison = paired_comparison(schema, predicted[-holdout_rows:], champion_hold, y_hold, chosen_among)
    held_out = losses(schema, predicted[-holdout_rows:], y_hold)
    return TrainingResult(
        pipeline=pipeline,
        params={**params, "iterations": int(pipeline.named_steps["model"].n_iter_)},
        metrics=metrics,
        champion_metrics=champion_metrics,
        primary_metric=PRIMARY_METRIC[schema.task],
        training_rows=len(x_train),
        holdout_rows=holdout_rows,
        train_frame=x_train,
        train_predictions=predicted[:-holdout_rows][-len(x_train) :],
        holdout_frame=x_hold,
        search=search,
        dropped_rows=dropped,
        reused_version=reused[0] if reused is not None else None,
        window_rows=window[0] if window is not None else None,
        comparison=comparison,
        holdout_loss_sd=float(np.std(held_out, ddof=1)) if len(held_out) > 1 else None,
    )


def _recent_window(
    schema: DatasetSchema,
    config: TrainingConfig,
    pipeline: Pipeline,
    train_rows: tuple[pd.DataFrame, pd.Series],
    holdout: tuple[pd.DataFrame, pd.Series],
    metrics: dict[str, float],
    deadline: float,
) -> tuple[int, Pipeline, np.ndarray, dict[str, float]] | None:
    """The newest-rows window whose model beats ``pipeline`` (fitted on all training rows) on the holdout:
    (its rows, its pipeline, its predictions on all rows, its holdout metrics); None when none does.
    ``holdout``: all rows (the training rows, then the holdout's) and the holdout's truth.

    Each window is fitted with ``pipeline``'s hyperparameters, as long as ``deadline`` has not passed;
    only a strictly better primary metric wins (on a tie, more rows).
    """
    x_train, y_train = train_rows
    x_all, y_hold = holdout
    primary = PRIMARY_METRIC[schema.task]
    best: tuple[int, Pipeline, dict[str, float]] | None = None
    for rows in recent_windows(len(x_train), config.recent_shares, config.recent_min_rows):
        if time.monotonic() >= deadline:
            break
        weights = recency_weights(rows, config.recency_half_life)
        model = fit_within(clone(pipeline), x_train.iloc[-rows:], y_train.iloc[-rows:], deadline, weights)
        scored = scores(schema, model.predict(x_all.iloc[len(x_train) :]), y_hold)
        if scored[primary] > (best[2] if best else metrics)[primary]:
            best = (rows, model, scored)
    if best is None:
        return None
    rows, model, scored = best
    return rows, model, np.asarray(model.predict(x_all)), scored


def _reuse(
    schema: DatasetSchema,
    earlier: Sequence[tuple[int, Any]],
    x_all: pd.DataFrame,
    y_hold: pd.Series,
    challenger: dict[str, float],
) -> tuple[int, Any, np.ndarray, dict[str, float]] | None:
    """The earlier champion that beats the challenger on the holdout: (version, pipeline, its predictions
    on all rows, its holdout metrics); None when none does (or none predicts this schema)."""
    x_hold = x_all.iloc[-len(y_hold) :]
    scored = [(v, scores(schema, guess, y_hold)) for v, m in earlier if (guess := _predict(m, x_hold)) is not None]
    best = best_earlier(PRIMARY_METRIC[schema.task], challenger, scored)
    if best is None:
        return None
    model = dict(earlier)[best[0]]
    return best[0], model, np.asarray(model.predict(x_all)), best[1]
