"""Benchmark of a retrain: the search as it was (before "retraining in seconds") against today's.

For each synthetic stream (20k × 10 binary features, 20k × 10 mixed numeric and
categorical with missing values, 10 classes × 24 binary features, regression)
it trains with both searches on the same rows and prints, side by side, the
wall time and the holdout metric (accuracy, or r2) of each, and the ONNX
export's time and parity for today's model.

The old search is reproduced here as it was: imputation (most frequent value
for categoricals) + scaling + one-hot, HistGradientBoosting with up to 200
iterations and OpenMP threads on every core, 6 random candidates × 3 folds,
one process. On a machine whose cores are busy, OpenMP threads that wait for
each other made that search far slower still (a single 10-class fit took
minutes); ``--old-threads 1`` runs the old search with one OpenMP thread, which
flatters it, to get its holdout metric within the time limit. Every run happens in its own process with a time limit
(``--timeout``), so a search that would take minutes shows as "> N s" instead
of stalling the benchmark.

Run it with `make bench-training` (``BENCH_ARGS="--rows 5000"`` for a quicker
pass).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification, make_friedman1
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, RandomizedSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema, Task
from services.trainer.domain import export, training

OLD_SPACE: dict[str, list[Any]] = {
    "model__learning_rate": [0.03, 0.05, 0.1, 0.2],
    "model__max_depth": [None, 3, 5, 8],
    "model__max_iter": [100, 200],
    "model__min_samples_leaf": [10, 20, 40],
    "model__l2_regularization": [0.0, 0.1, 1.0],
}


def _schema(numeric: list[str], categorical: list[str], task: Task) -> DatasetSchema:
    target = {"name": "y", "dtype": "categorical" if task is Task.CLASSIFICATION else "numeric"}
    return DatasetSchema.model_validate({
        "features": [{"name": n, "dtype": "numeric"} for n in numeric]
        + [{"name": c, "dtype": "categorical"} for c in categorical],
        "target": target,
        "task": task,
    })  # fmt: skip


def binary(rows: int, seed: int) -> tuple[DatasetSchema, pd.DataFrame]:
    x, y = make_classification(rows, 10, n_informative=6, n_redundant=2, flip_y=0.03, class_sep=0.8, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)]).assign(y=np.where(y == 1, "yes", "no"))
    return _schema(list(frame.columns[:10]), [], Task.CLASSIFICATION), frame


def mixed(rows: int, seed: int) -> tuple[DatasetSchema, pd.DataFrame]:
    """6 numeric and 4 categorical features (quantile bins of informative ones), 3% missing in two of them."""
    x, y = make_classification(rows, 10, n_informative=7, n_redundant=1, flip_y=0.03, class_sep=0.8, random_state=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(x[:, :6], columns=[f"x{i}" for i in range(6)])
    for i, bins in enumerate([3, 5, 8, 12]):
        edges = np.quantile(x[:, 6 + i], np.linspace(0, 1, bins + 1)[1:-1])
        frame[f"c{i}"] = np.array([f"v{b}" for b in range(bins)], dtype=object)[np.searchsorted(edges, x[:, 6 + i])]
    frame.loc[rng.random(rows) < 0.03, "x0"] = np.nan
    frame.loc[rng.random(rows) < 0.03, "c1"] = None
    frame["y"] = np.where(y == 1, "yes", "no")
    return _schema([f"x{i}" for i in range(6)], [f"c{i}" for i in range(4)], Task.CLASSIFICATION), frame


def many_classes(rows: int, seed: int) -> tuple[DatasetSchema, pd.DataFrame]:
    """10 classes, 24 binary features: each class a random bit pattern, each bit flipped with p = 0.2."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, (10, 24))
    y = rng.integers(0, 10, rows)
    bits = prototypes[y] ^ (rng.random((rows, 24)) < 0.2)
    frame = pd.DataFrame(bits.astype(float), columns=[f"b{i}" for i in range(24)]).assign(y=[f"k{k}" for k in y])
    return _schema(list(frame.columns[:24]), [], Task.CLASSIFICATION), frame


def regression(rows: int, seed: int) -> tuple[DatasetSchema, pd.DataFrame]:
    x, y = make_friedman1(rows, n_features=10, noise=1.0, random_state=seed)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)]).assign(y=y)
    return _schema(list(frame.columns[:10]), [], Task.REGRESSION), frame


STREAMS: dict[str, Callable[[int, int], tuple[DatasetSchema, pd.DataFrame]]] = {
    "binary 10 numeric": binary,
    "mixed 6 num + 4 cat": mixed,
    "10 classes x 24 bits": many_classes,
    "regression (friedman1)": regression,
}


