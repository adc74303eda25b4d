"""data.arrived: record the new dataset version, then let the policy decide."""

from __future__ import annotations

import logging
from collections.abc import Callable

from libs.common import outbox
from libs.common.events import DataArrived, Event
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.trainer.adapters import repository
from services.trainer.handlers.planning import models_for, plan
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
CONSUMER = "trainer.data-arrived"


def handler(rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Track the latest dataset version; queue a job when the retrain policy says so."""
        assert isinstance(event, DataArrived)
        queued = False
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            await repository.upsert_dataset(conn, event.dataset, event.version, event.total_rows, event.manifest)
            models = set(models_for(settings, event.dataset)) | set(await repository.models_of(conn, event.dataset))
            for model in sorted(models):
                decision, job_id = await plan(
                    conn, rt.store, settings, model=model, dataset=event.dataset,
                    trigger_event_id=event.event_id, correlation_id=event.correlation_id,
                )  # fmt: skip
                log.info("retrain policy: %s", decision.reason, extra={"model": model, "job_id": str(job_id)})
                queued = queued or job_id is not None
        if queued:
            on_queued()

    return handle
