"""data.arrived: record the new dataset version, then let the policy decide."""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg

from libs.common import outbox
from libs.common.events import DataArrived
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.trainer.adapters import repository
from services.trainer.handlers.planning import models_for, plan
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
CONSUMER = "trainer.data-arrived"


def handler(rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> EventHandler[DataArrived]:
    async def handle(event: DataArrived, delivery: Delivery) -> None:
        """Track the latest dataset version; queue a job when the retrain policy says so."""
        if await outbox.once(rt.db, CONSUMER, event, lambda conn: _record(conn, rt, settings, event)):
            on_queued()

    return handle


async def _record(conn: asyncpg.Connection, rt: Runtime, settings: TrainerSettings, event: DataArrived) -> bool:
    """Record the version and plan each model trained on the dataset; whether a job was queued."""
    await repository.upsert_dataset(conn, event.dataset, event.version, event.total_rows, event.manifest)
    await repository.record_batch(conn, event.dataset, event.version, event.rows_accepted, event.occurred_at)
    models = set(models_for(settings, event.dataset)) | set(await repository.models_of(conn, event.dataset))
    queued = False
    for model in sorted(models):
        decision, job_id = await plan(
            conn, rt.store, settings, model=model, dataset=event.dataset,
            trigger_event_id=event.event_id, correlation_id=event.correlation_id,
        )  # fmt: skip
        log.info("retrain policy: %s", decision.reason, extra={"model": model, "job_id": str(job_id)})
        queued = queued or job_id is not None
    return queued
