"""training.requested: an explicit retrain, from the CLI, the API or another system."""

from __future__ import annotations

import logging
from collections.abc import Callable

from libs.common import outbox
from libs.common.events import Event, TrainingRequested
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.trainer.handlers.planning import plan
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
CONSUMER = "trainer.training-requested"


def handler(rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Queue a job unless one is already queued or running for the model."""
        assert isinstance(event, TrainingRequested)
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            decision, job_id = await plan(
                conn, rt.store, settings, model=event.model, dataset=event.dataset, requested=True,
                trigger_event_id=event.event_id, correlation_id=event.correlation_id,
                reason=f"{event.reason} (by {event.requested_by})",
            )  # fmt: skip
        log.info("training request: %s", decision.reason, extra={"model": event.model, "job_id": str(job_id)})
        if job_id is not None:
            on_queued()

    return handle
