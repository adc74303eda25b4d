"""Consuming a topic in micro-batches, with the same retry and DLQ policy: ingest's records
(:class:`MicroBatchConsumer`, one batch at a time) and the monitor's logged predictions
(:class:`PipelinedConsumer`, the next batch fetched and decoded while this one is handled, commits behind)."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from opentelemetry import propagate, trace

from libs.common.errors import DriftloopError, InvalidEvent
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
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Item(Generic[T]):
    event: T | None
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


def next_offsets(records: Iterable[Any]) -> dict[TopicPartition, int]:
    """The offsets to commit once every record of a batch is handled: each partition's last, plus one."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


async def gather(
    consumer: AIOKafkaConsumer, max_records: int, max_wait_s: float, stopping: asyncio.Event,
    max_bytes: int | None = None,
) -> list[Any]:  # fmt: skip
    """Up to ``max_records`` records: whatever arrives within ``max_wait_s`` of the first one (none when
    ``stopping`` is set before the first), and no more once their values take ``max_bytes`` (the record
    that reaches it is the last: one larger than ``max_bytes`` still makes a batch). Records fetched past
    that are left to the next batch: their partitions are sought back to the first one left."""
    buffer: list[Any] = []
    size = 0
    full = max_bytes if max_bytes is not None else float("inf")
    deadline: float | None = None
    loop = asyncio.get_running_loop()
    while len(buffer) < max_records and size < full and not (stopping.is_set() and not buffer):
        wait = 0.5 if deadline is None else max(0.0, deadline - loop.time())
        if deadline is not None and wait == 0.0:
            break
        fetched = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=max_records - len(buffer))
        for tp, records in fetched.items():
            if max_bytes is None:  # the monitor's hot path: no size to count
                buffer.extend(records)
                continue
            for record in records:
                if size >= full:
                    consumer.seek(tp, record.offset)  # this partition's rest is fetched again, in order
                    break
                buffer.append(record)
                size += len(record.value or b"")
        if buffer and deadline is None:
            deadline = loop.time() + max_wait_s
    return buffer


class BatchPolicy(Generic[T]):
    """The subscriber policy (:mod:`.subscriber`) for a batch of records: decode each (a message that
    cannot be read is dead-lettered at once), run the handler on the batch with retries, and when
    the batch still fails, run it one message at a time, so one poison message goes to the DLQ and
    its neighbours are still handled. A batch has many causes, so its span links to every message's
    trace instead of choosing one parent. The caller commits the batch's offsets afterwards, or
    rewinds them on :class:`DeadLetterFailed`.

    ``decode`` reads a message into what the handler takes, raising :class:`InvalidEvent` for one
    it cannot read: :func:`parse_event` limited to the accepted event types (:class:`MicroBatchConsumer`),
    or a columnar reader (:func:`libs.common.logged.decode_logged`).
    """

    def __init__(
        self,
        *,
        topic: str,
        group: str,
        handler: Callable[[list[tuple[T, Delivery]]], Awaitable[dict[int, DriftloopError] | None]],
        decode: Callable[[bytes], T],
        settings: KafkaSettings,
        telemetry: Telemetry,
        broker: KafkaBroker,
    ) -> None:
        self.topic = topic
        self.group = group
        self.handler = handler
        self.decode = decode
        self.settings = settings
        self.telemetry = telemetry
        self.broker = broker
        self.metrics = ConsumerMetrics.on(telemetry)

    async def process(self, records: list[Any]) -> None:
        """Handle ``records`` under the policy above (raises :class:`DeadLetterFailed` if even the DLQ fails)."""
        await self.handle(await self.prepare(records))

    async def prepare(self, records: list[Any]) -> list[_Item[T]]:
        """Decode each record; one that cannot be read is dead-lettered now and left out."""
        items: list[_Item[T]] = []
        for record in records:
            delivery = Delivery.of(record)
            try:
                items.append(_Item(self.decode(record.value), delivery, record.value))
            except InvalidEvent as exc:
                await self._dead_letter(_Item(None, delivery, record.value), exc, attempts=0)
        return items

    async def handle(self, items: list[_Item[T]]) -> None:
        """Run the handler on the decoded ``items`` with retries, then one at a time if the batch still fails."""
        if not items:
            return
        links = []
        for item in items:
            span_context = trace.get_current_span(propagate.extract(item.delivery.headers)).get_span_context()
            if span_context.is_valid:
                links.append(trace.Link(span_context))
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

    async def _attempt(self, items: list[_Item[T]], *, attempts: int) -> Exception | None:
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

    async def _dead_letter(self, item: _Item[T], error: Exception, *, attempts: int) -> None:
        log.error("message dead-lettered", extra={"topic": self.topic, "error": repr(error)})
        await dead_letter(self.broker, item.raw, item.delivery, group=self.group, error=error, attempts=attempts,
                          metrics=self.metrics)  # fmt: skip


