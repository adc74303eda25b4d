"""Prometheus gauges of the live group metrics, with bounded label cardinality.

A sensitive feature may have many values (an age in years, a postcode); only the ``largest`` groups
per feature get a gauge, and the gauges of groups that fell out of the window (or out of the largest)
are removed, so the series a model exports stay bounded whatever its traffic.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from services.monitor.domain.groups import LiveGroups


class GroupGauges:
    def __init__(self, registry: CollectorRegistry, largest: int) -> None:
        self.largest = largest
        self.metric = Gauge(
            "driftloop_live_group_metric",
            "Live metric per group of a sensitive feature, over the latest labelled predictions of the champion "
            "(the largest groups per feature only).",
            ["model", "feature", "group", "metric"], registry=registry,
        )  # fmt: skip
        self.count = Gauge(
            "driftloop_live_group_labels", "Labelled predictions per group of a sensitive feature in the live "
            "group window (the largest groups per feature only).", ["model", "feature", "group"], registry=registry,
        )  # fmt: skip
        self.difference = Gauge(
            "driftloop_live_fairness_difference",
            "Live fairness difference per sensitive feature (the largest gap between compared groups), named as "
            "the trainer's holdout differences.",
            ["model", "feature", "difference"], registry=registry,
        )  # fmt: skip
        self._series: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}

    def record(self, model: str, live: LiveGroups) -> None:
        """Set the model's gauges to ``live`` and drop those of groups no longer shown."""
        now: set[tuple[Gauge, tuple[str, ...]]] = set()
        for feature in live.features:
            for name, value in feature.differences.items():
                now.add(self._set(self.difference, (model, feature.feature, name), value))
            for group in feature.groups[: self.largest]:
                now.add(self._set(self.count, (model, feature.feature, group.group), group.count))
                for name, figure in group.metrics.items():
                    if figure is not None:
                        now.add(self._set(self.metric, (model, feature.feature, group.group, name), figure))
        for gauge, labels in self._series.get(model, set()) - now:
            gauge.remove(*labels)
        self._series[model] = now

    @staticmethod
    def _set(gauge: Gauge, labels: tuple[str, ...], value: float) -> tuple[Gauge, tuple[str, ...]]:
        gauge.labels(*labels).set(value)
        return gauge, labels
