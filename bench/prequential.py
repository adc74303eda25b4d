"""Prequential scoring of a stream run: pure functions over what the benchmark recorded.

Every row is predicted by whatever model serves at that moment and scored against its
true label before that label is sent anywhere ("test, then train"). From the per-row
record (version served, hit or squared error), the row counter over time, and the
times the registry promoted versions, this module derives the figures of the table:
how many rows after a change the first alarm came and a better model served, the
metric before, during and after, the tail against an oracle trained on post-change
rows, and whether the targets were met.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

UNSERVED = -1
TAIL_ROWS = 5_000
ORACLE_ROWS = 5_000


@dataclass
class Record:
    """What one stream run observed, row by row and over time."""

    length: int
    regression: bool
    version: np.ndarray = field(init=False)
    """Version that predicted each row (UNSERVED: no prediction)."""
    score: np.ndarray = field(init=False)
    """1.0/0.0 for a right/wrong class, the squared error for regression; NaN when unserved."""
    times: list[float] = field(default_factory=list)
    """Wall-clock time (epoch seconds) at which each chunk was sent for prediction ..."""
    starts: list[int] = field(default_factory=list)
    """... and the first row of that chunk."""

    def __post_init__(self) -> None:
        self.version = np.full(self.length, UNSERVED, dtype=int)
        self.score = np.full(self.length, np.nan)

    def sent(self, start: int, at: float) -> None:
        self.times.append(at)
        self.starts.append(start)

    def scored(self, start: int, version: int, predictions: list[Any], truth: np.ndarray) -> None:
        stop = start + len(predictions)
        self.version[start:stop] = version
        if self.regression:
            self.score[start:stop] = (np.asarray(predictions, dtype=float) - truth.astype(float)) ** 2
        else:
            self.score[start:stop] = np.asarray([str(p) for p in predictions], dtype=object) == truth.astype(str)

    def row_at(self, at: float) -> int | None:
        """Rows predicted before time ``at`` (None: before the stream's traffic began)."""
        i = bisect.bisect_right(self.times, at) - 1
        return None if i < 0 else self.starts[i]

    def time_of(self, row: int) -> float | None:
        """When the chunk holding ``row`` was sent for prediction."""
        i = bisect.bisect_right(self.starts, row) - 1
        return None if i < 0 else self.times[i]

    def metric(self, rows: np.ndarray) -> float | None:
        """Accuracy (or RMSE) over the served rows among ``rows`` (a boolean mask or indices)."""
        values = self.score[rows]
        values = values[~np.isnan(values)]
        if not len(values):
            return None
        return float(np.sqrt(values.mean())) if self.regression else float(values.mean())

    def better(self, a: float | None, b: float | None) -> bool:
        """Whether metric ``a`` beats ``b`` (higher accuracy, lower RMSE)."""
        if a is None or b is None:
            return False
        return a < b if self.regression else a > b


@dataclass(frozen=True)
class Recovery:
    """What happened after one change."""

    change: int
    first_alarm_rows: int | None
    """Rows from the change to the first alarm raised after it."""
    better_rows: int | None
    """Rows from the change until a version promoted after it, and better than the old one, served."""
    better_version: int | None
    old_version: int | None
    old_metric: float | None
    new_metric: float | None


def recovery(record: Record, change: int, end: int, alarms: list[float], promotions: dict[int, float]) -> Recovery:
    """The recovery from the change at row ``change`` within the segment ``change..end``.

    ``alarms`` are alarm times, ``promotions`` version → time it became champion. The
    old version is the one serving at the change; a candidate must have been promoted
    after the change and score better than the old version on the segment's rows each served.
    """
    changed_at = record.time_of(change)
    first_alarm = None
    if changed_at is not None:
        after = sorted(t for t in alarms if t >= changed_at)
        row = record.row_at(after[0]) if after else None
        first_alarm = None if row is None else max(row - change, 0)
    segment = np.zeros(record.length, dtype=bool)
    segment[change:end] = True
    served = record.version[change:end]
    served = served[served != UNSERVED]
    if not len(served):
        return Recovery(change, first_alarm, None, None, None, None, None)
    old = int(served[0])
    old_metric = record.metric(segment & (record.version == old))
    for version in pd.unique(served):
        version = int(version)
        promoted = promotions.get(version)
        if version == old or promoted is None or changed_at is None or promoted < changed_at:
            continue
        mine = record.metric(segment & (record.version == version))
        if old_metric is None or record.better(mine, old_metric):
            first = change + int(np.argmax(record.version[change:end] == version))
            return Recovery(change, first_alarm, first - change, version, old, old_metric, mine)
    return Recovery(change, first_alarm, None, None, old, old_metric, None)


def phases(record: Record, start: int, recoveries: list[Recovery], changes: list[int]) -> dict[str, float | None]:
    """The metric before the first change, while an old model served after a change, and after recovery."""
    n = record.length
    before = np.zeros(n, dtype=bool)
    during = np.zeros(n, dtype=bool)
    after = np.zeros(n, dtype=bool)
    before[start : changes[0] if changes else n] = True
    for r, end in zip(recoveries, [*changes[1:], n] if changes else [], strict=True):
        recovered = end if r.better_rows is None else r.change + r.better_rows
        during[r.change : recovered] = True
        after[recovered:end] = True
    return {"before": record.metric(before), "during": record.metric(during), "after": record.metric(after)}


def tail(record: Record) -> float | None:
    return record.metric(np.arange(record.length - TAIL_ROWS, record.length))


def oracle(features: pd.DataFrame, target: np.ndarray, train_from: int, regression: bool, seed: int) -> float:
    """HistGradientBoosting trained on ``ORACLE_ROWS`` rows from ``train_from``, scored on the last ``TAIL_ROWS``."""
    from threadpoolctl import threadpool_limits

    frame = features.copy()
    for column in frame.columns:
        if frame[column].dtype == bool:
            frame[column] = frame[column].astype(int)
        elif not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].astype("category")
    fit = slice(train_from, train_from + ORACLE_ROWS)
    test = slice(len(frame) - TAIL_ROWS, len(frame))
    with threadpool_limits(1):  # OpenMP threads on a busy 2-core machine spin instead of helping
        return _fit_score(frame, target, fit, test, regression, seed)


def _fit_score(frame: pd.DataFrame, target: np.ndarray, fit: slice, test: slice, regression: bool, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if regression:
        reg = HistGradientBoostingRegressor(random_state=seed, categorical_features="from_dtype")
        reg.fit(frame.iloc[fit], target[fit].astype(float))
        return float(np.sqrt(np.mean((reg.predict(frame.iloc[test]) - target[test].astype(float)) ** 2)))
    clf = HistGradientBoostingClassifier(random_state=seed, categorical_features="from_dtype")
    clf.fit(frame.iloc[fit], target[fit].astype(str))
    return float(np.mean(clf.predict(frame.iloc[test]) == target[test].astype(str)))


def tail_ratio(tail_metric: float | None, oracle_metric: float, regression: bool) -> float | None:
    """Tail as a share of the oracle: accuracy / oracle's, or oracle RMSE / tail RMSE (1.0 = as good)."""
    if tail_metric is None:
        return None
    if regression:
        return oracle_metric / tail_metric if tail_metric > 0 else 1.0
    return tail_metric / oracle_metric if oracle_metric > 0 else None
