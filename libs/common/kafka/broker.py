"""The faststream broker every service runs on, and starting it against an unreachable cluster."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaConnectionError
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware

from libs.common.kafka_security import broker_security
from libs.common.retry import retry_with_backoff
from libs.common.settings import KafkaSettings
from libs.common.telemetry import Telemetry

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
    await connect_with_retry(broker.start, broker.stop, settings)


async def connect_with_retry(
    start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[object]], settings: KafkaSettings
) -> None:
    """Start a Kafka client (``start``), retrying an unreachable cluster until ``settings.connect_timeout_s``;
    ``stop`` cleans up after a failed try."""
    await retry_with_backoff(
        start,
        name="Kafka",
        where=settings.bootstrap,
        timeout_s=settings.connect_timeout_s,
        errors=(KafkaConnectionError, OSError),
        cleanup=stop,
    )
