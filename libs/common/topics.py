"""Every Kafka topic and header name driftloop uses, in one place.

Topics are created explicitly at start-up with these partition counts
(:func:`libs.common.kafka.ensure_topics`); nothing relies on auto-creation.
Each consumed topic has a dead-letter twin, ``<topic>.dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORDS_SUBMITTED = "records.submitted"
DATA_ARRIVED = "data.arrived"
TRAINING_REQUESTED = "training.requested"
MODEL_TRAINED = "model.trained"
MODEL_PROMOTED = "model.promoted"
PREDICTIONS_LOGGED = "predictions.logged"
LABELS_ARRIVED = "labels.arrived"
DRIFT_DETECTED = "drift.detected"
REJUDGEMENT_REQUESTED = "rejudgement.requested"
MODEL_REJUDGED = "model.rejudged"
MODEL_EXPORTED = "model.exported"
MODEL_COMPARED = "model.compared"
BATCH_COMPLETED = "batch.completed"

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic and how it is created."""

    name: str
    partitions: int
    #: Retention in milliseconds; -1 keeps messages forever.
    retention_ms: int = 7 * 24 * 3600 * 1000


#: Partition counts follow the keys: per-model topics need few partitions
#: (there are few models), per-entity intake needs more for parallel ingest.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(RECORDS_SUBMITTED, partitions=6),
    TopicSpec(DATA_ARRIVED, partitions=3),
    TopicSpec(TRAINING_REQUESTED, partitions=3),
    TopicSpec(MODEL_TRAINED, partitions=3),
    TopicSpec(MODEL_PROMOTED, partitions=3),
    TopicSpec(PREDICTIONS_LOGGED, partitions=6),
    TopicSpec(LABELS_ARRIVED, partitions=3),
    TopicSpec(DRIFT_DETECTED, partitions=3),
    TopicSpec(REJUDGEMENT_REQUESTED, partitions=3),
    TopicSpec(MODEL_REJUDGED, partitions=3),
    TopicSpec(MODEL_EXPORTED, partitions=3),
    TopicSpec(MODEL_COMPARED, partitions=3),
    TopicSpec(BATCH_COMPLETED, partitions=3),
)


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


def all_topics() -> tuple[TopicSpec, ...]:
    """Every topic with its dead-letter twin (one partition: DLQs are low volume)."""
    dead = tuple(TopicSpec(dlq(t.name), partitions=1, retention_ms=-1) for t in TOPICS)
    return TOPICS + dead


# Header names. Trace context travels in the W3C ``traceparent``/``tracestate``
# headers, written by OpenTelemetry's propagator; the rest are driftloop's own.
HEADER_EVENT_TYPE = "x-event-type"
HEADER_EVENT_ID = "x-event-id"
HEADER_DLQ_REASON = "x-dlq-reason"
HEADER_DLQ_ERROR_TYPE = "x-dlq-error-type"
HEADER_DLQ_ORIGINAL_TOPIC = "x-dlq-original-topic"
HEADER_DLQ_ORIGINAL_PARTITION = "x-dlq-original-partition"
HEADER_DLQ_ORIGINAL_OFFSET = "x-dlq-original-offset"
HEADER_DLQ_CONSUMER_GROUP = "x-dlq-consumer-group"
HEADER_DLQ_ATTEMPTS = "x-dlq-attempts"
HEADER_DLQ_FAILED_AT = "x-dlq-failed-at"
