"""Kafka for every service, one concern a module:

- :mod:`.broker`: the faststream broker factory and its start against an unreachable cluster;
- :mod:`.admin`: explicit topic provisioning;
- :mod:`.delivery`: what a handler receives (the event and its :class:`Delivery`) and the route table;
- :mod:`.subscriber`: the one subscriber policy (parse, retry, dead-letter, then ack);
- :mod:`.deadletter`: publishing a failed message to ``<topic>.dlq`` with the reason;
- :mod:`.publisher`: publishing through a started broker (the outbox relay's sink);
- :mod:`.batch`: the micro-batch consumer and batch subscriber (same policy, a batch at a time);
- :mod:`.lag`: consumer lag and its Prometheus exporter.

Handlers must be idempotent: :func:`libs.common.outbox.once` applies an event's effects once.
"""

from libs.common.kafka.admin import ensure_topics
from libs.common.kafka.batch import BatchPolicy, MicroBatchConsumer, PipelinedConsumer, rewind_offsets
from libs.common.kafka.broker import METADATA_MAX_AGE_MS, connect_with_retry, create_broker, start_with_retry
from libs.common.kafka.deadletter import ConsumerMetrics, DeadLetterFailed, dead_letter
from libs.common.kafka.delivery import BatchHandler, Delivery, EventHandler, Handler, Route
from libs.common.kafka.lag import LagExporter, LagRow, consumer_lag
from libs.common.kafka.publisher import BrokerPublisher
from libs.common.kafka.subscriber import positioned, subscribe

__all__ = [
    "METADATA_MAX_AGE_MS",
    "BatchHandler",
    "BatchPolicy",
    "BrokerPublisher",
    "ConsumerMetrics",
    "DeadLetterFailed",
    "Delivery",
    "EventHandler",
    "Handler",
    "LagExporter",
    "LagRow",
    "MicroBatchConsumer",
    "PipelinedConsumer",
    "Route",
    "connect_with_retry",
    "consumer_lag",
    "create_broker",
    "dead_letter",
    "ensure_topics",
    "positioned",
    "rewind_offsets",
    "start_with_retry",
    "subscribe",
]
