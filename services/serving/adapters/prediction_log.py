"""Batching predictions into predictions.logged events.

Predictions are buffered per model version and published when a batch is
full or on a timer, never on the request path. A request hands over what it
served in columns (:class:`Served`); the records are built here, when the log
flushes, so a response never waits for them. The log is telemetry for the
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
from services.serving.domain.predictions import Served

log = logging.getLogger(__name__)
Key = tuple[str, int, bool]
"""(model, version, shadow): a shadow's predictions are never batched with served ones."""

RECORDS_STEP = 100
"""Most rows whose records the log builds in one turn of the event loop (about 0.3 ms of work; a
1,000-row request's records built in one go held the loop for ~3 ms)."""


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
        self._buffers: dict[Key, deque[dict[str, Any]]] = defaultdict(deque)
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
        queue = self._served[key]
        if served.rows <= RECORDS_STEP:
            queue.append(served)
        else:  # the log builds records one queued item per turn of the event loop: keep each turn short
            queue.extend(served.slice(start, start + RECORDS_STEP) for start in range(0, served.rows, RECORDS_STEP))
        self._buffers.setdefault(key, deque())
        if cause is not None and cause.is_valid:
            self._causes[key].append(cause)
        self._pending += served.rows
        if self._pending > self.max_buffer:
            self._drop_oldest(self._pending - self.max_buffer)
        if self._pending >= self.batch_size:
            self._full.set()

    def _drop_oldest(self, excess: int) -> None:
        dropped = 0
        while self._unsent and dropped < excess:  # the oldest first: unsent events, built records, served ones
            dropped += self._unsent.popleft()[0].rows
        for records in self._buffers.values():
            while records and dropped < excess:
                records.popleft()
                dropped += 1
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
        # Building records is the log's heaviest work (dicts per row). It runs on the event loop
        # one request's worth at a time, yielding in between, so requests are answered between the
        # steps: on a worker thread it would hold the GIL for milliseconds at a stretch instead.
        for key, queue in list(self._served.items()):
            buffer = self._buffers[key]
            while queue:
                buffer.extend(queue.popleft().records())
                await asyncio.sleep(0)
        for (model, version, shadow), buffer in list(self._buffers.items()):
            while buffer:
                batch = [buffer.popleft() for _ in range(min(self.batch_size, len(buffer)))]
                # One event, many causes: the publish links to every request it carries.
                key = (model, version, shadow)
                causes, self._causes[key] = self._causes[key][:128], []
                event = encode(model, version, batch, shadow=shadow)
                if not await self._publish(event, causes):  # broker down: kept, as this event, for the next flush
                    self._unsent.append((event, causes))
                    return
                self._pending -= len(batch)
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


def encode(model: str, version: int, records: list[dict[str, Any]], *, shadow: bool = False) -> EncodedEvent:
    """The event carrying ``records`` (:class:`Served.records`, built from validated columns), encoded with
    orjson in one call: building the pydantic event validates and dumps every record again, about seven
    times the cost at a thousand records. Consumers parse it as any :class:`PredictionsLogged`."""
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id, "event_type": _EVENT_TYPE, "schema_version": PredictionsLogged.current_version,
        "occurred_at": datetime.now(UTC), "producer": "serving", "correlation_id": None,
        "model": model, "version": version, "records": records, "shadow": shadow,
    }  # fmt: skip
    return EncodedEvent(event_id, model, version, len(records), orjson.dumps(envelope))
