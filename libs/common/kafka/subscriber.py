"""The one subscriber policy all consumers follow.

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

Handlers must therefore be idempotent (:func:`libs.common.outbox.once`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import LogicSubscriber

from libs.common.errors import InvalidEvent
from libs.common.events import parse_event
from libs.common.kafka.deadletter import ConsumerMetrics, DeadLetterFailed, dead_letter
from libs.common.kafka.delivery import Delivery, Route
from libs.common.retry import GaveUp, permanent, retry
from libs.common.settings import KafkaSettings
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)


def subscribe(
    broker: KafkaBroker,
    routes: Mapping[str, Route],
    *,
    group: str | None,
    settings: KafkaSettings,
    telemetry: Telemetry,
    description: str | None = None,
    auto_offset_reset: Literal["earliest", "latest"] = "earliest",
) -> LogicSubscriber[Any]:
    """Consume every topic of ``routes`` in consumer group ``group`` under the policy above.

    One consumer (one group member) reads all of a service's topics: a group
    join costs a rebalance delay (seconds), and one member per topic would pay
    it once per topic and make every join rebalance the others. Topic and group
    names are given without the installation's prefix (``settings.topic_prefix``).
    ``auto_offset_reset`` decides where a new group starts: ``earliest`` for
    work queues, ``latest`` for per-replica groups that only want news.

    ``group=None``: no group at all, for a replica that must see every message
    from the moment it starts (serving's ``model.promoted``). Every partition
    is assigned at once, from the latest offset, and nothing is committed.
    Starting then costs no group join: a join takes seconds, and after a
    kill -9 it waits for the dead member's session to time out first (the
    restart that took serving 66 s in the chaos suite). What came before the
    start must come from elsewhere (serving asks the registry), after
    :func:`positioned`.
    """
    real = {settings.topic(topic): route for topic, route in routes.items()}
    group_id = settings.group(group) if group is not None else None
    name = group_id or f"{settings.client_id}-{telemetry.service}-every-replica"
    subscriber = broker.subscriber(
        *real,
        group_id=group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset=auto_offset_reset if group_id is not None else "latest",
        max_poll_interval_ms=300_000,
        title=name,
        description=description or ", ".join(sorted(routes)),
    )
    policy = _Policy(real, name, group_id is not None, settings, broker, ConsumerMetrics.on(telemetry))

    async def on_message(msg: KafkaMessage) -> None:
        await policy.consume(msg)

    on_message.__name__ = name.replace(".", "_").replace("-", "_")
    subscriber(on_message)
    return subscriber


async def positioned(subscriber: LogicSubscriber[Any]) -> None:
    """Wait until ``subscriber``'s consumer knows where it reads each of its partitions from.

    A group-less consumer resolves "latest" lazily; whatever is published after this
    returns is delivered, so state read from elsewhere afterwards leaves no gap.
    """
    consumer = subscriber.consumer
    if consumer is None:
        raise RuntimeError("the subscriber is not started")
    for partition in consumer.assignment():
        await consumer.position(partition)


@dataclass(frozen=True, slots=True)
class _Policy:
    """The policy above, applied to the messages of one subscriber."""

    routes: dict[str, Route]
    """By topic name as the broker knows it (prefixed)."""
    group: str
    """The consumer group, or the replica's name when there is none (the DLQ records it)."""
    commits: bool
    """Whether offsets are committed: only in a group."""
    settings: KafkaSettings
    broker: KafkaBroker
    metrics: ConsumerMetrics

    async def consume(self, msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple)  # not a batch subscriber
        delivery = Delivery.of(record)
        try:
            await self.handle(msg.body, delivery, self.routes[record.topic])
        except DeadLetterFailed:
            await asyncio.sleep(self.settings.retry_backoff_max_s)
            await msg.nack()  # seek back: delivered again, never skipped
            return
        if self.commits:  # without a group there is no offset to commit
            await msg.ack()

    async def handle(self, body: bytes, delivery: Delivery, route: Route) -> None:
        try:
            event = parse_event(body, route.accepts)
        except InvalidEvent as exc:
            await self.dead_letter(body, delivery, exc, attempts=0)
            return
        try:
            await retry(lambda _: route.handler(event, delivery), backoff=self.settings.backoff,
                        attempts=self.settings.max_attempts, give_up=permanent,
                        on_retry=lambda exc, attempt, delay: self.retrying(delivery, exc, attempt, delay))  # fmt: skip
        except GaveUp as gave_up:
            error = gave_up.error
            log.error("message dead-lettered", extra={**_where(delivery), "error": repr(error)},
                      exc_info=None if permanent(error) else error)  # fmt: skip
            await self.dead_letter(body, delivery, error, attempts=gave_up.attempts)

    def retrying(self, delivery: Delivery, error: Exception, attempt: int, delay: float) -> None:
        self.metrics.retried.labels(delivery.topic, self.group).inc()
        log.warning("handler failed, retrying in %.2fs (attempt %d/%d)", delay, attempt, self.settings.max_attempts,
                    extra={**_where(delivery), "error": repr(error)})  # fmt: skip

    async def dead_letter(self, body: bytes, delivery: Delivery, error: Exception, *, attempts: int) -> None:
        await dead_letter(self.broker, body, delivery, group=self.group, error=error, attempts=attempts,
                          metrics=self.metrics)  # fmt: skip


def _where(delivery: Delivery) -> dict[str, object]:
    return {"topic": delivery.topic, "offset": delivery.offset}
