"""model.exported: a version's ONNX export arrives after the version itself; serving switches its runtime.

The trainer publishes a version as soon as it is trained and exports it to
ONNX afterwards, on a topic of its own, so a new model serves at once on its scikit-learn pipeline.
The two topics are read in no fixed order: an export that overtakes its version is kept
(``pending_exports``) and stored with the version when model.trained registers it.
When the export arrives it is stored with the version and audited (action
``export``); if the version holds an alias, ``model.promoted`` is announced
again for that same version, carrying the export, and serving reloads it on
onnxruntime when parity held. No alias moves and no promotion is recorded.
"""

from __future__ import annotations

import logging

import asyncpg

from libs.common import outbox
from libs.common.events import ModelExported, OnnxExport
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.registry.adapters import repository

log = logging.getLogger(__name__)
CONSUMER = "registry.model-exported"


def handler(rt: Runtime) -> EventHandler[ModelExported]:
    async def handle(event: ModelExported, delivery: Delivery) -> None:
        """Store the export with its version and re-announce the version where it serves (once per event)."""
        await outbox.once(rt.db, CONSUMER, event, lambda conn: _record(conn, event))

    return handle


async def _record(conn: asyncpg.Connection, event: ModelExported) -> bool:
    row = await repository.record_export(conn, event)
    if row is None:  # it overtook its version (one consumer reads both topics: waiting would hold that back)
        await repository.keep_pending_export(conn, event)
        log.info("model %s: the export of job %s came before its version: kept", event.model, event.job_id)
        return True
    why = runs_on(event.onnx)
    await repository.audit(conn, event.model, "export", "trainer", why, to_version=row["version"])
    aliases = await repository.announce_runtime(conn, row, reason=f"ONNX export after training: {why}",
                                                correlation_id=event.correlation_id)  # fmt: skip
    log.info("model %s v%d %s (announced for %s)", event.model, row["version"], why, aliases or "no alias")
    return True


def runs_on(onnx: OnnxExport) -> str:
    """The audit's words for an export: which runtime serves the version, and why."""
    return f"runs on {repository.runtime(onnx)}: {onnx.detail or 'no detail'}"
