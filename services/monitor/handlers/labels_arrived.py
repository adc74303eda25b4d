"""labels.arrived: match ground truth to earlier predictions; feed the live metric."""

from __future__ import annotations

import json

from libs.common import outbox
from libs.common.events import Event, LabelsArrived
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors

CONSUMER = "monitor.labels-arrived"


def handler(rt: Runtime, monitors: Monitors, metrics: MonitorMetrics) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Score each label against the prediction it answers (served by the monitored version)."""
        assert isinstance(event, LabelsArrived)
        labels = {item.request_id: item.label for item in event.labels}
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            rows = await conn.fetch(
                "UPDATE predictions SET labelled = true WHERE request_id = ANY($1::text[]) AND model = $2 "
                "AND NOT labelled RETURNING request_id, version, prediction",
                list(labels), event.model,
            )  # fmt: skip
            monitor = await monitors.load(conn, event.model)
        metrics.labels.labels(event.model, "true").inc(len(rows))
        metrics.labels.labels(event.model, "false").inc(len(labels) - len(rows))
        if monitor is None:
            return
        outcomes = []
        for row in rows:
            if row["version"] == monitor.version:
                outcome = monitor.outcome(json.loads(row["prediction"]), labels[row["request_id"]])
                if outcome is not None:
                    outcomes.append(outcome)
        monitor.observe_labels(outcomes)
        performance = monitor.performance()
        if performance is not None:
            metrics.live_metric.labels(event.model, performance.metric).set(performance.live)

    return handle
