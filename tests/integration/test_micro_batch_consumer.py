"""Ingest's micro-batch consumer against the real broker: a micro-batch ends at ``max_bytes`` of messages,
and what was fetched past it comes in the next one, in order, each message once."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from libs.common.events import RecordsSubmitted
from libs.common.kafka import Delivery, MicroBatchConsumer, create_broker
from libs.common.settings import KafkaSettings, TelemetrySettings
from libs.common.telemetry import setup_telemetry
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


async def test_a_micro_batch_ends_at_max_bytes_and_the_rest_comes_next_in_order(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    events = [RecordsSubmitted(producer="p", dataset="d", records=[{"n": i, "pad": "x" * 1000}]) for i in range(7)]
    size = max(len(e.to_bytes()) for e in events)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap)
    await producer.start()
    try:  # all on the broker before the consumer starts: its first fetch brings more than one batch may hold
        for event in events:
            await producer.send_and_wait(topic, event.to_bytes(), partition=0)
    finally:
        await producer.stop()
    telemetry = setup_telemetry("micro-batch", TelemetrySettings())
    batches: list[list[int]] = []

    async def handler(batch: list[tuple[RecordsSubmitted, Delivery]]) -> None:
        batches.append([(e.records or [])[0]["n"] for e, _ in batch])

    consumer = MicroBatchConsumer(topic=topic, group=f"g-{uuid.uuid4().hex[:6]}", handler=handler,
                                  accepts=(RecordsSubmitted,), settings=kafka_settings, telemetry=telemetry,
                                  broker=create_broker(kafka_settings, telemetry), max_records=100,
                                  max_wait_s=2.0, max_bytes=int(2.5 * size))  # fmt: skip
    consumer.start()
    try:
        await wait_until(lambda: sum(map(len, batches)) >= 7, timeout=30, message="the seven messages")
    finally:
        await consumer.stop()
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]  # the third message reaches 2.5 messages' bytes
