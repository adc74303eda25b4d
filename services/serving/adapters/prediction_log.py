"""Batching predictions into predictions.logged events.

Predictions are buffered per model version and published when a batch is
full or on a timer, never on the request path. A request hands over what it
served in columns (:class:`Served`); a flush joins the columns of the requests
it publishes and sends them as columns (the event's columnar form), so no
record per row is ever built here. The log is telemetry for the
monitor: a crash loses at most one unflushed batch, which the monitor's
windowed statistics tolerate; a full buffer (broker down) drops the oldest
records and counts them, rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from libs.common import topics
from libs.common.events import PredictionsLogged
from libs.common.kafka import BrokerPublisher
from libs.common.tasks import cancel_and_wait
from libs.common.telemetry import Telemetry
from services.serving.domain.predictions import Served, log_columns

log = logging.getLogger(__name__)
Key = tuple[str, int, bool]
"""(model, version, shadow): a shadow's predictions are never batched with served ones."""


class PredictionLog:
    def __init__(
        self,
        publisher: BrokerPublisher,
        telemetry: Telemetry,
        *,
        batch_size: int,
        flush_s: float,
        max_buffer: int = 100_000,
    ) -> None:
        self.publisher = publisher
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.max_buffer = max_buffer
        self._served: dict[Key, deque[Served]] = defaultdict(deque)
        self._pending = 0
        self._causes: dict[Key, list[trace.SpanContext]] = defaultdict(list)
        self._unsent: deque[tuple[EncodedEvent, list[trace.SpanContext]]] = deque()
        self.tracer = telemetry.tracer
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = Counter(
            "driftloop_prediction_log_dropped_total", "Predictions dropped from a full log buffer.",
            registry=telemetry.registry,
        )  # fmt: skip
        self.batch_sizes = Histogram(
            "driftloop_prediction_log_batch_size", "Predictions per predictions.logged event.",
            buckets=(1, 10, 50, 100, 200, 500, 1000), registry=telemetry.registry,
        )  # fmt: skip

    def add(
        self, model: str, version: int, served: Served, cause: trace.SpanContext | None = None, *, shadow: bool = False
    ) -> None:
        """Queue what one request served (or what the shadow predicted for it); cheap (no per-row work)."""
        key = (model, version, shadow)
        self._served[key].append(served)
        if cause is not None and cause.is_valid:
            self._causes[key].append(cause)
        self._pending += served.rows
        if self._pending > self.max_buffer:
            self._drop_oldest(self._pending - self.max_buffer)
        if self._pending >= self.batch_size:
            self._full.set()

    def _drop_oldest(self, excess: int) -> None:
        dropped = 0
        while self._unsent and dropped < excess:  # the oldest first: unsent events, then served rows
            dropped += self._unsent.popleft()[0].rows
        for served in self._served.values():
            while served and dropped < excess:
                dropped += served.popleft().rows
        self._pending -= dropped
        self.dropped.inc(dropped)

    async def flush(self) -> None:
        # A batch whose publish failed is sent again as the same event (same id):
        # the broker may have stored it before the failure, and the monitor
        # dedupes on event ids, never on request ids.
        while self._unsent:
            event, causes = self._unsent[0]
            if not await self._publish(event, causes):
                return
            self._unsent.popleft()
            self._pending -= event.rows
        for (model, version, shadow), queue in list(self._served.items()):
            while queue:
                parts, rows = _take(queue, self.batch_size)
                # One event, many causes: the publish links to every request it carries.
                key = (model, version, shadow)
                causes, self._causes[key] = self._causes[key][:128], []
                event = encode(model, version, log_columns(parts), rows, shadow=shadow)
                if not await self._publish(event, causes):  # broker down: kept, as this event, for the next flush
                    self._unsent.append((event, causes))
                    return
                self._pending -= rows
                await asyncio.sleep(0)

    async def _publish(self, event: EncodedEvent, causes: list[trace.SpanContext]) -> bool:
        try:
            with self.tracer.start_as_current_span(
                "predictions.logged flush", links=[trace.Link(c) for c in causes],
                attributes={"driftloop.model": event.model, "driftloop.model.version": event.version,
                            "driftloop.batch_size": event.rows},
            ):  # fmt: skip
                headers = {topics.HEADER_EVENT_TYPE: _EVENT_TYPE, topics.HEADER_EVENT_ID: event.event_id}
                sent = await self.publisher.send(PredictionsLogged.topic, event.payload, key=event.model.encode(),
                                                 headers=headers)  # fmt: skip
                await sent  # the broker's acknowledgement
        except Exception as exc:
            log.warning("prediction log publish failed: %r", exc)
            return False
        self.batch_sizes.observe(event.rows)
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see libs.common.tasks
                async with asyncio.timeout(self.flush_s):
                    await self._full.wait()
            self._full.clear()
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="prediction-log")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.flush()


@dataclass(frozen=True)
class EncodedEvent:
    """A predictions.logged event, as the bytes published (kept to be sent again, same id, after a failure)."""

    event_id: str
    model: str
    version: int
    rows: int
    payload: bytes


_EVENT_TYPE: str = PredictionsLogged.model_fields["event_type"].default


def _take(queue: deque[Served], rows: int) -> tuple[list[Served], int]:
    """The oldest served requests, up to ``rows`` rows, off ``queue``; a request that does not fit whole
    is split, its rest left first in line (slices are views: nothing is copied)."""
    parts: list[Served] = []
    taken = 0
    while queue and taken < rows:
        served = queue.popleft()
        if taken + served.rows > rows:
            fits = rows - taken
            queue.appendleft(served.slice(fits, served.rows))
            served = served.slice(0, fits)
        parts.append(served)
        taken += served.rows
    return parts, taken


def encode(model: str, version: int, columns: dict[str, Any], rows: int, *, shadow: bool = False) -> EncodedEvent:
    """The event carrying ``rows`` predictions in its columnar form (:func:`log_columns`), encoded with
    orjson in one call (NumPy-free plain lists; NaN is written as null). Building the pydantic event
    would validate every value again for nothing. Consumers parse it as any :class:`PredictionsLogged`."""
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id, "event_type": _EVENT_TYPE, "schema_version": PredictionsLogged.current_version,
        "occurred_at": datetime.now(UTC), "producer": "serving", "correlation_id": None,
        "model": model, "version": version, "columns": columns, "shadow": shadow,
    }  # fmt: skip
    return EncodedEvent(event_id, model, version, rows, orjson.dumps(envelope))
