"""drift.detected: remember each alarm and who supplied the labels behind it."""

from __future__ import annotations

from libs.common import outbox
from libs.common.events import DriftDetected
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.registry.adapters import repository

CONSUMER = "registry.drift-detected"


def handler(rt: Runtime) -> EventHandler[DriftDetected]:
    async def handle(event: DriftDetected, delivery: Delivery) -> None:
        """Keep the alarm: the version a retrain after it produces is judged on its labels' sources."""
        await outbox.once(rt.db, CONSUMER, event, lambda conn: repository.keep_alarm(conn, event))

    return handle
