"""Consumer lag and dead letters, read from the services' Prometheus metrics.

The monitor measures every consumer group's lag (``driftloop_consumer_lag``); every
service counts the messages it dead-lettered (``driftloop_dlq_messages_total`` by
topic, group and error type). Reading those keeps the console free of Kafka
credentials; the dead letters themselves, with their reasons, are listed and replayed
with ``driftloop dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    partition: str
    lag: int


@dataclass(frozen=True)
class DeadLettered:
    service: str
    topic: str
    group: str
    error_type: str
    count: int


@dataclass(frozen=True)
class TopicLag:
    """A group's lag on one topic, over its partitions."""

    group: str
    topic: str
    partitions: int
    lag: int
    """Summed over the partitions: the messages the group still has to process."""
    worst: int
    """The largest lag of one partition (one stuck partition shows here)."""


def consumer_lag(metrics_text: str) -> list[Lag]:
    """Each group × topic × partition with its lag, largest first."""
    rows = [
        Lag(s.labels["group"], s.labels["topic"], s.labels["partition"], int(s.value))
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "driftloop_consumer_lag"
        for s in family.samples
    ]
    return sorted(rows, key=lambda r: (-r.lag, r.group, r.topic, r.partition))


def lag_by_topic(rows: list[Lag]) -> list[TopicLag]:
    """Partitions folded into one row per group and topic, most behind first."""
    grouped: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        grouped.setdefault((r.group, r.topic), []).append(r.lag)
    folded = [TopicLag(g, t, len(lags), sum(lags), max(lags)) for (g, t), lags in grouped.items()]
    return sorted(folded, key=lambda r: (-r.lag, r.group, r.topic))


def dead_lettered(service: str, metrics_text: str) -> list[DeadLettered]:
    """The messages ``service`` sent to dead-letter topics since it started, per topic, group and error type."""
    return [
        DeadLettered(service, s.labels["topic"], s.labels["group"], s.labels["error_type"], int(s.value))
        for family in text_string_to_metric_families(metrics_text)
        if family.name == "driftloop_dlq_messages"  # the parser drops a counter's _total from the family name
        for s in family.samples
        if s.name == "driftloop_dlq_messages_total" and s.value > 0
    ]