class _BatchConsumer(ABC, Generic[T]):
    """What both batch consumers share: the topic and group, :class:`BatchPolicy`, the client, and a stop
    that lets the batch in hand finish. Subclasses say how batches flow (:meth:`run`)."""

    task_name = "batch-consumer"

    def __init__(
        self,
        *,
        topic: str,
        group: str,
        handler: Callable[[list[tuple[T, Delivery]]], Awaitable[dict[int, DriftloopError] | None]],
        decode: Callable[[bytes], T],
        settings: KafkaSettings,
        telemetry: Telemetry,
        broker: KafkaBroker,
        max_records: int = 100,
        max_wait_s: float = 0.05,
        max_bytes: int | None = None,
    ) -> None:
        self.topic = settings.topic(topic)
        self.group = settings.group(group)
        self.settings = settings
        self.telemetry = telemetry
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self.max_bytes = max_bytes
        self.policy = BatchPolicy[T](topic=self.topic, group=self.group, handler=handler, decode=decode,
                                     settings=settings, telemetry=telemetry, broker=broker)  # fmt: skip
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _client(self, **options: Any) -> AIOKafkaConsumer:
        """A member of the service's consumer group on ``topic`` only, committing by hand."""
        return AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.settings.bootstrap, group_id=self.group,
            client_id=f"{self.settings.client_id}-{self.telemetry.service}-batch", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_interval_ms=300_000, metadata_max_age_ms=METADATA_MAX_AGE_MS,
            **options, **client_options(self.settings),
        )  # fmt: skip

    @abstractmethod
    async def run(self) -> None:
        """Consume until :meth:`stop`: fetch, handle and commit batches."""

    async def _main(self) -> None:
        await self.run()

    def start(self) -> None:
        self._task = asyncio.create_task(self._main(), name=f"{self.task_name}-{self.topic}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand (and commit it), leave the group cleanly; cancel only if that hangs."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see libs.common.tasks
                await asyncio.shield(self._task)
        except TimeoutError:
            await cancel_and_wait(self._task)
        self._task = None


class MicroBatchConsumer(_BatchConsumer[E]):
    """Consumes ``topic`` in micro-batches: up to ``max_records``, ``max_bytes`` of message values or
    ``max_wait_s`` after the first record, whichever comes first, then one handler call.

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
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(
            topic=topic, group=group, handler=handler, settings=settings, telemetry=telemetry, broker=broker,
            decode=lambda raw: cast(E, parse_event(raw, accepts)),  # one of ``accepts``, or refused
            max_records=max_records, max_wait_s=max_wait_s, max_bytes=max_bytes,
        )  # fmt: skip

    async def run(self) -> None:
        consumer = self._client()
        await consumer.start()
        try:
            while not self._stopping.is_set():
                buffer = await gather(consumer, self.max_records, self.max_wait_s, self._stopping, self.max_bytes)
                if not buffer:
                    continue
                try:
                    await self.policy.process(buffer)
                except DeadLetterFailed:
                    for tp, offset in rewind_offsets(buffer).items():  # nothing of this batch is lost
                        consumer.seek(tp, offset)
                    await asyncio.sleep(self.settings.retry_backoff_max_s)
                    continue
                try:
                    await consumer.commit(next_offsets(buffer))
                except KafkaError as exc:  # partitions moved; the new owner redelivers, consumers dedupe
                    log.warning("commit after batch failed", extra={"topic": self.topic, "error": repr(exc)})
        finally:
            await shielded(consumer.stop())  # aiokafka's close swallows a cancel: see libs.common.tasks


FETCH_BYTES = 16 * 1024 * 1024
"""Bytes fetched from a partition at once by :class:`PipelinedConsumer`: the client's default (1 MiB) holds
about 20 of serving's 200-prediction messages."""


class PipelinedConsumer(_BatchConsumer[T]):
    """Consumes ``topic`` in batches (up to ``max_records`` messages, or what arrived within ``max_wait_s``
    of the first), under :class:`BatchPolicy`, with three batches in flight: the next one fetched and
    decoded, this one handled, the last one's offsets committed.

    For a topic whose handler waits on another process for each batch (the monitor's
    ``predictions.logged``: a transaction with a COPY). One batch after the other, the consumer stood
    idle in turn on the broker's fetch, the database and the broker's commit, about 75, 130 and 90 ms
    for 16,000 predictions on the bench machine. Here the fetch and decoding of the next batch run
    while this one is handled, and commits run behind, in batch order, one in flight at a time (offsets
    that pile up meanwhile go in the next). A batch's offsets are committed only once its handler has
    returned, so a crash redelivers what was not handled (at least once, as :class:`MicroBatchConsumer`;
    the handler dedupes). If even the DLQ fails, the batch's partitions are rewound to its first record,
    the batch fetched ahead is dropped, and both are delivered again.

    A member of the service's own consumer group, subscribed to ``topic`` only (the service's
    faststream subscribers read its other topics); its AsyncAPI entry comes from ``ServiceSpec.receives``.
    """

    task_name = "pipelined-consumer"

    async def run(self) -> None:
        consumer = self._client(max_partition_fetch_bytes=FETCH_BYTES)
        await consumer.start()
        commits = _Commits(consumer, self.topic)
        ahead: asyncio.Task[tuple[list[Any], list[_Item[T]]]] | None = None
        try:
            ahead = asyncio.create_task(self._next(consumer))
            while not self._stopping.is_set():
                records, items = await ahead
                ahead = asyncio.create_task(self._next(consumer))  # fetched and decoded while this one is handled
                if not records:
                    continue
                try:
                    await self.policy.handle(items)
                except DeadLetterFailed:
                    await cancel_and_wait(ahead)
                    for tp, offset in rewind_offsets(records).items():  # nothing of this batch is lost
                        consumer.seek(tp, offset)
                    await asyncio.sleep(self.settings.retry_backoff_max_s)
                    ahead = asyncio.create_task(self._next(consumer))
                    continue
                commits.add(next_offsets(records))
        finally:
            try:
                if ahead is not None:
                    await cancel_and_wait(ahead)  # fetched, not handled: its offsets are not committed
                await shielded(commits.flush())
            finally:
                await shielded(consumer.stop())  # aiokafka's close swallows a cancel: see libs.common.tasks

    async def _next(self, consumer: AIOKafkaConsumer) -> tuple[list[Any], list[_Item[T]]]:
        """The next batch's records and what they decode to (an unreadable one dead-lettered). If even the
        DLQ fails, its partitions are rewound to its first record and it is fetched again after a pause."""
        while True:
            records = await gather(consumer, self.max_records, self.max_wait_s, self._stopping, self.max_bytes)
            try:
                return records, await self.policy.prepare(records)
            except DeadLetterFailed:
                for tp, offset in rewind_offsets(records).items():
                    consumer.seek(tp, offset)
                await asyncio.sleep(self.settings.retry_backoff_max_s)

    async def _main(self) -> None:
        """:meth:`run` until stopped, started again after a pause if it fails unexpectedly (what it had
        not committed is delivered again): a consumer that died would leave the topic unread while the
        service looks healthy."""
        while not self._stopping.is_set():
            try:
                await self.run()
            except Exception:
                log.exception("consumer of %s failed; starting it again", self.topic)
                await asyncio.sleep(self.settings.retry_backoff_max_s)


class _Commits:
    """Offsets committed in the background, in the order they were added, one commit in flight at a time
    (offsets added meanwhile are merged into the next)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._pending[tp] = max(self._pending.get(tp, 0), offset)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"commits-{self.topic}")

    async def _run(self) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # partitions moved; the new owner redelivers, consumers dedupe
                log.warning("commit after batch failed", extra={"topic": self.topic, "error": repr(exc)})

    async def flush(self) -> None:
        """Wait for every offset added so far to be committed (or its commit to have failed)."""
        if self._task is not None:
            await self._task
