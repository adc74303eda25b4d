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
from typing import Any, Literal

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import LogicSubscriber

from libs.common.errors import DriftloopError, InvalidEvent
from libs.common.events import Event, parse_event
from libs.common.kafka.deadletter import ConsumerMetrics, DeadLetterFailed, dead_letter
from libs.common.kafka.delivery import Delivery, Handler, Route
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
    metrics = ConsumerMetrics.on(telemetry)
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

    async def on_message(msg: KafkaMessage) -> None:
        record = msg.raw_message
        assert not isinstance(record, tuple)  # not a batch subscriber
        delivery = Delivery.of(record)
        route = real[record.topic]
        try:
            await _handle(msg.body, delivery, route.handler, route.accepts, name, settings, broker, metrics)
        except DeadLetterFailed:
            await asyncio.sleep(settings.retry_backoff_max_s)
            await msg.nack()  # seek back: delivered again, never skipped
            return
        if group_id is not None:  # without a group there is no offset to commit
            await msg.ack()

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
