"""Dead-lettering: a message that cannot be processed goes to ``<topic>.dlq`` with the reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from prometheus_client import Counter

from libs.common import topics
from libs.common.kafka.delivery import Delivery
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)


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
