"""model.promoted: start monitoring the new champion against its reference profile."""

from __future__ import annotations

import asyncio
import json
import logging

from libs.common import outbox
from libs.common.events import Event, ModelPromoted
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.monitor.adapters.state import Monitors

log = logging.getLogger(__name__)
CONSUMER = "monitor.model-promoted"


def handler(rt: Runtime, monitors: Monitors) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Store the version's reference and make it the monitored version; windows start afresh."""
        assert isinstance(event, ModelPromoted)
        if event.move.alias != "champion":
            return
        # Verified before anything is stored: a forged promotion (unsigned, mis-signed or
        # replaced profile) is refused here and dead-lettered, leaving the monitored version as it was.
        await asyncio.to_thread(rt.store.get, event.profile)
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            await conn.execute(
                "INSERT INTO reference_profiles (model, version, dataset, profile, schema, metrics) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model, version) DO NOTHING",
                event.model, event.version, event.dataset, event.profile.model_dump_json(),
                event.dataset_schema.model_dump_json(), json.dumps(event.metrics),
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO monitored (model, version) VALUES ($1, $2) "
                "ON CONFLICT (model) DO UPDATE SET version = $2, updated_at = now()",
                event.model, event.version,
            )  # fmt: skip
        monitors.activate(event.model, event.version, event.profile, event.dataset_schema, event.dataset)
        log.info("monitoring %s v%d", event.model, event.version)

    return handle
