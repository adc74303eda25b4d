"""predictions.logged: fill the model's window; judge it when full; raise drift.detected."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import asyncpg
from opentelemetry import trace

from libs.common import outbox
from libs.common.events import DriftDetected, Event, FeatureDrift, PredictionsLogged
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import ModelMonitor, Monitors, now, report_json
from services.monitor.domain.decision import WindowReport, evaluate_window, should_alarm
from services.monitor.domain.windows import Window

log = logging.getLogger(__name__)
CONSUMER = "monitor.predictions-logged"


def handler(rt: Runtime, monitors: Monitors, metrics: MonitorMetrics) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Keep the predictions for label matching, then add them to the window."""
        assert isinstance(event, PredictionsLogged)
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            await conn.copy_records_to_table(
                "predictions",
                columns=["request_id", "model", "version", "prediction", "at"],
                records=[(r.request_id, event.model, event.version, json.dumps(r.prediction), r.at)
                         for r in event.records],
            )  # fmt: skip
            early = await conn.fetch(
                "DELETE FROM pending_labels WHERE request_id = ANY($1::text[]) AND model = $2 "
                "RETURNING request_id, label, principal, trusted",
                [r.request_id for r in event.records], event.model,
            )  # fmt: skip
            if early:
                await conn.execute(
                    "UPDATE predictions SET labelled = true WHERE request_id = ANY($1::text[])",
                    [r["request_id"] for r in early],
                )
            monitor = await monitors.load(conn, event.model, version=event.version)
        if early:
            predicted = {r.request_id: r.prediction for r in event.records}
            by_source: dict[tuple[str, bool] | None, list[tuple[int, Any, Any]]] = {}
            for r in early:
                source = (r["principal"], bool(r["trusted"])) if r["principal"] is not None else None
                by_source.setdefault(source, []).append(
                    (event.version, predicted[r["request_id"]], json.loads(r["label"]))
                )
            metrics.labels.labels(event.model, "true").inc(len(early))
            if monitor is not None:
                for source, matched in by_source.items():
                    metrics.record_live(monitor.model, monitor.score(matched, source))
        if monitor is None or monitor.version != event.version:
            return  # traffic of a version no longer (or not yet) monitored
        monitor.causes.append(trace.get_current_span().get_span_context())
        full = monitor.observe([r.features for r in event.records], [r.prediction for r in event.records])
        for window in full:
            await _judge(rt, monitor, window, metrics)

    return handle


async def _judge(rt: Runtime, monitor: ModelMonitor, window: Window, metrics: MonitorMetrics) -> None:
    report = evaluate_window(window, monitor.performance(), monitor.config)
    monitor.last_report = report
    metrics.record(monitor, report)
    # Decide on a copy: the live alarm state moves only once the report (and alarm) are committed,
    # so a failed write neither loses the alarm nor starts a cool-down for an alarm nobody received.
    alarms = monitor.alarms.copy()
    alarm, since = should_alarm(alarms, report, now(), monitor.config)
    async with rt.db.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO reports (model, version, flagged, report) VALUES ($1, $2, $3, $4)",
            monitor.model, monitor.version, report.flagged, report_json(report),
        )  # fmt: skip
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
    await conn.execute(
        "INSERT INTO alarms (model, version, event_id, kinds, summary) VALUES ($1, $2, $3, $4, $5)",
        monitor.model, monitor.version, event.event_id, event.kinds, event.summary,
    )  # fmt: skip


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
