"""Model training and evaluation: scikit-learn pipelines from a dataset schema.

A job trains a Pipeline (imputation + scaling for numeric features, imputation
+ one-hot encoding for categorical ones, then a histogram gradient-boosting
estimator) with a small randomized hyperparameter search under
cross-validation, all seeded so the same data and seed give the same model.
The challenger and the current champion are scored on the same holdout: the
most recent rows, which neither has seen, and which resemble what serving will
meet next more closely than a random split would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.model_selection import KFold, RandomizedSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema, DType, Task

PRIMARY_METRIC = {Task.CLASSIFICATION: "accuracy", Task.REGRESSION: "r2"}

SEARCH_SPACE: dict[str, list[Any]] = {
    "model__learning_rate": [0.03, 0.05, 0.1, 0.2],
    "model__max_depth": [None, 3, 5, 8],
    "model__max_iter": [100, 200],
    "model__min_samples_leaf": [10, 20, 40],
    "model__l2_regularization": [0.0, 0.1, 1.0],
}


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 42
    n_iter: int = 6
    cv_folds: int = 3
    holdout_fraction: float = 0.2
    max_rows: int = 50_000


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


def numeric_columns(schema: DatasetSchema) -> list[str]:
    return [f.name for f in schema.features if f.dtype in (DType.NUMERIC, DType.INTEGER, DType.BOOLEAN)]


def categorical_columns(schema: DatasetSchema) -> list[str]:
    return [f.name for f in schema.features if f.dtype is DType.CATEGORICAL]


def build_pipeline(schema: DatasetSchema, seed: int) -> Pipeline:
    """The untrained pipeline for ``schema``: preprocessing built from the declared types."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [("numeric", numeric, numeric_columns(schema)), ("categorical", categorical, categorical_columns(schema))],
        remainder="drop",
    )
    estimator: HistGradientBoostingClassifier | HistGradientBoostingRegressor
    if schema.task is Task.CLASSIFICATION:
        estimator = HistGradientBoostingClassifier(random_state=seed)
    else:
        estimator = HistGradientBoostingRegressor(random_state=seed)
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def evaluate(schema: DatasetSchema, model: Any, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Holdout metrics; the primary one (accuracy or r2) is higher-is-better."""
    predicted = model.predict(x)
    if schema.task is Task.CLASSIFICATION:
        return {
            "accuracy": float(accuracy_score(y, predicted)),
            "f1_macro": float(f1_score(y, predicted, average="macro")),
        }
    return {
        "r2": float(r2_score(y, predicted)),
        "rmse": float(np.sqrt(mean_squared_error(y, predicted))),
        "mae": float(mean_absolute_error(y, predicted)),
    }


def train(
    schema: DatasetSchema, frame: pd.DataFrame, config: TrainingConfig, champion: Any | None = None
) -> TrainingResult:
    """Search, fit and evaluate a challenger (and the champion) on ``frame``, in row order."""
    frame = frame.dropna(subset=[schema.target.name]).tail(config.max_rows).reset_index(drop=True)
    holdout_rows = max(1, int(len(frame) * config.holdout_fraction))
    if len(frame) - holdout_rows < config.cv_folds * 2:
        raise ValueError(f"too few rows to train: {len(frame)}")
    train_part, holdout = frame.iloc[:-holdout_rows], frame.iloc[-holdout_rows:]
    x_train, y_train = features_frame(schema, train_part), train_part[schema.target.name]
    x_hold, y_hold = features_frame(schema, holdout), holdout[schema.target.name]
    if schema.task is Task.REGRESSION:
        y_train, y_hold = y_train.astype(float), y_hold.astype(float)
    primary = PRIMARY_METRIC[schema.task]
    folds = (
        StratifiedKFold(config.cv_folds, shuffle=True, random_state=config.seed)
        if schema.task is Task.CLASSIFICATION and y_train.value_counts().min() >= config.cv_folds
        else KFold(config.cv_folds, shuffle=True, random_state=config.seed)
    )
    search = RandomizedSearchCV(
        build_pipeline(schema, config.seed),
        SEARCH_SPACE,
        n_iter=config.n_iter,
        scoring=primary,
        cv=folds,
        random_state=config.seed,
        refit=True,
        n_jobs=1,
        error_score="raise",
    )
    search.fit(x_train, y_train)
    pipeline: Pipeline = search.best_estimator_
    metrics = evaluate(schema, pipeline, x_hold, y_hold)
    metrics["cv_" + primary] = float(search.best_score_)
    champion_metrics = None
    if champion is not None:
        try:
            champion_metrics = evaluate(schema, champion, x_hold, y_hold)
        except (ValueError, KeyError):  # the champion was trained on another schema
            champion_metrics = None
    return TrainingResult(
        pipeline=pipeline,
        params={k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        metrics=metrics,
        champion_metrics=champion_metrics,
        primary_metric=primary,
        training_rows=len(train_part),
        holdout_rows=holdout_rows,
        train_frame=x_train,
        train_predictions=pipeline.predict(x_train),
    )
