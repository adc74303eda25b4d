"""labels.arrived: match ground truth to earlier predictions; feed the live metric.

Serving publishes labels only for request ids it issued for the model, but a
client allowed to write the topic directly skips that check; so the ids are
checked again here (one MAC each, no I/O) and an event carrying any id serving
never issued is dead-lettered whole, before anything is stored or scored. So is
an event serving did not attest: its sender and trust level (which decide
whether a retrain may promote by itself) would be whatever the writer claimed.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from libs.common import outbox
from libs.common.events import LabelsArrived
from libs.common.kafka import Delivery, EventHandler
from libs.common.request_ids import RequestIds, UnattestedLabels, UnissuedRequestIds, check_attested, check_issued
from libs.common.schema import Task
from libs.common.service import Runtime
from services.monitor.adapters import groups as group_window
from services.monitor.adapters import repository, versions
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors
from services.monitor.domain.groups import row_groups
from services.monitor.domain.monitor import ModelMonitor

CONSUMER = "monitor.labels-arrived"
#: Labels whose prediction never arrives are forgotten after a day.
PENDING_LABEL_TTL_S = 24 * 3600.0


def handler(
    rt: Runtime, monitors: Monitors, metrics: MonitorMetrics, ids: RequestIds | None = None, compare_every: int = 50
) -> EventHandler[LabelsArrived]:
    async def handle(event: LabelsArrived, delivery: Delivery) -> None:
        """Score each label against the prediction it answers (served by the monitored version)."""
        if ids is not None:
            labelled = event.attested_labels()
            try:
                check_issued(ids, event.model, [item.request_id for item in event.labels])
                check_attested(ids, event.model, event.principal, event.trusted, labelled, event.attestation)
            except UnissuedRequestIds as refused:
                metrics.labels_refused.labels(event.model, "unissued").inc(refused.details["unissued"])
                raise
            except UnattestedLabels:
                metrics.labels_refused.labels(event.model, "unattested").inc(len(labelled))
                raise
        labels = {item.request_id: item.label for item in event.labels}
        matched = await outbox.once(
            rt.db, CONSUMER, event, lambda conn: _match(conn, monitors, event, labels, compare_every)
        )
        if matched is None:
            return
        rows, waiting, monitor = matched
        metrics.labels.labels(event.model, "true").inc(len(rows))
        metrics.labels.labels(event.model, "waiting").inc(len(waiting))
        # A second label for one prediction is never scored: repeats inside the event,
        # labels for predictions already labelled, and repeats of a label still waiting.
        metrics.labels.labels(event.model, "duplicate").inc(len(event.labels) - len(rows) - len(waiting))
        if monitor is not None:
            scored = [(r["version"], json.loads(r["prediction"]), labels[r["request_id"]]) for r in rows]
            source = (event.principal, bool(event.trusted)) if event.principal is not None else None
            metrics.record_live(monitor.model, monitor.score(scored, source))

    return handle


async def _match(
    conn: asyncpg.Connection, monitors: Monitors, event: LabelsArrived, labels: dict[str, Any], compare_every: int
) -> tuple[list[asyncpg.Record], list[str], ModelMonitor | None]:
    """Label the predictions these labels answer and park the rest; (labelled rows, parked ids, monitor).
    Each labelled prediction is scored for the version that made it (and a shadow's copy of it)."""
    await repository.lock_labels(conn, [event.model])  # ordered with the storing of predictions
    rows = await repository.label_predictions(conn, event.model, list(labels))
    matched = {r["request_id"] for r in rows}
    unmatched = [rid for rid in labels if rid not in matched]
    waiting = await repository.park_labels(conn, event, unmatched, labels) if unmatched else []
    await repository.forget_parked_labels(conn, PENDING_LABEL_TTL_S)
    monitor = await monitors.load(conn, event.model)
    if monitor is not None and rows:
        scored = [(r["request_id"], r["version"], json.loads(r["prediction"]), labels[r["request_id"]]) for r in rows]
        await score_live(conn, monitor, scored, compare_every, _groups(monitor, event, rows))
    return rows, waiting, monitor


def _groups(monitor: ModelMonitor, event: LabelsArrived, rows: list[asyncpg.Record]) -> dict[str, dict[str, str]]:
    """Request id → its group per sensitive feature: inputs as logged with the prediction, attributes as sent
    with the label (empty when the model declares no sensitive feature)."""
    if not monitor.schema.sensitive:
        return {}
    attributes = {item.request_id: item.attributes for item in event.labels}
    return {
        r["request_id"]: row_groups(monitor.schema, json.loads(r["sensitive"] or "null"),
                                    attributes.get(r["request_id"]))
        for r in rows
    }  # fmt: skip


async def score_live(
    conn: asyncpg.Connection,
    monitor: ModelMonitor,
    scored: list[tuple[str, int, Any, Any]],
    compare_every: int,
    groups: dict[str, dict[str, str]] | None = None,
) -> None:
    """Score labelled predictions per version (and the shadow's copies of them), keep them with their
    ``groups`` (request id → sensitive feature → group) for the live group metrics, then publish the
    canary's and shadow's comparisons with the champion that are due."""
    await versions.score_served(conn, monitor.model, scored, monitor.outcome)
    if groups:
        await group_window.store(conn, monitor.model, [(*s, groups[s[0]]) for s in scored if s[0] in groups])
    await versions.score_shadows(conn, monitor.model, [s[0] for s in scored], monitor.outcome)
    await publish_comparisons(conn, monitor, compare_every)


async def publish_comparisons(conn: asyncpg.Connection, monitor: ModelMonitor, compare_every: int) -> None:
    classification = monitor.schema.task is Task.CLASSIFICATION
    for compared in await versions.due_comparisons(conn, monitor.model, monitor.version, classification,
                                                   compare_every):  # fmt: skip
        await outbox.add(conn, compared)
