"""labels.arrived: match ground truth to earlier predictions; feed the live metric.

Serving publishes labels only for request ids it issued for the model, but a
client allowed to write the topic directly skips that check; so the ids are
checked again here (one MAC each, no I/O) and an event carrying any id serving
never issued is dead-lettered whole, before anything is stored or scored.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from libs.common import outbox
from libs.common.events import Event, LabelsArrived
from libs.common.kafka import Delivery, Handler
from libs.common.request_ids import RequestIds, UnissuedRequestIds, check_issued
from libs.common.service import Runtime
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors

CONSUMER = "monitor.labels-arrived"
#: Labels whose prediction never arrives are forgotten after a day.
PENDING_LABEL_TTL_S = 24 * 3600.0


def handler(rt: Runtime, monitors: Monitors, metrics: MonitorMetrics, ids: RequestIds | None = None) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Score each label against the prediction it answers (served by the monitored version)."""
        assert isinstance(event, LabelsArrived)
        if ids is not None:
            try:
                check_issued(ids, event.model, [item.request_id for item in event.labels])
            except UnissuedRequestIds as refused:
                metrics.labels_refused.labels(event.model, "unissued").inc(refused.details["unissued"])
                raise
        labels = {item.request_id: item.label for item in event.labels}
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            rows = await conn.fetch(
                "UPDATE predictions SET labelled = true WHERE request_id = ANY($1::text[]) AND model = $2 "
                "AND NOT labelled RETURNING request_id, version, prediction",
                list(labels), event.model,
            )  # fmt: skip
            matched = {r["request_id"] for r in rows}
            unmatched = [rid for rid in labels if rid not in matched]
            waiting = await _wait_for_predictions(conn, event, unmatched, labels) if unmatched else []
            await conn.execute(
                "DELETE FROM pending_labels WHERE at < now() - make_interval(secs => $1)", PENDING_LABEL_TTL_S
            )
            monitor = await monitors.load(conn, event.model)
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


async def _wait_for_predictions(
    conn: asyncpg.Connection, event: LabelsArrived, request_ids: list[str], labels: dict[str, Any]
) -> list[str]:
    """Park labels whose prediction has not arrived yet; return those parked (not repeats)."""
    labelled = await conn.fetch(
        "SELECT request_id FROM predictions WHERE request_id = ANY($1::text[]) AND model = $2 AND labelled",
        request_ids, event.model,
    )  # fmt: skip
    done = {r["request_id"] for r in labelled}
    fresh = [rid for rid in request_ids if rid not in done]
    if not fresh:
        return []
    parked = await conn.fetch(
        "INSERT INTO pending_labels (request_id, model, label, principal, trusted) SELECT r, $2, l, $4, $5 "
        "FROM unnest($1::text[], $3::jsonb[]) AS u (r, l) ON CONFLICT DO NOTHING RETURNING request_id",
        fresh, event.model, [json.dumps(labels[rid]) for rid in fresh], event.principal, event.trusted,
    )  # fmt: skip
    return [r["request_id"] for r in parked]
