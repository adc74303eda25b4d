"""predictions.logged: fill the model's window; judge it when full; raise drift.detected.

The monitor's hot path. Messages are read as columns (:func:`libs.common.logged.decode_logged`, no
object per prediction), stored with one COPY, and binned into the window column by column.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import trace

from libs.common import outbox
from libs.common.events import DriftDetected, FeatureDrift, PredictionsLogged
from libs.common.kafka import Delivery, Route
from libs.common.logged import LoggedPredictions, decode_logged
from libs.common.service import Runtime
from services.monitor.adapters import repository, versions
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors
from services.monitor.domain.decision import WindowReport, evaluate_window, should_alarm
from services.monitor.domain.groups import input_groups, row_groups
from services.monitor.domain.histograms import window_histograms
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.domain.windows import Window
from services.monitor.handlers import labels_arrived

log = logging.getLogger(__name__)
CONSUMER = "monitor.predictions-logged"


def route(rt: Runtime, monitors: Monitors, metrics: MonitorMetrics, compare_every: int = 50) -> Route:
    """The topic's route: messages decoded as columns for :func:`handler`."""
    return Route.decoded(handler(rt, monitors, metrics, compare_every), decode_logged, (PredictionsLogged,))


def handler(
    rt: Runtime, monitors: Monitors, metrics: MonitorMetrics, compare_every: int = 50
) -> Callable[[LoggedPredictions, Delivery], Awaitable[None]]:
    async def handle(event: LoggedPredictions, delivery: Delivery) -> None:
        """Keep the predictions for label matching, then add them to the window."""
        if event.shadow:  # copies of requests already answered: scored once labelled, never in a window
            await outbox.once(rt.db, CONSUMER, event, lambda conn: _shadow(conn, monitors, event, compare_every))
            return
        stored = await outbox.once(rt.db, CONSUMER, event, lambda conn: _store(conn, monitors, event, compare_every))
        if stored is None:
            return
        early, monitor = stored
        if early:
            _score_early_labels(event, early, monitor, metrics)
        if monitor is None or monitor.version != event.version:
            return  # traffic of a version no longer (or not yet) monitored
        monitor.causes.append(trace.get_current_span().get_span_context())
        full = monitor.observe_columns(event.features, event.predictions)
        for window in full:
            await _judge(rt, monitor, window, metrics)

    return handle


async def _store(
    conn: asyncpg.Connection, monitors: Monitors, event: LoggedPredictions, compare_every: int
) -> tuple[list[repository.EarlyLabel], ModelMonitor | None]:
    monitor = await monitors.load(conn, event.model, version=event.version)
    inputs = None
    if monitor is not None and monitor.schema.sensitive:
        inputs = [input_groups(monitor.schema, row) for row in _sensitive_rows(monitor, event)]
    early = await repository.store_predictions(conn, event, inputs)
    if early and monitor is not None:  # labels that overtook their predictions, scored for this version
        predicted = dict(zip(event.request_ids, event.predictions, strict=True))
        scored = [(e.request_id, event.version, predicted[e.request_id], e.label) for e in early]
        groups = {}
        if inputs is not None:
            logged = dict(zip(event.request_ids, inputs, strict=True))
            groups = {e.request_id: row_groups(monitor.schema, logged[e.request_id], e.attributes) for e in early}
        await labels_arrived.score_live(conn, monitor, scored, compare_every, groups)
    return early, monitor


def _sensitive_rows(monitor: ModelMonitor, event: LoggedPredictions) -> list[dict[str, Any]]:
    """Each prediction's sensitive inputs (those logged), one dict a row: built only for models that declare
    sensitive features, and only of those columns."""
    names = [name for name in monitor.schema.sensitive if name in event.features]
    return [dict(zip(names, values, strict=True)) for values in zip(*(event.features[n] for n in names), strict=True)] \
        if names else [{} for _ in range(len(event))]  # fmt: skip


async def _shadow(conn: asyncpg.Connection, monitors: Monitors, event: LoggedPredictions, compare_every: int) -> None:
    """Keep a shadow's predictions; those whose request is labelled already are scored now."""
    await versions.store_shadow(conn, event)
    monitor = await monitors.load(conn, event.model)
    if monitor is not None and await versions.score_shadows(conn, event.model, event.request_ids, monitor.outcome):
        await labels_arrived.publish_comparisons(conn, monitor, compare_every)


def _score_early_labels(
    event: LoggedPredictions, early: list[repository.EarlyLabel], monitor: ModelMonitor | None, metrics: MonitorMetrics
) -> None:
    """Score the labels that were waiting for these predictions, per sender."""
    predicted = dict(zip(event.request_ids, event.predictions, strict=True))
    by_source: dict[tuple[str, bool] | None, list[tuple[int, Any, Any]]] = {}
    for label in early:
        by_source.setdefault(label.source, []).append((event.version, predicted[label.request_id], label.label))
    metrics.labels.labels(event.model, "true").inc(len(early))
    if monitor is not None:
        for source, matched in by_source.items():
            metrics.record_live(monitor.model, monitor.score(matched, source))


async def _judge(rt: Runtime, monitor: ModelMonitor, window: Window, metrics: MonitorMetrics) -> None:
    report = evaluate_window(window, monitor.performance(), monitor.config)
    monitor.last_report = report
    metrics.record(monitor, report)
    # Decide on a copy: the live alarm state moves only once the report (and alarm) are committed,
    # so a failed write neither loses the alarm nor starts a cool-down for an alarm nobody received.
    alarms = monitor.alarms.copy()
    alarm, since = should_alarm(alarms, report, datetime.now(UTC), monitor.config)
    async with rt.db.acquire() as conn, conn.transaction():
        await repository.store_report(conn, monitor.model, monitor.version, report, window_histograms(window))
        if alarm:
            await _raise(rt, conn, monitor, _drift_event(monitor, report, since))
    monitor.alarms = alarms  # committed: now the cool-down may start
    if alarm:
        metrics.alarms.labels(monitor.model).inc()
        log.warning("drift detected for %s v%d: %s", monitor.model, monitor.version, report.reason)


async def _raise(rt: Runtime, conn: asyncpg.Connection, monitor: ModelMonitor, event: DriftDetected) -> None:
    """drift.detected through the outbox, and the alarm row, in the caller's transaction."""
    with rt.telemetry.tracer.start_as_current_span(
        "drift detected",
        attributes={"driftloop.model": monitor.model, "driftloop.version": monitor.version},
        links=[trace.Link(c) for c in monitor.causes if c.is_valid],  # many causes: links, not one parent
    ):
        await outbox.add(conn, event)
    await repository.store_alarm(conn, monitor.model, monitor.version, event.event_id, event.kinds, event.summary)


def _drift_event(monitor: ModelMonitor, report: WindowReport, since: datetime | None) -> DriftDetected:
    live = {}
    if report.performance is not None:
        live = {f"live_{report.performance.metric}": report.performance.live,
                f"holdout_{report.performance.metric}": report.performance.reference,
                "labels": float(report.performance.labels)}  # fmt: skip
    return DriftDetected(
        producer="monitor",
        model=monitor.model,
        version=monitor.version,
        dataset=monitor.dataset,
        kinds=report.kinds,
        window_size=report.records,
        window_started_at=since or report.started_at,
        features=[
            FeatureDrift(feature=v.feature, statistics=v.statistics, thresholds=v.thresholds, drifted=v.drifted)
            for v in [*report.features, *([report.prediction] if report.prediction else [])]
        ],
        metrics=live,
        summary=report.reason,
        label_sources=monitor.label_provenance(),
    )
