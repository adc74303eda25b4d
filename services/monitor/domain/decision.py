"""From a window to a verdict, and from verdicts to an alarm.

A feature drifts only when its distribution moved by a meaningful amount
(an effect size over its threshold) *and* the move is unlikely to be noise
(a p-value, corrected for testing many features at once, under ``alpha``).
Effect sizes alone would flag noise on small windows; p-values alone would
flag trivial shifts on large ones. The dataset drifts when a configurable
share of features drifts, or any feature marked key. Performance degrades
when even the optimistic end of the live accuracy's confidence interval lies
below the holdout accuracy by more than a margin. For regression the same
holds for the live RMSE: even the optimistic end of its confidence interval
must exceed the holdout RMSE by more than a (relative) margin. One flagged
window is not enough to retrain: the alarm needs k flagged windows out of
the last n (persistence), unless the live metric is *decisively* worse: below
the margin even at a far stricter confidence (z = 3.29, two-sided p ≈ 0.001),
which noise on one window practically never reaches, and which a concept
change that halves the accuracy reaches at once. Waiting for a second window
there only keeps a model known to be wrong serving for another window. After
an alarm the model is left alone for a cool-down. The identical alarm (no new kind of problem) about the same
version is raised again only after a cool-down that doubles each time: the
trainer keeps every alarm it receives, so repeating one every cool-down
while nothing can change is noise, yet a lost one is still re-sent.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from libs.common.profile import NumericProfile
from services.monitor.domain import statistics as st
from services.monitor.domain.windows import CategoricalWindow, FeatureWindow, NumericWindow, Window


@dataclass(frozen=True)
class DriftConfig:
    min_window: int = 200
    """Windows with fewer records get no verdict."""
    alpha: float = 0.01
    """Significance level after correction across features."""
    correction: str = "bh"
    """Multiple-testing correction: bh (Benjamini-Hochberg) or bonferroni."""
    psi_threshold: float = 0.1
    """PSI at or above which a move is meaningful (0.1 = 'moderate')."""
    js_threshold: float = 0.1
    """Jensen-Shannon distance at or above which a categorical move is meaningful."""
    wasserstein_threshold: float = 0.2
    """Wasserstein distance, in reference standard deviations, that is meaningful."""
    drift_share: float = 0.3
    """Share of features that must drift for the dataset to drift."""
    key_features: tuple[str, ...] = ()
    """Features whose drift alone makes the dataset drift."""
    prediction_drift: bool = True
    """Count prediction drift as a reason to flag the window."""
    min_labels: int = 100
    """Labels needed before the performance rule speaks."""
    performance_margin: float = 0.05
    """Allowed drop of the live metric below the holdout metric."""
    persistence_k: int = 2
    persistence_n: int = 3
    """An alarm needs k flagged windows among the last n ..."""
    decisive_z: float = 3.29
    """... or one window whose live metric is below the margin even at this z (0 turns it off)."""
    cooldown: timedelta = timedelta(minutes=2)
    """No new alarm for a model this long after the last one."""
    baseline_labels: int = 1000
    """Classification: the version's first this many live labels are its live baseline, and its latest
    this many are compared with them (0: no baseline rule)."""
    baseline_margin: float = 0.02
    """Allowed drop of the latest labels' accuracy below the live baseline's."""
    baseline_z: float = 2.58
    """... judged on the upper end of the difference's interval at this z (one window flags; an alarm
    still needs k flagged windows of n)."""


@dataclass(frozen=True)
class FeatureVerdict:
    feature: str
    kind: str
    statistics: dict[str, float]
    thresholds: dict[str, float]
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature, "kind": self.kind, "statistics": self.statistics,
            "thresholds": self.thresholds, "drifted": self.drifted,
        }  # fmt: skip


@dataclass(frozen=True)
class Performance:
    metric: str
    live: float
    bound: float
    """The optimistic end of the live metric's confidence interval."""
    reference: float
    labels: int
    degraded: bool
    decisive: bool = False
    """Degraded even at ``decisive_z``: one window is evidence enough."""
    against: str = "holdout"
    """What ``reference`` is: the version's holdout figure, or its own first live labels ("live baseline")."""
    margin: float | None = None
    """The drop allowed below ``reference`` (None: the config's ``performance_margin``)."""


