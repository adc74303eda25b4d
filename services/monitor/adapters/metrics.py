"""Prometheus metrics of the monitor: drift scores per feature, live metric, windows, alarms."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.monitor.domain.decision import Performance, WindowReport
from services.monitor.domain.monitor import ModelMonitor


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._children: dict[tuple[int | str, ...], Gauge] = {}
        self.drift_score = Gauge(
            "driftloop_drift_score", "Latest window's drift statistic per feature.",
            ["model", "feature", "statistic"], registry=registry,
        )  # fmt: skip
        self.feature_drifted = Gauge(
            "driftloop_feature_drifted", "1 if the feature drifted in the latest window.", ["model", "feature"],
            registry=registry,
        )  # fmt: skip
        self.live_metric = Gauge(
            "driftloop_live_metric", "Live metric from labels (accuracy or rmse).", ["model", "metric"],
            registry=registry,
        )  # fmt: skip
        self.holdout_metric = Gauge(
            "driftloop_holdout_metric", "The served version's holdout metric.", ["model", "metric"], registry=registry
        )
        self.labels = Counter(
            "driftloop_labels_total",
            "Labels received: matched to a prediction (true), waiting for it, or a duplicate (never scored).",
            ["model", "matched"],
            registry=registry,
        )  # fmt: skip
        self.labels_refused = Counter(
            "driftloop_labels_refused_total",
            "Labels on labels.arrived refused before scoring: ids serving never issued for the model (unissued), "
            "or an event serving did not attest (unattested).",
            ["model", "reason"],
            registry=registry,
        )  # fmt: skip
        self.windows = Counter(
            "driftloop_drift_windows_total", "Windows evaluated.", ["model", "flagged"], registry=registry
        )
        self.alarms = Counter(
            "driftloop_drift_alarms_total", "drift.detected events raised.", ["model"], registry=registry
        )
        self.windows_lost = Counter(
            "driftloop_drift_windows_lost_total",
            "Batches of stored predictions whose binning or window reports failed (logged; their alarm, if any, "
            "is raised by the next flagged window).",
            registry=registry,
        )  # fmt: skip

    def record_live(self, model: str, performance: Performance | None) -> None:
        if performance is not None:
            self.live_metric.labels(model, performance.metric).set(performance.live)

    def _child(self, gauge: Gauge, *labels: str) -> Gauge:
        """``gauge.labels(*labels)``, kept: a judged window sets about sixty of them, up to a hundred times
        a second with the default window, and each ``labels()`` call takes a lock and builds its key."""
        key: tuple[int | str, ...] = (id(gauge), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = gauge.labels(*labels)
        return child

    def record(self, monitor: ModelMonitor, report: WindowReport) -> None:
        self.windows.labels(monitor.model, str(report.flagged).lower()).inc()
        for verdict in [*report.features, *([report.prediction] if report.prediction else [])]:
            for statistic in ("psi", "ks_pvalue", "chi2_pvalue", "jensen_shannon", "wasserstein_std"):
                if statistic in verdict.statistics:
                    self._child(self.drift_score, monitor.model, verdict.feature, statistic).set(
                        verdict.statistics[statistic]
                    )
            self._child(self.feature_drifted, monitor.model, verdict.feature).set(1 if verdict.drifted else 0)
        if report.performance is not None:
            perf = report.performance
            self.live_metric.labels(monitor.model, perf.metric).set(perf.live)
            self.holdout_metric.labels(monitor.model, perf.metric).set(perf.reference)
