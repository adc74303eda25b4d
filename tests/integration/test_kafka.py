"""The subscriber policy against the real broker: envelope and trace context
round-trip, dead-lettering, retries, and commits only after the effect."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from libs.common import topics
from libs.common.errors import TransientError
from libs.common.events import Event, TrainingRequested
from libs.common.kafka import BrokerPublisher, Delivery, Route, consumer_lag, create_broker, positioned, subscribe
from libs.common.settings import KafkaSettings, TelemetrySettings
from libs.common.telemetry import setup_telemetry
from tests.helpers import read_topic, wait_until

pytestmark = pytest.mark.integration


def _request(model: str = "churn", reason: str = "test") -> TrainingRequested:
    return TrainingRequested(producer="test", model=model, dataset="customers", reason=reason)


async def test_event_round_trips_with_envelope_and_child_consumer_span(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry("roundtrip", TelemetrySettings(), extra_processors=(SimpleSpanProcessor(exporter),))
    broker = create_broker(kafka_settings, telemetry)
    received: list[Event] = []

    async def handler(event: Event, delivery: Delivery) -> None:
        received.append(event)

    routes = {topic: Route(handler, (TrainingRequested,))}
    subscribe(broker, routes, group=f"g-{uuid.uuid4().hex[:6]}", settings=kafka_settings, telemetry=telemetry)
    sent = _request()
    async with broker:
        await broker.start()
        with telemetry.tracer.start_as_current_span("request"):
            await BrokerPublisher(broker).publish_event(sent, topic=topic)
        await wait_until(lambda: received, message="the event to be consumed")

    assert received == [sent]  # every envelope field survives: id, type, version, time, producer
    spans = exporter.get_finished_spans()
    producer = next(s for s in spans if s.kind is SpanKind.PRODUCER)
    consumer = next(s for s in spans if s.kind is SpanKind.CONSUMER)
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id


async def test_poison_messages_go_to_the_dlq_and_the_consumer_moves_on(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    telemetry = setup_telemetry("dlq", TelemetrySettings())
    broker = create_broker(kafka_settings, telemetry)
    processed: list[str] = []
    attempts: dict[str, int] = {}

    async def handler(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, TrainingRequested)
        attempts[event.reason] = attempts.get(event.reason, 0) + 1
        if event.reason == "always-fails":
            raise RuntimeError("model store exploded")
        if event.reason == "flaky" and attempts["flaky"] == 1:
            raise TransientError("database blinked")
        processed.append(event.reason)

    group = f"g-{uuid.uuid4().hex[:6]}"
    subscribe(broker, {topic: Route(handler, (TrainingRequested,))}, group=group,
              settings=kafka_settings, telemetry=telemetry)  # fmt: skip
    wrong_schema = json.dumps({"event_type": "training.requested", "producer": "x"}).encode()
    wrong_topic = json.dumps({"event_type": "labels.arrived", "producer": "x"}).encode()
    async with broker:
        await broker.start()
        # One key, one partition: the order below is the order consumed.
        for body in (b"{not json", wrong_schema, wrong_topic, _request(reason="always-fails").to_bytes(),
                     _request(reason="flaky").to_bytes(), _request(reason="fine").to_bytes()):  # fmt: skip
            await broker.publish(body, topic, key=b"k")
        await wait_until(lambda: "fine" in processed, message="the good message after the poison ones")

    assert processed == ["flaky", "fine"]
    assert attempts["always-fails"] == kafka_settings.max_attempts  # bounded, then dead-lettered
    dead = await read_topic(kafka_settings.bootstrap, topics.dlq(topic), expect=4)
    by_offset = {int(_header(r, topics.HEADER_DLQ_ORIGINAL_OFFSET)): r for r in dead}
    assert sorted(by_offset) == [0, 1, 2, 3]
    assert "not JSON" in _header(by_offset[0], topics.HEADER_DLQ_REASON)
    assert "model: Field required" in _header(by_offset[1], topics.HEADER_DLQ_REASON)
    assert "does not belong here" in _header(by_offset[2], topics.HEADER_DLQ_REASON)
    assert "model store exploded" in _header(by_offset[3], topics.HEADER_DLQ_REASON)
    assert _header(by_offset[3], topics.HEADER_DLQ_ATTEMPTS) == str(kafka_settings.max_attempts)
    assert _header(by_offset[3], topics.HEADER_DLQ_CONSUMER_GROUP) == group
    assert by_offset[0].value == b"{not json"  # the original bytes, for replay
    assert all(_header(r, topics.HEADER_DLQ_ORIGINAL_TOPIC) == topic for r in dead)
    # Everything, poison included, is committed: a restart would not see them again.
    assert await _committed(kafka_settings.bootstrap, group, topic) == 6


async def test_offset_is_not_committed_when_the_consumer_dies_mid_handler(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    """A consumer stopped while its handler runs leaves the message uncommitted:
    the next member of the group gets it again (at-least-once)."""
    group = f"g-{uuid.uuid4().hex[:6]}"
    started = asyncio.Event()
    seen_by_second: list[str] = []

    async def hangs(event: Event, delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(3600)

    async def records(event: Event, delivery: Delivery) -> None:
        assert isinstance(event, TrainingRequested)
        seen_by_second.append(event.reason)

    first_telemetry = setup_telemetry("first", TelemetrySettings())
    first = create_broker(kafka_settings, first_telemetry, graceful_timeout=0.5)
    subscribe(first, {topic: Route(hangs, (TrainingRequested,))}, group=group,
              settings=kafka_settings, telemetry=first_telemetry)  # fmt: skip
    await first.start()
    await first.publish(_request(reason="important").to_bytes(), topic, key=b"k")
    await asyncio.wait_for(started.wait(), 30)
    await first.stop()  # "crash" while the effect is not done
    assert await _committed(kafka_settings.bootstrap, group, topic) == 0

    second_telemetry = setup_telemetry("second", TelemetrySettings())
    second = create_broker(kafka_settings, second_telemetry)
    subscribe(second, {topic: Route(records, (TrainingRequested,))}, group=group,
              settings=kafka_settings, telemetry=second_telemetry)  # fmt: skip
    async with second:
        await second.start()
        await wait_until(lambda: seen_by_second, timeout=60, message="redelivery to the next member")
    assert seen_by_second == ["important"]
    assert await _committed(kafka_settings.bootstrap, group, topic) == 1


def _header(record: object, name: str) -> str:
    headers = dict(getattr(record, "headers", ()))
    return bytes(headers[name]).decode()


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    """Sum of committed offsets of ``group`` over the partitions of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        total = 0
        for p in partitions:
            committed = await consumer.committed(TopicPartition(topic, p))
            total += committed or 0
        return total
    finally:
        await consumer.stop()