@dataclass(frozen=True)
class WindowReport:
    records: int
    started_at: datetime
    evaluated: bool
    features: list[FeatureVerdict]
    prediction: FeatureVerdict | None
    data_drift: bool
    prediction_drift: bool
    performance: Performance | None
    flagged: bool
    reason: str

    @property
    def kinds(self) -> list[str]:
        kinds = []
        if self.data_drift:
            kinds.append("data_drift")
        if self.prediction_drift:
            kinds.append("prediction_drift")
        if self.performance is not None and self.performance.degraded:
            kinds.append("performance")
        return kinds

    def to_dict(self) -> dict[str, Any]:
        perf = self.performance
        return {
            "records": self.records,
            "started_at": self.started_at.isoformat(),
            "evaluated": self.evaluated,
            "flagged": self.flagged,
            "kinds": self.kinds,
            "reason": self.reason,
            "data_drift": self.data_drift,
            "prediction_drift": self.prediction_drift,
            "features": [f.to_dict() for f in self.features],
            "prediction": self.prediction.to_dict() if self.prediction else None,
            "performance": None if perf is None else {
                "metric": perf.metric, "live": perf.live, "bound": perf.bound, "reference": perf.reference,
                "labels": perf.labels, "degraded": perf.degraded, "decisive": perf.decisive, "against": perf.against,
            },
        }  # fmt: skip


def _raw_verdict(
    name: str, window: FeatureWindow, config: DriftConfig
) -> tuple[dict[str, float], dict[str, float], bool, float]:
    """Statistics, thresholds, whether the effect is meaningful, and the p-value (uncorrected)."""
    if isinstance(window, NumericWindow):
        ref: NumericProfile = window.reference
        sample = np.sort(window.reservoir.sample())
        ref_sample = reference_sample(ref)
        psi = st.psi(np.asarray(ref.counts), window.counts)
        ks_stat, p_value, wasser = 0.0, 1.0, 0.0
        if sample.size and ref_sample.size:
            ks_stat, p_value, distance = st.compare_samples(ref_sample, sample)
            wasser = st.in_std(distance, ref.std)
        count = window.count + window.missing
        stats = {
            "psi": psi, "ks_statistic": ks_stat, "ks_pvalue": p_value, "wasserstein_std": wasser,
            "missing_rate": window.missing / count if count else 0.0,
            "missing_rate_reference": ref.missing_rate,
            "out_of_range_share": window.out_of_range / window.count if window.count else 0.0,
        }  # fmt: skip
        thresholds = {"psi": config.psi_threshold, "wasserstein_std": config.wasserstein_threshold}
        meaningful = psi >= config.psi_threshold or wasser >= config.wasserstein_threshold
        return stats, thresholds, meaningful, p_value
    assert isinstance(window, CategoricalWindow)
    reference, live = window.aligned()
    psi = st.psi(reference, live)
    chi, p_value = st.chi_square(reference, live)
    js = st.jensen_shannon(reference, live)
    count = window.count + window.missing
    stats = {
        "psi": psi, "chi2_statistic": chi, "chi2_pvalue": p_value, "jensen_shannon": js,
        "missing_rate": window.missing / count if count else 0.0,
        "missing_rate_reference": window.reference.missing_rate,
        "unseen_share": live[-1] / live.sum() if live.sum() else 0.0,
    }  # fmt: skip
    thresholds = {"psi": config.psi_threshold, "jensen_shannon": config.js_threshold}
    meaningful = psi >= config.psi_threshold or js >= config.js_threshold
    return stats, thresholds, meaningful, p_value


def reference_sample(profile: NumericProfile) -> np.ndarray:
    """The reference's KS sample, sorted, as an array: made once per profile (a list of up to 5,000 floats
    otherwise converted and sorted again for every window), and forgotten with the profile."""
    kept = _REFERENCE_SAMPLES.get(id(profile))
    if kept is None or kept[0]() is not profile:
        key = id(profile)
        kept = _REFERENCE_SAMPLES[key] = (weakref.ref(profile, lambda _: _REFERENCE_SAMPLES.pop(key, None)),
                                          np.sort(np.asarray(profile.sample, dtype=float)))  # fmt: skip
    return kept[1]


_REFERENCE_SAMPLES: dict[int, tuple[weakref.ref[NumericProfile], np.ndarray]] = {}


