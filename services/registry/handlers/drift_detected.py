"""drift.detected: remember each alarm and who supplied the labels behind it."""

from __future__ import annotations

import json

from libs.common import outbox
from libs.common.events import DriftDetected, Event
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime

CONSUMER = "registry.drift-detected"


def handler(rt: Runtime) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Keep the alarm: the version a retrain after it produces is judged on its labels' sources."""
        assert isinstance(event, DriftDetected)
        sources = None if event.label_sources is None else json.dumps([s.model_dump() for s in event.label_sources])
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            await conn.execute(
                "INSERT INTO alarms (event_id, model, kinds, label_sources) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING",
                event.event_id, event.model, event.kinds, sources,
            )  # fmt: skip

    return handle
