"""The drift report of a model as one self-contained HTML page.

Built from what the monitor stores: the latest judged windows (each with its
verdict, statistics and its counts beside the reference's), the alarms, and
the monitored version's reference profile. Charts are inline SVG
(:mod:`.charts`); the page has no script and no external resource, so it can be
saved, mailed and read where nothing reaches the internet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from services.monitor.adapters.repository import StoredReport
from services.monitor.domain.groups import LiveGroups
from services.monitor.domain.histograms import reference_histograms
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.report import charts

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
GROUP_ROWS = 20
"""Largest groups per sensitive feature shown in the report (the API lists them all)."""
_env.filters["num"] = lambda v: charts.fmt(float(v)) if isinstance(v, int | float) else v


@dataclass(frozen=True)
class FeatureSection:
    name: str
    kind: str
    drifted: bool | None
    """None: no window judged yet."""
    chart: Markup
    statistics: dict[str, float]
    thresholds: dict[str, float]
    missing: int
    out_of_range: int | None


def render(
    monitor: ModelMonitor,
    reports: list[StoredReport],
    alarms: list[dict[str, Any]],
    *,
    now: datetime | None = None,
    groups: LiveGroups | None = None,
) -> str:
    """The report page of ``monitor``'s model (``reports`` oldest first, ``alarms`` newest first, ``groups``
    the live group metrics when the dataset declares sensitive features)."""
    judged = [r for r in reports if r.report.get("evaluated") and "histograms" in r.report]
    latest = judged[-1] if judged else None
    alarm_times = {a["at"] for a in alarms}
    points = [
        charts.Point(i + 1, (r.report.get("performance") or {}).get("live"), r.flagged, r.at.isoformat() in alarm_times)
        for i, r in enumerate(reports)
    ]
    metric, holdout, threshold = _metric_lines(monitor)
    return _env.get_template("drift_report.html").render(
        model=monitor.model,
        version=monitor.version,
        latest=latest,
        latest_report=latest.report if latest else None,
        sections=_sections(monitor, latest),
        timeline=Markup(charts.timeline(points, metric, holdout, threshold)),
        windows_shown=len(reports),
        windows_evaluated=monitor.windows_evaluated,
        metric=metric,
        holdout=holdout,
        threshold=threshold,
        performance=monitor.performance(),
        alarms=alarms,
        generated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        groups=groups,
        max_rows=GROUP_ROWS,
    )


def _metric_lines(monitor: ModelMonitor) -> tuple[str, float | None, float | None]:
    """The live metric's name, the holdout value and the level under (over, for rmse) which a window is degraded."""
    margin = monitor.config.performance_margin
    if "accuracy" in monitor.profile.metrics:
        holdout = monitor.profile.metrics["accuracy"]
        return "accuracy", holdout, holdout - margin
    if "rmse" in monitor.profile.metrics:
        holdout = monitor.profile.metrics["rmse"]
        return "rmse", holdout, holdout * (1 + margin)
    return "accuracy" if monitor.schema.task.value == "classification" else "rmse", None, None


def _sections(monitor: ModelMonitor, latest: StoredReport | None) -> list[FeatureSection]:
    """One section per feature and one for the prediction, drifted features first."""
    histograms = latest.report["histograms"] if latest else reference_histograms(monitor.profile)
    verdicts: dict[str, dict[str, Any]] = {}
    if latest:
        verdicts = {v["feature"]: v for v in latest.report["features"]}
        if latest.report.get("prediction"):
            verdicts["prediction"] = latest.report["prediction"]
    sections = []
    for name, h in histograms.items():
        verdict = verdicts.get(name, {})
        title = f"{name}: reference vs current window"
        chart = charts.numeric_histogram(h, title) if h["kind"] == "numeric" else charts.categorical_bars(h, title)
        sections.append(FeatureSection(
            name=name, kind=h["kind"], drifted=verdict.get("drifted") if latest else None, chart=Markup(chart),
            statistics=verdict.get("statistics", {}), thresholds=verdict.get("thresholds", {}),
            missing=int(h.get("missing", 0)), out_of_range=h.get("out_of_range"),
        ))  # fmt: skip
    features = [s for s in sections if s.name != "prediction"]
    features.sort(key=lambda s: not s.drifted)
    return features + [s for s in sections if s.name == "prediction"]