def evaluate_window(window: Window, performance: Performance | None, config: DriftConfig) -> WindowReport:
    """The verdict on one window (pure: the same window gives the same report)."""
    if window.records < config.min_window:
        return WindowReport(window.records, window.started_at, False, [], None, False, False, performance,
                            bool(performance and performance.degraded),
                            f"window of {window.records} records is below the minimum {config.min_window}")  # fmt: skip
    names = list(window.features)
    raw = [_raw_verdict(name, window.features[name], config) for name in names]
    pred_raw = _raw_verdict("prediction", window.prediction, config)
    adjusted = st.adjust_pvalues(np.array([r[3] for r in raw] + [pred_raw[3]]), config.correction)
    verdicts = []
    for i, (name, (stats, thresholds, meaningful, _)) in enumerate(zip(names, raw, strict=True)):
        stats = {**stats, "pvalue_adjusted": float(adjusted[i])}
        kind = "numeric" if isinstance(window.features[name], NumericWindow) else "categorical"
        verdicts.append(FeatureVerdict(name, kind, stats, {**thresholds, "alpha": config.alpha},
                                       bool(meaningful and adjusted[i] < config.alpha)))  # fmt: skip
    pred_stats, pred_thresholds, pred_meaningful, _ = pred_raw
    prediction = FeatureVerdict(
        "prediction", "numeric" if isinstance(window.prediction, NumericWindow) else "categorical",
        {**pred_stats, "pvalue_adjusted": float(adjusted[-1])}, {**pred_thresholds, "alpha": config.alpha},
        bool(pred_meaningful and adjusted[-1] < config.alpha),
    )  # fmt: skip
    drifted = [v.feature for v in verdicts if v.drifted]
    share = len(drifted) / len(verdicts) if verdicts else 0.0
    key_hit = sorted(set(drifted) & set(config.key_features))
    data_drift = share >= config.drift_share or bool(key_hit)
    prediction_drift = config.prediction_drift and prediction.drifted
    degraded = bool(performance and performance.degraded)
    reasons = []
    if data_drift:
        reasons.append(f"{len(drifted)}/{len(verdicts)} features drifted ({', '.join(drifted)})")
    if prediction_drift:
        reasons.append(f"prediction distribution moved (psi {prediction.statistics['psi']:.3f})")
    if degraded and performance:
        margin = config.performance_margin if performance.margin is None else performance.margin
        reasons.append(
            f"live {performance.metric} {performance.live:.3f} (≤ {performance.bound:.3f}) below "
            f"{performance.against} {performance.reference:.3f} by more than {margin:.2f}"
        )
    flagged = data_drift or prediction_drift or degraded
    return WindowReport(window.records, window.started_at, True, verdicts, prediction, data_drift, prediction_drift,
                        performance, flagged, "; ".join(reasons) or "no significant drift")  # fmt: skip


def classification_performance(
    correct: int, labels: int, holdout: float, config: DriftConfig, holdout_se: float = 0.0
) -> Performance | None:
    """Live accuracy against the holdout accuracy, judged on its Wilson upper bound.

    ``holdout_se``: the holdout accuracy's own standard error (0: taken as exact). A model judged
    on a few hundred holdout rows has an accuracy known to a few points only (and the best of
    several models on the same rows looks better there than it is): the bound then also allows for
    that error, as the interval of a difference of two estimates does.
    """
    if labels < config.min_labels:
        return None
    live = correct / labels
    upper = _widened(live, st.wilson_interval(correct, labels)[1], 1.96 * holdout_se)
    threshold = holdout - config.performance_margin
    decisive = (
        bool(config.decisive_z)
        and _widened(live, st.wilson_interval(correct, labels, z=config.decisive_z)[1], config.decisive_z * holdout_se)
        < threshold
    )
    return Performance("accuracy", live, upper, holdout, labels, upper < threshold, decisive)


def baseline_performance(
    baseline_correct: int, baseline_labels: int, correct: int, labels: int, config: DriftConfig
) -> Performance | None:
    """The latest labels' accuracy against the version's own first live labels (its live baseline).

    The holdout rule tolerates ``performance_margin`` below a holdout figure that is itself a few
    hundred rows' estimate, on a few hundred labels: it sees a model that lost 10 points of 90, but
    not one that lost 8 points of 86 (a SEA stream with 10 % label noise whose threshold moved: first
    alarm 8,250 rows after the change, by chance). Here both sides are live accuracies of the same
    version on the same traffic, each over ``baseline_labels`` labels, so a smaller sustained drop
    is told from noise: the upper end of the drop's interval (Wald, at ``baseline_z``) must still
    exceed ``baseline_margin``. The two samples do not overlap: the latest labels count only after
    the baseline is complete.
    """
    if not config.baseline_labels or baseline_labels < config.baseline_labels or labels < config.baseline_labels:
        return None
    before, now = baseline_correct / baseline_labels, correct / labels
    # (x + 0.5) / (n + 1): a share of 0 or 1 still has a spread
    p0, p1 = (baseline_correct + 0.5) / (baseline_labels + 1), (correct + 0.5) / (labels + 1)
    spread = float(np.sqrt(p0 * (1 - p0) / baseline_labels + p1 * (1 - p1) / labels))
    upper = now + config.baseline_z * spread
    degraded = upper < before - config.baseline_margin
    return Performance("accuracy", now, upper, before, labels, degraded, against="live baseline",
                       margin=config.baseline_margin)  # fmt: skip