def old_search(schema: DatasetSchema, frame: pd.DataFrame, seed: int, threads: int | None) -> tuple[float, float, str]:
    """The search before this change, as it was in services/trainer/domain/training.py."""
    frame = frame.dropna(subset=["y"]).reset_index(drop=True)
    holdout_rows = int(len(frame) * 0.2)
    train_part, holdout = frame.iloc[:-holdout_rows], frame.iloc[-holdout_rows:]
    x_train, y_train = features_frame(schema, train_part), train_part["y"]
    x_hold, y_hold = features_frame(schema, holdout), holdout["y"]
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="most_frequent")),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
    ])  # fmt: skip
    preprocess = ColumnTransformer([
        ("numeric", numeric, training.numeric_columns(schema)),
        ("categorical", categorical, training.categorical_columns(schema)),
    ])  # fmt: skip
    classify = schema.task is Task.CLASSIFICATION
    estimator = (
        HistGradientBoostingClassifier(random_state=seed)
        if classify
        else HistGradientBoostingRegressor(random_state=seed)
    )
    folds = (
        StratifiedKFold(3, shuffle=True, random_state=seed) if classify else KFold(3, shuffle=True, random_state=seed)
    )
    search = RandomizedSearchCV(
        Pipeline([("preprocess", preprocess), ("model", estimator)]), OLD_SPACE, n_iter=6,
        scoring="accuracy" if classify else "r2", cv=folds, random_state=seed, n_jobs=1,
    )  # fmt: skip
    started = time.monotonic()
    with threadpool_limits(threads, user_api="openmp"):
        search.fit(x_train, y_train)
    seconds = time.monotonic() - started
    return seconds, float(search.best_estimator_.score(x_hold, y_hold)), ""


def new_search(schema: DatasetSchema, frame: pd.DataFrame, seed: int) -> tuple[float, float, str]:
    started = time.monotonic()
    result = training.train(schema, frame, training.TrainingConfig(seed=seed))
    seconds = time.monotonic() - started
    started = time.monotonic()
    onnx = export.export(schema, result.pipeline, result.holdout_frame)
    note = f"{result.search}; ONNX export + parity {time.monotonic() - started:.1f}s: {onnx.detail}"
    return seconds, result.metrics[result.primary_metric], note


def _child(which: str, stream: str, rows: int, seed: int, threads: int | None, out: Any) -> None:
    schema, frame = STREAMS[stream](rows, seed)
    out.send(old_search(schema, frame, seed, threads) if which == "old" else new_search(schema, frame, seed))


def run(
    which: str, stream: str, rows: int, seed: int, timeout: float, threads: int | None = None
) -> tuple[float | None, float | None, str]:
    """(seconds, holdout metric, note) of one search in a fresh process; (None, None, ...) past ``timeout``."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(which, stream, rows, seed, threads, send))
    process.start()
    try:
        if receive.poll(timeout):
            seconds, score, note = receive.recv()
            return seconds, score, note
        return None, None, f"stopped after {timeout:.0f}s"
    finally:
        process.terminate()
        process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per stream (20%% of them are the holdout)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a single search may take")
    parser.add_argument("--streams", nargs="*", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--old-threads", type=int, default=None, help="OpenMP threads of the old search (all cores)")
    args = parser.parse_args()
    threads = "all cores" if args.old_threads is None else args.old_threads
    print(f"{args.rows} rows per stream, holdout = newest 20%; metric: accuracy (r2 for regression)")
    print(f"old search: OpenMP threads {threads}; new search: {training.TrainingConfig()}\n")
    header = (
        f"{'stream':<24} {'old s':>7} {'old metric':>10} {'new s':>7} {'new metric':>10} {'Δ metric':>9}  new search"
    )
    print(header)
    print("-" * len(header))
    for stream in args.streams:
        old_s, old_m, _ = run("old", stream, args.rows, args.seed, args.timeout, args.old_threads)
        new_s, new_m, note = run("new", stream, args.rows, args.seed, args.timeout)

        def fmt(value: float | None, spec: str, missing: str) -> str:
            return missing if value is None else format(value, spec)

        delta = "" if old_m is None or new_m is None else f"{100 * (new_m - old_m):+.2f} pt"
        print(
            f"{stream:<24} {fmt(old_s, '7.1f', f'>{args.timeout:.0f}'):>7} {fmt(old_m, '10.4f', '—'):>10} "
            f"{fmt(new_s, '7.1f', f'>{args.timeout:.0f}'):>7} {fmt(new_m, '10.4f', '—'):>10} {delta:>9}  {note}",
            flush=True,
        )


if __name__ == "__main__":
    main()
