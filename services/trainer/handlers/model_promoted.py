"""model.promoted: keep track of each model's champion, the yardstick of the next job."""

from __future__ import annotations

from libs.common import outbox
from libs.common.events import Event, ModelPromoted
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.trainer.adapters import repository
from services.trainer.handlers.planning import dataset_for
from services.trainer.settings import TrainerSettings

CONSUMER = "trainer.model-promoted"


def handler(rt: Runtime, settings: TrainerSettings) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Remember the champion's artifact so jobs compare against it on the same holdout."""
        assert isinstance(event, ModelPromoted)
        if event.move.alias != "champion":
            return
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            await repository.set_champion(
                conn, event.model, event.version, event.artifact, dataset_for(settings, event.model)
            )

    return handle