def _widened(live: float, bound: float, holdout_half: float) -> float:
    """The live metric's bound moved out to allow for the reference's own error, half-widths added in
    quadrature (the difference of two independent estimates)."""
    return live + float(np.hypot(bound - live, holdout_half))


def regression_performance(
    squared_errors: Sequence[float],
    holdout_rmse: float,
    config: DriftConfig,
    z: float = 1.96,
    holdout_se: float = 0.0,
) -> Performance | None:
    """Live RMSE against the holdout RMSE (relative margin), judged on the lower end of its confidence interval.

    The mean squared error of n labels has a standard error of sd/sqrt(n);
    a few large errors on a small window must not look like a worse model.
    ``holdout_se``: the holdout MSE's own standard error (0: taken as exact), added in quadrature:
    a 200-row holdout's RMSE is itself off by several per cent.
    """
    labels = len(squared_errors)
    if labels < config.min_labels:
        return None
    errors = np.asarray(squared_errors, dtype=float)
    mse = float(errors.mean())
    spread = float(np.hypot(float(errors.std(ddof=1)) / np.sqrt(labels), holdout_se))
    rmse, optimistic = float(np.sqrt(mse)), float(np.sqrt(max(0.0, mse - z * spread)))
    threshold = holdout_rmse * (1 + config.performance_margin)
    decisive = bool(config.decisive_z) and float(np.sqrt(max(0.0, mse - config.decisive_z * spread))) > threshold
    return Performance("rmse", rmse, optimistic, holdout_rmse, labels, optimistic > threshold, decisive)


#: The longest wait before an identical alarm about the same version is raised again.
MAX_REPEAT_COOLDOWN = timedelta(days=1)


@dataclass
class AlarmState:
    """Persistence and cool-down for one model version."""

    history: deque[tuple[bool, datetime]] = field(default_factory=deque)
    last_alarm_at: datetime | None = None
    raised_kinds: frozenset[str] = frozenset()
    """Kinds of problem already reported for this version."""
    repeats: int = 0
    """Identical alarms raised in a row (each one doubles the next cool-down)."""

    def copy(self) -> AlarmState:
        """A copy to decide on: the live state changes only once the alarm is durable."""
        return replace(self, history=deque(self.history))


def repeat_cooldown(state: AlarmState, kinds: Sequence[str], config: DriftConfig) -> timedelta:
    """The cool-down before an alarm of ``kinds``: plain for a new kind of problem, doubling for a repeat."""
    if state.last_alarm_at is None or not set(kinds) <= state.raised_kinds:
        return config.cooldown
    wait: timedelta = config.cooldown * 2**state.repeats
    return min(wait, MAX_REPEAT_COOLDOWN)


def should_alarm(
    state: AlarmState, report: WindowReport, now: datetime, config: DriftConfig
) -> tuple[bool, datetime | None]:
    """Record ``report`` and say whether to raise an alarm, with when the drift began.

    The drift began at the start of the earliest flagged window in the run
    that reached k of n, which is what a retrain should train from.
    """
    if not report.evaluated and not report.flagged:
        return False, None
    state.history.append((report.flagged, report.started_at))
    while len(state.history) > config.persistence_n:
        state.history.popleft()
    flagged = [started for hit, started in state.history if hit]
    decisive = report.performance is not None and report.performance.decisive
    if len(flagged) < config.persistence_k and not decisive:
        return False, None
    if state.last_alarm_at is not None and now - state.last_alarm_at < repeat_cooldown(state, report.kinds, config):
        return False, None
    repeat = state.last_alarm_at is not None and set(report.kinds) <= state.raised_kinds
    state.repeats = state.repeats + 1 if repeat else 0
    state.raised_kinds = state.raised_kinds | set(report.kinds)
    state.last_alarm_at = now
    state.history.clear()
    return True, min(flagged)
