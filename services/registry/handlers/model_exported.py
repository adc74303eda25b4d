"""model.exported: a version's ONNX export arrives after the version itself; serving switches its runtime.

The trainer publishes a version as soon as it is trained and exports it to
ONNX afterwards (on a topic of its own, so an export that overtakes its
version is retried until the version is registered), so a new model serves at once on its scikit-learn pipeline.
When the export arrives it is stored with the version and audited (action
``export``); if the version holds an alias, ``model.promoted`` is announced
again for that same version, carrying the export, and serving reloads it on
onnxruntime when parity held. No alias moves and no promotion is recorded.
"""

from __future__ import annotations

import logging

import asyncpg

from libs.common import outbox
from libs.common.errors import TransientError
from libs.common.events import ModelExported
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.registry.adapters import repository

log = logging.getLogger(__name__)
CONSUMER = "registry.model-exported"


class VersionNotRegistered(TransientError):
    """The export's version is not registered (yet): model.trained may still be on its way."""

    code = "version_not_registered"


def handler(rt: Runtime) -> EventHandler[ModelExported]:
    async def handle(event: ModelExported, delivery: Delivery) -> None:
        """Store the export with its version and re-announce the version where it serves (once per event)."""
        await outbox.once(rt.db, CONSUMER, event, lambda conn: _record(conn, event))

    return handle


async def _record(conn: asyncpg.Connection, event: ModelExported) -> bool:
    row = await repository.record_export(conn, event)
    if row is None:  # retried with backoff, then dead-lettered with this reason
        raise VersionNotRegistered(f"no version of {event.model} trained by job {event.job_id} from that pipeline")
    runtime = repository.runtime(event.onnx)
    why = f"runs on {runtime}: {event.onnx.detail or 'no detail'}"
    await repository.audit(conn, event.model, "export", "trainer", why, to_version=row["version"])
    aliases = await repository.announce_runtime(conn, row, reason=f"ONNX export after training: {why}",
                                                correlation_id=event.correlation_id)  # fmt: skip
    log.info("model %s v%d %s (announced for %s)", event.model, row["version"], why, aliases or "no alias")
    return True
