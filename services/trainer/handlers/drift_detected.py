"""drift.detected: keep the alarm (when the drift began, which version it is about); retrain on data from after it.

A kept alarm is acted on by the policy: at once when it may (a routine job in
the way is cancelled), otherwise when the running job ends or the cool-down
passes (the runner re-plans then).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg

from libs.common import outbox
from libs.common.events import DriftDetected
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from libs.common.telemetry import inject_context
from services.trainer.adapters import repository
from services.trainer.domain.policy import DriftVerdict, accept_drift
from services.trainer.handlers.planning import dataset_for, model_view, plan
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
CONSUMER = "trainer.drift-detected"


def handler(rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> EventHandler[DriftDetected]:
    async def handle(event: DriftDetected, delivery: Delivery) -> None:
        """Mark the model as drifted (unless in cool-down) and queue a job once enough fresh rows exist."""
        if await outbox.once(rt.db, CONSUMER, event, lambda conn: _keep_alarm(conn, rt, settings, event)):
            on_queued()

    return handle


async def _keep_alarm(conn: asyncpg.Connection, rt: Runtime, settings: TrainerSettings, event: DriftDetected) -> bool:
    """Mark the drift unless the policy ignores the alarm, then plan; whether a job was queued."""
    dataset = event.dataset or dataset_for(settings, event.model)
    view, _ = await model_view(conn, rt.store, event.model, dataset)
    verdict, why = accept_drift(view, event.version)
    log.info("drift report for %s v%d: %s", event.model, event.version, why, extra={"summary": event.summary})
    if verdict is DriftVerdict.IGNORE:
        return False
    since = event.window_started_at or event.occurred_at
    await repository.mark_drift(conn, event.model, since, event.event_id, inject_context(), event.version)
    decision, job_id = await plan(
        conn, rt.store, settings, model=event.model, dataset=dataset,
        trigger_event_id=event.event_id, correlation_id=event.correlation_id,
    )  # fmt: skip
    log.info("retrain policy after drift: %s", decision.reason, extra={"model": event.model})
    return job_id is not None
