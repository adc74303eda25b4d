"""Consuming a topic in micro-batches (ingest's records), with the same retry and DLQ policy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from opentelemetry import propagate, trace

from libs.common.errors import InvalidEvent
from libs.common.events import Event, parse_event
from libs.common.kafka.broker import METADATA_MAX_AGE_MS
from libs.common.kafka.deadletter import ConsumerMetrics, DeadLetterFailed, dead_letter
from libs.common.kafka.delivery import BatchHandler, Delivery
from libs.common.kafka_security import client_options
from libs.common.retry import GaveUp, permanent, retry
from libs.common.settings import KafkaSettings
from libs.common.tasks import cancel_and_wait, shielded
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class _Item(Generic[E]):
    event: E | None
    delivery: Delivery
    raw: bytes


def rewind_offsets(records: Iterable[Any]) -> dict[TopicPartition, int]:
    """Where to seek each partition so that every record of a batch is delivered again:
    its earliest offset (seeking once per record would leave each partition at its last)."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    return earliest


class MicroBatchConsumer(Generic[E]):
    """Consumes ``topic`` in micro-batches: up to ``max_records`` or ``max_wait_s``
    after the first record, whichever comes first, then one handler call.

    faststream's subscriber hands over one message at a time, which would turn
    every upstream message into its own dataset version; this loop gathers them
    first. Offsets are committed explicitly after the handler returns. A batch
    that fails is retried, then split: each message is tried alone, so one
    poison message goes to the DLQ and its neighbours are still stored. A batch
    has many causes, so its span links to every message's trace instead of
    choosing one parent.

    The handler receives only the event types in ``accepts`` (a message of another type is
    dead-lettered), so it is typed for them and needs no ``isinstance`` check.
    """

    def __init__(
        self,
        *,
        topic: str,
        group: str,
        handler: BatchHandler[E],
        accepts: tuple[type[E], ...],
        settings: KafkaSettings,
        telemetry: Telemetry,
        broker: KafkaBroker,
        max_records: int = 500,
        max_wait_s: float = 1.0,
    ) -> None:
        self.topic = settings.topic(topic)
        self.group = settings.group(group)
        self.handler = handler
        self.accepts = accepts
        self.settings = settings
        self.telemetry = telemetry
        self.broker = broker
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self.metrics = ConsumerMetrics.on(telemetry)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.bootstrap,
            group_id=self.group,
            client_id=f"{self.settings.client_id}-{self.telemetry.service}-batch",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=300_000,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            **client_options(self.settings),
        )
        await consumer.start()
        try:
            while not self._stopping.is_set():
                buffer: list[Any] = []
                deadline: float | None = None
                loop = asyncio.get_running_loop()
                while len(buffer) < self.max_records and not (self._stopping.is_set() and not buffer):
                    wait = 0.5 if deadline is None else max(0.0, deadline - loop.time())
                    if deadline is not None and wait == 0.0:
                        break
                    fetched = await consumer.getmany(
                        timeout_ms=int(wait * 1000), max_records=self.max_records - len(buffer)
                    )
                    for records in fetched.values():
                        buffer.extend(records)
                    if buffer and deadline is None:
                        deadline = loop.time() + self.max_wait_s
                if not buffer:
                    continue
                try:
                    await self._process(buffer)
                except DeadLetterFailed:
                    for tp, offset in rewind_offsets(buffer).items():  # nothing of this batch is lost
                        consumer.seek(tp, offset)
                    await asyncio.sleep(self.settings.retry_backoff_max_s)
                    continue
                offsets: dict[TopicPartition, int] = {}
                for record in buffer:
                    tp = TopicPartition(record.topic, record.partition)
                    offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:  # partitions moved; the new owner redelivers, consumers dedupe
                    log.warning("commit after batch failed", extra={"topic": self.topic, "error": repr(exc)})
        finally:
            await shielded(consumer.stop())  # aiokafka's close swallows a cancel: see libs.common.tasks

    async def _process(self, records: list[Any]) -> None:
        items: list[_Item[E]] = []
        links = []
        for record in records:
            delivery = Delivery.of(record)
            try:
                event = cast(E, parse_event(record.value, self.accepts))  # one of ``accepts``, or refused
                items.append(_Item(event, delivery, record.value))
            except InvalidEvent as exc:
                await self._dead_letter(_Item(None, delivery, record.value), exc, attempts=0)
                continue
            span_context = trace.get_current_span(propagate.extract(delivery.headers)).get_span_context()
            if span_context.is_valid:
                links.append(trace.Link(span_context))
        if not items:
            return
        with self.telemetry.tracer.start_as_current_span(
            f"{self.topic} process batch", kind=trace.SpanKind.CONSUMER, links=links,
            attributes={"messaging.batch.message_count": len(items), "messaging.destination.name": self.topic},
        ):  # fmt: skip
            if len(items) > 1 and await self._attempt(items, attempts=2) is None:
                return
            for item in items:  # one at a time: only the poison message(s) fail
                error = await self._attempt([item], attempts=self.settings.max_attempts)
                if error is not None:
                    await self._dead_letter(item, error, attempts=self.settings.max_attempts)

    async def _attempt(self, items: list[_Item[E]], *, attempts: int) -> Exception | None:
        """Run the handler on ``items`` with backoff; the last error, or None on success
        (items the handler refused are dead-lettered here, and count as handled)."""

        async def once(attempt: int) -> None:
            refused = await self.handler([(i.event, i.delivery) for i in items if i.event is not None])
            for position, error in (refused or {}).items():
                await self._dead_letter(items[position], error, attempts=attempt)

        def retrying(exc: Exception, attempt: int, delay: float) -> None:
            self.metrics.retried.labels(self.topic, self.group).inc()

        try:
            await retry(once, backoff=self.settings.backoff, attempts=attempts, give_up=permanent, on_retry=retrying)
        except GaveUp as gave_up:
            return gave_up.error
        return None

    async def _dead_letter(self, item: _Item[E], error: Exception, *, attempts: int) -> None:
        log.error("message dead-lettered", extra={"topic": self.topic, "error": repr(error)})
        await dead_letter(self.broker, item.raw, item.delivery, group=self.group, error=error, attempts=attempts,
                          metrics=self.metrics)  # fmt: skip

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"batch-consumer-{self.topic}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, leave the group cleanly; cancel only if that hangs."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see libs.common.tasks
                await asyncio.shield(self._task)
        except TimeoutError:
            await cancel_and_wait(self._task)
        self._task = None
