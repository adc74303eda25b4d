"""predictions.logged: fill the model's window; judge it when full; raise drift.detected."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import trace

from libs.common import outbox
from libs.common.events import DriftDetected, FeatureDrift, PredictionsLogged
from libs.common.kafka import Delivery, EventHandler
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


def handler(
    rt: Runtime, monitors: Monitors, metrics: MonitorMetrics, compare_every: int = 50
) -> EventHandler[PredictionsLogged]:
    async def handle(event: PredictionsLogged, delivery: Delivery) -> None:
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
        full = monitor.observe([r.features for r in event.records], [r.prediction for r in event.records])
        for window in full:
            await _judge(rt, monitor, window, metrics)

    return handle


async def _store(
    conn: asyncpg.Connection, monitors: Monitors, event: PredictionsLogged, compare_every: int
) -> tuple[list[repository.EarlyLabel], ModelMonitor | None]:
    monitor = await monitors.load(conn, event.model, version=event.version)
    inputs = None
    if monitor is not None and monitor.schema.sensitive:
        inputs = [input_groups(monitor.schema, r.features) for r in event.records]
    early = await repository.store_predictions(conn, event, inputs)
    if early and monitor is not None:  # labels that overtook their predictions, scored for this version
        predicted = {r.request_id: r.prediction for r in event.records}
        scored = [(e.request_id, event.version, predicted[e.request_id], e.label) for e in early]
        groups = {}
        if inputs is not None:
            logged = {r.request_id: g for r, g in zip(event.records, inputs, strict=True)}
            groups = {e.request_id: row_groups(monitor.schema, logged[e.request_id], e.attributes) for e in early}
        await labels_arrived.score_live(conn, monitor, scored, compare_every, groups)
    return early, monitor


async def _shadow(conn: asyncpg.Connection, monitors: Monitors, event: PredictionsLogged, compare_every: int) -> None:
    """Keep a shadow's predictions; those whose request is labelled already are scored now."""
    await versions.store_shadow(conn, event)
    monitor = await monitors.load(conn, event.model)
    if monitor is not None:
        request_ids = [r.request_id for r in event.records]
        if await versions.score_shadows(conn, event.model, request_ids, monitor.outcome):
            await labels_arrived.publish_comparisons(conn, monitor, compare_every)


def _score_early_labels(
    event: PredictionsLogged, early: list[repository.EarlyLabel], monitor: ModelMonitor | None, metrics: MonitorMetrics
) -> None:
    """Score the labels that were waiting for these predictions, per sender."""
    predicted = {r.request_id: r.prediction for r in event.records}
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
