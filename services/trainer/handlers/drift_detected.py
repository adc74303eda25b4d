"""drift.detected: keep the alarm (when the drift began, which version it is about); retrain on data from after it.

A kept alarm is acted on by the policy: at once when it may (a routine job in
the way is cancelled), otherwise when the running job ends or the cool-down
passes (the runner re-plans then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from libs.common import outbox
from libs.common.events import DriftDetected, Event
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from libs.common.telemetry import inject_context
from services.trainer.adapters import repository
from services.trainer.domain.policy import DriftVerdict, accept_drift
from services.trainer.handlers.planning import dataset_for, model_view, plan
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
CONSUMER = "trainer.drift-detected"


def handler(rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Mark the model as drifted (unless in cool-down) and queue a job once enough fresh rows exist."""
        assert isinstance(event, DriftDetected)
        dataset = event.dataset or dataset_for(settings, event.model)
        job_id = None
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            view, _ = await model_view(conn, rt.store, event.model, dataset)
            verdict, why = accept_drift(view, event.version)
            log.info("drift report for %s v%d: %s", event.model, event.version, why, extra={"summary": event.summary})
            if verdict is DriftVerdict.IGNORE:
                return
            since = event.window_started_at or event.occurred_at
            await repository.mark_drift(conn, event.model, since, event.event_id, inject_context(), event.version)
            decision, job_id = await plan(
                conn, rt.store, settings, model=event.model, dataset=dataset,
                trigger_event_id=event.event_id, correlation_id=event.correlation_id,
            )  # fmt: skip
            log.info("retrain policy after drift: %s", decision.reason, extra={"model": event.model})
        if job_id is not None:
            on_queued()

    return handle
