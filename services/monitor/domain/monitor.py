"""A monitored model: its reference, its current window, its recent labels and its alarm state.

Plain data and arithmetic: the handlers feed it predictions and labels and judge
the windows it hands back; where its reference comes from is the adapters' business.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libs.common.events import Source, tally
from libs.common.profile import ReferenceProfile
from libs.common.schema import DatasetSchema, Task
from services.monitor.domain.decision import (
    AlarmState,
    DriftConfig,
    Performance,
    WindowReport,
    baseline_performance,
    classification_performance,
    regression_performance,
)
from services.monitor.domain.windows import Window, merge_windows


@dataclass
class ModelMonitor:
    model: str
    version: int
    profile: ReferenceProfile
    schema: DatasetSchema
    dataset: str | None
    config: DriftConfig
    window_size: int
    label_window: int
    sample_size: int
    window_step: int = 0
    """0: tumbling windows; otherwise a sliding window advancing by this many records."""
    window: Window = field(init=False)
    ring: deque[Window] = field(init=False)
    labels: deque[float] = field(init=False)
    label_sources: deque[tuple[str, bool] | None] = field(init=False)
    """Who sent each label in ``labels`` (principal, trusted), in the same order; None when not recorded."""
    alarms: AlarmState = field(default_factory=AlarmState)
    last_report: WindowReport | None = None
    causes: deque[Any] = field(default_factory=lambda: deque(maxlen=64))
    """Span contexts of the predictions.logged messages behind the current windows."""
    windows_evaluated: int = 0
    labels_seen: int = 0
    baseline: list[int] = field(default_factory=lambda: [0, 0])
    """The version's first live labels (``config.baseline_labels``): correct, labelled."""
    latest: deque[float] = field(init=False)
    """Outcomes after the baseline, the latest ``config.baseline_labels`` of them."""

    def __post_init__(self) -> None:
        self.window = self._new_window()
        self.labels = deque(maxlen=self.label_window)
        self.label_sources = deque(maxlen=self.label_window)
        self.latest = deque(maxlen=max(1, self.config.baseline_labels))
        steps = max(1, self.window_size // self.window_step) if self.window_step else 1
        self.ring = deque(maxlen=steps)

    def _new_window(self) -> Window:
        return Window(self.profile, sample_size=self.sample_size, seed=self.windows_evaluated)

    def observe(self, rows: list[dict[str, Any]], predictions: list[Any]) -> list[Window]:
        """:meth:`observe_columns` for rows (a dict of features each)."""
        return self.observe_columns({name: [row.get(name) for row in rows] for name in self.profile.features},
                                    predictions)  # fmt: skip

    def observe_columns(self, columns: Mapping[str, Sequence[Any]], predictions: Sequence[Any]) -> list[Window]:
        """Add predictions, their features given column by column (feature → one value per prediction);
        return the windows ready to be judged (usually none or one).

        Tumbling: a window of ``window_size`` records, then a fresh one.
        Sliding: sub-windows of ``window_step`` records; each time one fills, the
        last ``window_size / window_step`` of them are merged and judged.
        """
        step = self.window_step or self.window_size
        ready = []
        start = 0
        while start < len(predictions):
            chunk = slice(start, start + step - self.window.records)
            self.window.add_columns({name: values[chunk] for name, values in columns.items()}, predictions[chunk])
            start = chunk.stop
            if self.window.records >= step:
                self.ring.append(self.window)
                self.window = self._new_window()
                if sum(w.records for w in self.ring) >= self.window_size:
                    self.windows_evaluated += 1
                    ready.append(
                        self.ring[0] if len(self.ring) == 1 else merge_windows(list(self.ring), self.windows_evaluated)
                    )
                    if not self.window_step:
                        self.ring.clear()
        return ready

    def score(self, matched: list[tuple[int, Any, Any]], source: tuple[str, bool] | None = None) -> Performance | None:
        """Feed (version, prediction, label) matches sent by ``source`` to the live metric;
        labels of other versions are ignored."""
        self.observe_labels([
            outcome
            for version, prediction, label in matched
            if version == self.version and (outcome := self.outcome(prediction, label)) is not None
        ], source)  # fmt: skip
        return self.performance()

    def observe_labels(self, outcomes: list[float], source: tuple[str, bool] | None = None) -> None:
        """1/0 correctness (classification) or squared errors (regression)."""
        self.labels.extend(outcomes)
        self.label_sources.extend([source] * len(outcomes))
        self.labels_seen += len(outcomes)
        if self.schema.task is Task.CLASSIFICATION and self.config.baseline_labels:
            first = min(len(outcomes), self.config.baseline_labels - self.baseline[1])
            self.baseline[0] += int(sum(outcomes[:first]))
            self.baseline[1] += first
            self.latest.extend(outcomes[first:])

    def label_provenance(self) -> list[Source] | None:
        """Who sent the labels the live metric is computed over (None when no label's sender was recorded)."""
        known = [s for s in self.label_sources if s is not None]
        if not known:
            return None
        return tally((principal, trusted, 1) for principal, trusted in known)

    def performance(self) -> Performance | None:
        n = len(self.labels)
        if self.schema.task is Task.CLASSIFICATION:
            holdout = self.profile.metrics.get("accuracy")
            if holdout is None:
                return None
            return classification_performance(int(sum(self.labels)), n, holdout, self.config, self.holdout_se())
        holdout_rmse = self.profile.metrics.get("rmse")
        if holdout_rmse is None:
            return None
        return regression_performance(list(self.labels), holdout_rmse, self.config, holdout_se=self.holdout_se())

    def judged_performance(self) -> Performance | None:
        """What a window is judged on: the live metric against the holdout, or, when that finds nothing
        and the version's live baseline does (classification), against the baseline."""
        performance = self.performance()
        if performance is not None and performance.degraded:
            return performance
        if self.schema.task is not Task.CLASSIFICATION:
            return performance
        baseline = baseline_performance(self.baseline[0], self.baseline[1], int(sum(self.latest)), len(self.latest),
                                        self.config)  # fmt: skip
        return baseline if baseline is not None and baseline.degraded else performance

    def holdout_se(self) -> float:
        """Standard error of the holdout's mean loss (1 - accuracy, or MSE) the live metric is judged
        against: 0 (taken as exact) for a profile that does not say how it was measured."""
        rows, spread = self.profile.holdout_rows, self.profile.holdout_loss_sd
        return spread / math.sqrt(rows) if rows and spread is not None else 0.0

    def outcome(self, prediction: Any, label: Any) -> float | None:
        if self.schema.task is Task.CLASSIFICATION:
            return 1.0 if str(prediction) == str(label) else 0.0
        try:
            return (float(prediction) - float(label)) ** 2
        except (TypeError, ValueError):
            return None
