"""Kafka for every service: a broker factory, explicit topic provisioning, and
the one subscriber policy all consumers follow.

The policy, in order, for each message:

1. parse and upcast the event; a message that is not a valid event for the
   topic is dead-lettered at once (retrying cannot fix bad bytes);
2. run the handler; a retryable failure is retried in place with bounded
   exponential backoff, a permanent one (:class:`DriftloopError` with
   ``retryable = False``) is not;
3. a message that still fails goes to ``<topic>.dlq`` with the reason, the
   error type, the original topic/partition/offset, the consumer group and the
   original headers, and the consumer moves on;
4. only then is the offset committed (manual acks: faststream's default would
   commit before the handler ran). If even the dead-letter publish fails, the
   consumer seeks back and the message is delivered again.

Handlers must therefore be idempotent (see :func:`libs.common.outbox.first_delivery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from opentelemetry import propagate, trace
from prometheus_client import Counter

from libs.common import topics
from libs.common.errors import DriftloopError, InvalidEvent, TransientError
from libs.common.events import Event, parse_event
from libs.common.kafka_security import broker_security, client_options
from libs.common.retry import retry_with_backoff
from libs.common.settings import KafkaSettings
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)

METADATA_MAX_AGE_MS = 5_000
"""How often every driftloop Kafka client refreshes its metadata, so a topic that
was created again after a broker restart is seen within seconds (see
:mod:`libs.common.brokerwatch`); the client default, 5 minutes, stalled consumers."""


def create_broker(settings: KafkaSettings, telemetry: Telemetry, *, graceful_timeout: float = 10.0) -> KafkaBroker:
    """A faststream broker with tracing and Prometheus middlewares.

    Per-message INFO logging is turned down to DEBUG: it costs about 40% of
    consumer throughput and says nothing the metrics do not. The producer is
    not idempotent (``acks=all`` still): exactly-once effects come from the
    outbox and idempotent consumers, not from the broker, so driftloop runs on
    any Kafka-compatible broker. ``graceful_timeout`` is how long stopping
    waits for running handlers before cancelling them (their messages stay
    uncommitted and are delivered again).
    """
    return KafkaBroker(
        settings.bootstrap,
        client_id=f"{settings.client_id}-{telemetry.service}",
        security=broker_security(settings),
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,  # see libs.common.brokerwatch: how soon topics created again are seen
        middlewares=(
            KafkaTelemetryMiddleware(tracer_provider=telemetry.tracer_provider),
            KafkaPrometheusMiddleware(registry=telemetry.registry, app_name=f"driftloop-{telemetry.service}"),
        ),
        logger=logging.getLogger(f"driftloop.{telemetry.service}.broker"),
        log_level=logging.DEBUG,
        graceful_timeout=graceful_timeout,
    )


async def start_with_retry(broker: KafkaBroker, settings: KafkaSettings) -> None:
    """Start ``broker``, retrying an unreachable cluster with backoff and one log line a try."""
    await retry_with_backoff(
        broker.start,
        name="Kafka",
        where=settings.bootstrap,
        timeout_s=settings.connect_timeout_s,
        errors=(KafkaConnectionError, OSError),
        cleanup=broker.stop,
    )


async def ensure_topics(settings: KafkaSettings, specs: Iterable[topics.TopicSpec] = topics.all_topics()) -> list[str]:
    """Create the topics that do not exist yet, with ``settings.replication_factor``; return the names created.

    Idempotent: a topic that exists is left exactly as it is (partitions and
    configuration are never changed here). Retries an unreachable cluster like
    :func:`start_with_retry`.
    """
    specs = [topics.TopicSpec(settings.topic(s.name), s.partitions, s.retention_ms) for s in specs]
    deadline = time.monotonic() + settings.connect_timeout_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, client_id=f"{settings.client_id}-admin", **client_options(settings)
    )
    await retry_with_backoff(
        admin.start,
        name="Kafka",
        where=settings.bootstrap,
        timeout_s=settings.connect_timeout_s,
        errors=(KafkaConnectionError, OSError),
        cleanup=admin.close,
    )
    try:
        existing = set(await admin.list_topics())
        created: list[str] = []
        for spec in (s for s in specs if s.name not in existing):
            new = NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"retention.ms": str(spec.retention_ms)},
            )
            try:
                await admin.create_topics([new])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another replica won the race
        await _wait_for_metadata(admin, [s.name for s in specs], deadline)
        if created:
            log.info("topics created", extra={"topics": created})
        return created
    finally:
        await admin.close()


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> None:
    while True:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TransientError(f"topics did not appear in metadata: {missing}")
        await asyncio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a message came from, for handlers that need it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Any) -> Delivery:
        """The delivery of an aiokafka ``ConsumerRecord`` (header values decoded as UTF-8)."""
        headers = {k: bytes(v).decode(errors="replace") for k, v in (record.headers or ())}
        return cls(record.topic, record.partition, record.offset, record.key, headers)


Handler = Callable[[Event, Delivery], Awaitable[None]]


@dataclass
class ConsumerMetrics:
    """Counters every subscriber shares, registered once per registry."""

    dead_lettered: Counter
    retried: Counter

    @classmethod
    def on(cls, telemetry: Telemetry) -> ConsumerMetrics:
        existing = telemetry.shared.get("consumer_metrics")
        if isinstance(existing, ConsumerMetrics):
            return existing
        metrics = cls(
            dead_lettered=Counter(
                "driftloop_dlq_messages_total",
                "Messages sent to a dead-letter topic.",
                ["topic", "group", "error_type"],
                registry=telemetry.registry,
            ),
            retried=Counter(
                "driftloop_consumer_retries_total",
                "Handler attempts that failed and were retried.",
                ["topic", "group"],
                registry=telemetry.registry,
            ),
        )
        telemetry.shared["consumer_metrics"] = metrics
        return metrics


class DeadLetterFailed(Exception):
    """The dead-letter topic could not be written; the message must not be committed."""


@dataclass(frozen=True, slots=True)
class Route:
    """What a consumer does with one topic: the handler and the events it accepts there."""

    handler: Handler
    accepts: tuple[type[Event], ...]


def subscribe(
    broker: KafkaBroker,
    routes: dict[str, Route],
    *,
    group: str,
    settings: KafkaSettings,
    telemetry: Telemetry,
    description: str | None = None,
    auto_offset_reset: Literal["earliest", "latest"] = "earliest",
) -> None:
    """Consume every topic of ``routes`` in consumer group ``group`` under the policy above.

    One consumer (one group member) reads all of a service's topics: a group
    join costs a rebalance delay (seconds), and one member per topic would pay
    it once per topic and make every join rebalance the others. Topic and group
    names are given without the installation's prefix (``settings.topic_prefix``).
    ``auto_offset_reset`` decides where a new group starts: ``earliest`` for
    work queues, ``latest`` for per-replica groups that only want news.
    """
    metrics = ConsumerMetrics.on(telemetry)
    real = {settings.topic(topic): route for topic, route in routes.items()}
    group_id = settings.group(group)
    subscriber = broker.subscriber(
        *real,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset=auto_offset_reset,
        max_poll_interval_ms=300_000,
        title=group_id,
        description=description or ", ".join(sorted(routes)),
    )

    async def on_message(msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple)  # not a batch subscriber
        delivery = Delivery.of(record)
        route = real[record.topic]
        try:
            await _handle(msg.body, delivery, route.handler, route.accepts, group_id, settings, broker, metrics)
        except DeadLetterFailed:
            await asyncio.sleep(settings.retry_backoff_max_s)
            await msg.nack()  # seek back: delivered again, never skipped
            return
        await msg.ack()

    on_message.__name__ = group_id.replace(".", "_").replace("-", "_")
    subscriber(on_message)


async def _handle(
    body: bytes,
    delivery: Delivery,
    handler: Handler,
    accepts: tuple[type[Event], ...],
    group: str,
    settings: KafkaSettings,
    broker: KafkaBroker,
    metrics: ConsumerMetrics,
) -> None:
    try:
        event = parse_event(body, accepts)
    except InvalidEvent as exc:
        await dead_letter(broker, body, delivery, group=group, error=exc, attempts=0, metrics=metrics)
        return
    delay = settings.retry_backoff_s
    for attempt in range(1, settings.max_attempts + 1):
        try:
            await handler(event, delivery)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            permanent = isinstance(exc, DriftloopError) and not exc.retryable
            if permanent or attempt == settings.max_attempts:
                log.error(
                    "message dead-lettered",
                    extra={"topic": delivery.topic, "offset": delivery.offset, "error": repr(exc)},
                    exc_info=not permanent,
                )
                await dead_letter(broker, body, delivery, group=group, error=exc, attempts=attempt, metrics=metrics)
                return
            metrics.retried.labels(delivery.topic, group).inc()
            log.warning(
                "handler failed, retrying in %.2fs (attempt %d/%d)",
                delay,
                attempt,
                settings.max_attempts,
                extra={"topic": delivery.topic, "offset": delivery.offset, "error": repr(exc)},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.retry_backoff_max_s)


async def dead_letter(
    broker: KafkaBroker,
    body: bytes,
    delivery: Delivery,
    *,
    group: str,
    error: BaseException,
    attempts: int,
    metrics: ConsumerMetrics | None = None,
) -> None:
    """Publish the original bytes to ``<topic>.dlq`` with why and where they failed.

    The body is kept byte for byte so the message can be replayed once the
    cause is fixed; the original headers travel along, prefixed diagnostics
    are added.
    """
    headers: dict[str, Any] = {
        **{k: v for k, v in delivery.headers.items() if not k.startswith("x-dlq-")},
        topics.HEADER_DLQ_REASON: str(error)[:2000] or type(error).__name__,
        topics.HEADER_DLQ_ERROR_TYPE: type(error).__name__,
        topics.HEADER_DLQ_ORIGINAL_TOPIC: delivery.topic,
        topics.HEADER_DLQ_ORIGINAL_PARTITION: str(delivery.partition),
        topics.HEADER_DLQ_ORIGINAL_OFFSET: str(delivery.offset),
        topics.HEADER_DLQ_CONSUMER_GROUP: group,
        topics.HEADER_DLQ_ATTEMPTS: str(attempts),
        topics.HEADER_DLQ_FAILED_AT: datetime.now(UTC).isoformat(),
    }
    try:
        await broker.publish(body, topics.dlq(delivery.topic), key=delivery.key, headers=headers)
    except (KafkaError, OSError) as exc:
        log.error("dead-letter publish failed", extra={"topic": delivery.topic, "error": repr(exc)})
        raise DeadLetterFailed(str(exc)) from exc
    if metrics is not None:
        metrics.dead_lettered.labels(delivery.topic, group, type(error).__name__).inc()


class BrokerPublisher:
    """Publishes through a started faststream broker (the outbox relay's sink).

    Topic names are given without the installation's prefix; it is added here.
    """

    def __init__(self, broker: KafkaBroker, topic_prefix: str = "") -> None:
        self.broker = broker
        self.topic_prefix = topic_prefix

    async def send(
        self, topic: str, payload: bytes, *, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        return await self.broker.publish(payload, self.topic_prefix + topic, key=key, headers=headers, no_confirm=True)

    async def publish_event(self, event: Event, *, topic: str | None = None) -> None:
        """Publish one event and wait for the broker (for producers without a database)."""
        headers = {topics.HEADER_EVENT_TYPE: event.event_type, topics.HEADER_EVENT_ID: str(event.event_id)}
        target = self.topic_prefix + (topic or event.topic)
        await self.broker.publish(event.to_bytes(), target, key=event.key(), headers=headers)


BatchHandler = Callable[[list[tuple[Event, Delivery]]], Awaitable[dict[int, DriftloopError] | None]]
"""Handles a batch; returns the positions of items it refuses for good (they are
dead-lettered with the error) while the rest of the batch stands."""


@dataclass(frozen=True, slots=True)
class _Item:
    event: Event | None
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


class MicroBatchConsumer:
    """Consumes ``topic`` in micro-batches: up to ``max_records`` or ``max_wait_s``
    after the first record, whichever comes first, then one handler call.

    faststream's subscriber hands over one message at a time, which would turn
    every upstream message into its own dataset version; this loop gathers them
    first. Offsets are committed explicitly after the handler returns. A batch
    that fails is retried, then split: each message is tried alone, so one
    poison message goes to the DLQ and its neighbours are still stored. A batch
    has many causes, so its span links to every message's trace instead of
    choosing one parent.
    """

    def __init__(
        self,
        *,
        topic: str,
        group: str,
        handler: BatchHandler,
        accepts: tuple[type[Event], ...],
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
            await consumer.stop()

    async def _process(self, records: list[Any]) -> None:
        items: list[_Item] = []
        links = []
        for record in records:
            delivery = Delivery.of(record)
            try:
                items.append(_Item(parse_event(record.value, self.accepts), delivery, record.value))
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

    async def _attempt(self, items: list[_Item], *, attempts: int) -> Exception | None:
        """Run the handler on ``items`` with backoff; the last error, or None on success
        (items the handler refused are dead-lettered here, and count as handled)."""
        delay = self.settings.retry_backoff_s
        for attempt in range(1, attempts + 1):
            try:
                refused = await self.handler([(i.event, i.delivery) for i in items if i.event is not None])
                for position, error in (refused or {}).items():
                    await self._dead_letter(items[position], error, attempts=attempt)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if (isinstance(exc, DriftloopError) and not exc.retryable) or attempt == attempts:
                    return exc
                self.metrics.retried.labels(self.topic, self.group).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_s)
        return None  # pragma: no cover - the loop always returns

    async def _dead_letter(self, item: _Item, error: Exception, *, attempts: int) -> None:
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
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


async def consumer_lag(bootstrap: str, prefix: str = "", options: dict[str, Any] | None = None) -> list[LagRow]:
    """Committed offset, end offset and lag of every group × topic × partition under ``prefix``.

    Committed offsets are read through a consumer of each group that never
    joins it (OffsetFetch per partition): the admin client's list-offsets call
    is not answered by every Kafka-compatible broker, this is. ``options``: TLS/SASL
    (:func:`libs.common.kafka_security.client_options`).
    """
    options = options or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="driftloop-lag", **options)
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix))
    finally:
        await admin.close()
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    await probe.start()
    try:
        names = [t for t in await probe.topics() if t.startswith(prefix) and not t.startswith("__")]
        partitions = [TopicPartition(t, p) for t in sorted(names) for p in sorted(probe.partitions_for_topic(t) or ())]
        ends = await probe.end_offsets(partitions) if partitions else {}
    finally:
        await probe.stop()
    rows: list[LagRow] = []
    for group in groups:
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **options)
        await reader.start()
        try:
            for tp in partitions:
                committed = await reader.committed(tp)
                if committed is not None:
                    rows.append(LagRow(group, tp.topic, tp.partition, committed, ends.get(tp, committed)))
        finally:
            await reader.stop()
    return rows


class LagExporter:
    """Publishes ``driftloop_consumer_lag{group, topic, partition}`` for every group of the installation."""

    def __init__(self, settings: KafkaSettings, telemetry: Telemetry, interval_s: float = 15.0) -> None:
        from prometheus_client import Gauge

        self.settings = settings
        self.interval_s = interval_s
        self.gauge = Gauge(
            "driftloop_consumer_lag", "Messages behind the end of the partition, per consumer group.",
            ["group", "topic", "partition"], registry=telemetry.registry,
        )  # fmt: skip

    async def run(self) -> None:
        while True:
            try:
                rows = await consumer_lag(
                    self.settings.bootstrap, self.settings.topic_prefix, client_options(self.settings)
                )
                self.gauge.clear()
                for row in rows:
                    self.gauge.labels(row.group, row.topic, str(row.partition)).set(row.lag)
            except (KafkaError, OSError) as exc:
                log.warning("consumer lag not measured: %r", exc)
            await asyncio.sleep(self.interval_s)