async def test_a_groupless_subscriber_sees_every_message_from_its_start_and_commits_nothing(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    """``group=None`` (serving's model.promoted): every replica reads every partition from where it
    started, with no group to join; what was published before the start is not delivered."""
    telemetry = setup_telemetry("replica", TelemetrySettings())
    before = create_broker(kafka_settings, setup_telemetry("before", TelemetrySettings()))
    async with before:
        await before.start()
        await before.publish(_request(reason="before the start").to_bytes(), topic, key=b"a")

    replicas = [create_broker(kafka_settings, telemetry), create_broker(kafka_settings, telemetry)]
    seen: list[list[str]] = [[], []]
    subscribers = []
    for broker, into in zip(replicas, seen, strict=True):

        async def records(event: Event, delivery: Delivery, into: list[str] = into) -> None:
            assert isinstance(event, TrainingRequested)
            into.append(event.reason)

        subscribers.append(subscribe(broker, {topic: Route(records, (TrainingRequested,))}, group=None,
                                     settings=kafka_settings, telemetry=telemetry))  # fmt: skip
    async with replicas[0], replicas[1]:
        for broker, subscriber in zip(replicas, subscribers, strict=True):
            await broker.start()
            await positioned(subscriber)
        for n, key in enumerate((b"a", b"b", b"c", b"d")):  # keys spread over the partitions
            await replicas[0].publish(_request(reason=f"after {n}").to_bytes(), topic, key=key)
        await wait_until(lambda: all(len(s) == 4 for s in seen), message="every message at both replicas")
    assert [sorted(s) for s in seen] == [[f"after {n}" for n in range(4)]] * 2
    lag = await consumer_lag(kafka_settings.bootstrap)
    assert not [row for row in lag if row.topic == topic]  # no group, no committed offset
