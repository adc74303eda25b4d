"""model.promoted: start monitoring the new champion against its reference profile; keep the canary and
shadow, whose live metrics are compared with the champion's."""

from __future__ import annotations

import asyncio
import logging

from libs.common import outbox
from libs.common.events import ModelPromoted
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.monitor.adapters import repository, versions
from services.monitor.adapters.state import Monitors

log = logging.getLogger(__name__)
CONSUMER = "monitor.model-promoted"


def handler(rt: Runtime, monitors: Monitors) -> EventHandler[ModelPromoted]:
    async def handle(event: ModelPromoted, delivery: Delivery) -> None:
        """Store the version's reference and make it the monitored version; windows start afresh."""
        if event.move.alias in ("canary", "shadow"):
            alias, version = event.move.alias, event.move.to_version
            await outbox.once(rt.db, CONSUMER, event, lambda conn: versions.set_live(conn, event.model, alias, version))
            return
        if event.move.alias != "champion":
            return
        # Verified before anything is stored: a forged promotion (unsigned, mis-signed or
        # replaced profile) is refused here and dead-lettered, leaving the monitored version as it was.
        await asyncio.to_thread(rt.store.get, event.profile)
        if await outbox.once(rt.db, CONSUMER, event, lambda conn: repository.monitor_version(conn, event)) is None:
            return  # a redelivery: an older promotion must not replace the version monitored since
        monitors.activate(event.model, event.version, event.profile, event.dataset_schema, event.dataset)
        log.info("monitoring %s v%d", event.model, event.version)

    return handle
