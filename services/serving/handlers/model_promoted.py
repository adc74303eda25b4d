"""model.promoted: load the new champion in the background and swap it in; keep the canary and shadow.

A canary or shadow move loads that version the same way and sets the model's
split (the canary's share travels in the event); a move to no version clears it.

A version is announced again when its ONNX export arrives after it (the
trainer publishes a version before exporting it): it is then reloaded and
swapped in the same way, on onnxruntime when parity held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from libs.common.events import ModelPromoted
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.serving.domain.models import LoadedModel, ModelTable
from services.serving.domain.routing import CANARY, SHADOW, Splits

log = logging.getLogger(__name__)

Loader = Callable[[ModelPromoted], Awaitable[LoadedModel]]


def handler(
    rt: Runtime, table: ModelTable, load: Loader, splits: Splits[LoadedModel] | None = None
) -> EventHandler[ModelPromoted]:
    async def handle(event: ModelPromoted, delivery: Delivery) -> None:
        """Load and verify the promoted artifact, then swap it in atomically."""
        if event.move.alias in (CANARY, SHADOW):
            if splits is not None:
                await _split(event, splits, load)
            return
        if event.move.alias != "champion":
            return  # candidate: nothing to serve
        current = table.get(event.model)
        served = (current.version, current.artifact, current.onnx) if current is not None else None
        if served == (event.version, event.artifact, event.onnx):
            return  # redelivery: already serving it (the same version with a new ONNX export is reloaded)
        loaded = await load(event)
        with rt.telemetry.tracer.start_as_current_span(
            "model swap", attributes={"driftloop.model": event.model, "driftloop.version": event.version}
        ):
            swapped = table.offer(loaded)
        log.info(
            "model %s v%d %s on %s", event.model, event.version,
            "now serving" if swapped else "ignored: newer already served", loaded.runtime.name,
        )  # fmt: skip

    return handle


def _same(loaded: LoadedModel | None, event: ModelPromoted) -> bool:
    return loaded is not None and (loaded.version, loaded.artifact, loaded.onnx) == (
        event.version, event.artifact, event.onnx)  # fmt: skip


async def _split(event: ModelPromoted, splits: Splits[LoadedModel], load: Loader) -> None:
    """Point the model's canary (with its share) or shadow at the event's version, or clear it."""
    current = splits.get(event.model)
    held = None if current is None else current.canary if event.move.alias == CANARY else current.shadow
    loaded = None
    if event.move.to_version is not None:
        loaded = held if _same(held, event) else await load(event)  # a share change reloads nothing
    if event.move.alias == CANARY:
        # A re-announcement (the version's ONNX export arrived) carries no share: the current one stays.
        kept = current.share if current is not None and current.canary is not None and loaded is not None else 0.0
        share = event.share if event.share is not None else kept
        splits.set_canary(event.model, loaded, share)
        log.info("model %s canary: %s", event.model, f"v{event.version} at {share:g}%" if loaded else "none")
    else:
        splits.set_shadow(event.model, loaded)
        log.info("model %s shadow: %s", event.model, f"v{event.version}" if loaded else "none")
