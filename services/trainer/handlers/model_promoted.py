"""model.promoted: keep track of each model's champion, the yardstick of the next job."""

from __future__ import annotations

from libs.common import outbox
from libs.common.events import ModelPromoted
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.trainer.adapters import repository
from services.trainer.handlers.planning import dataset_for
from services.trainer.settings import TrainerSettings

CONSUMER = "trainer.model-promoted"


def handler(rt: Runtime, settings: TrainerSettings) -> EventHandler[ModelPromoted]:
    async def handle(event: ModelPromoted, delivery: Delivery) -> None:
        """Remember the champion's artifact so jobs compare against it on the same holdout."""
        if event.move.alias != "champion":
            return
        dataset = dataset_for(settings, event.model)
        await outbox.once(rt.db, CONSUMER, event, lambda conn: repository.set_champion(
            conn, event.model, event.version, event.artifact, dataset
        ))  # fmt: skip

    return handle
