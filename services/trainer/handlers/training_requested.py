"""training.requested: an explicit retrain, from the CLI, the API or another system."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import asyncpg

from libs.common import outbox
from libs.common.events import TrainingRequested
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.trainer.domain.policy import Decision
from services.trainer.handlers.planning import plan
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
CONSUMER = "trainer.training-requested"


def handler(rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> EventHandler[TrainingRequested]:
    async def handle(event: TrainingRequested, delivery: Delivery) -> None:
        """Queue a job unless one is already queued or running for the model."""
        planned = await outbox.once(rt.db, CONSUMER, event, lambda conn: _plan(conn, rt, settings, event))
        if planned is None:
            return
        decision, job_id = planned
        log.info("training request: %s", decision.reason, extra={"model": event.model, "job_id": str(job_id)})
        if job_id is not None:
            on_queued()

    return handle


async def _plan(
    conn: asyncpg.Connection, rt: Runtime, settings: TrainerSettings, event: TrainingRequested
) -> tuple[Decision, uuid.UUID | None]:
    return await plan(
        conn, rt.store, settings, model=event.model, dataset=event.dataset, requested=True,
        trigger_event_id=event.event_id, correlation_id=event.correlation_id,
        reason=f"{event.reason} (by {event.requested_by})",
    )  # fmt: skip
