"""model.promoted: load the new champion in the background and swap it in.

A version is announced again when its ONNX export arrives after it (the
trainer publishes a version before exporting it): it is then reloaded and
swapped in the same way, on onnxruntime when parity held.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from libs.common.events import Event, ModelPromoted
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.serving.domain.models import LoadedModel, ModelTable

log = logging.getLogger(__name__)

Loader = Callable[[ModelPromoted], Awaitable[LoadedModel]]


def handler(rt: Runtime, table: ModelTable, load: Loader) -> Handler:
    async def handle(event: Event, delivery: Delivery) -> None:
        """Load and verify the promoted artifact, then swap it in atomically."""
        assert isinstance(event, ModelPromoted)
        if event.move.alias != "champion":
            return  # canary and shadow traffic splits are not served yet
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
