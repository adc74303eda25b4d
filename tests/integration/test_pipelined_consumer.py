"""The pipelined batch consumer (the monitor's predictions.logged) against the real broker: the next batch
is fetched and decoded while this one is handled, yet a batch's offsets are committed only once its
handler has returned, and batches are handled in their order."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from libs.common.kafka import Delivery, PipelinedConsumer, create_broker
from libs.common.settings import KafkaSettings, TelemetrySettings
from libs.common.telemetry import setup_telemetry
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


async def _produce(settings: KafkaSettings, topic: str, count: int) -> None:
    """Messages m0, m1, ... to partition 0 of ``topic``."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"m{i}".encode(), partition=0)
    finally:
        await producer.stop()


async def test_the_next_batch_is_decoded_while_this_one_is_handled_and_offsets_wait_for_the_handler(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    telemetry = setup_telemetry("pipelined", TelemetrySettings())
    group = f"g-{uuid.uuid4().hex[:6]}"
    release = asyncio.Event()
    decoded: list[str] = []
    handled: list[list[str]] = []

    def decode(raw: bytes) -> str:
        decoded.append(raw.decode())
        return raw.decode()

    async def handler(batch: list[tuple[str, Delivery]]) -> None:
        handled.append([value for value, _ in batch])
        if len(handled) == 1:
            await release.wait()  # the first batch's store takes a while

    await _produce(kafka_settings, topic, 4)
    consumer = PipelinedConsumer(topic=topic, group=group, handler=handler, decode=decode, settings=kafka_settings,
                                 telemetry=telemetry, broker=create_broker(kafka_settings, telemetry), max_records=2,
                                 max_wait_s=0.05)  # fmt: skip
    offsets = AIOKafkaConsumer(bootstrap_servers=kafka_settings.bootstrap, group_id=kafka_settings.group(group),
                               enable_auto_commit=False)  # fmt: skip
    await offsets.start()
    partition = TopicPartition(topic, 0)
    consumer.start()
    try:
        await wait_until(lambda: len(decoded) == 4, message="the second batch decoded while the first is handled")
        await asyncio.sleep(0.5)  # a commit would have had time to land
        assert handled == [["m0", "m1"]]
        assert await offsets.committed(partition) is None  # nothing handled to the end yet: nothing committed

        release.set()

        async def committed() -> bool:
            return bool(await offsets.committed(partition) == 4)

        await wait_until(committed, message="both batches committed")
        assert handled == [["m0", "m1"], ["m2", "m3"]]
    finally:
        release.set()
        await consumer.stop()
        await offsets.stop()


async def test_a_consumer_that_fails_unexpectedly_starts_again_and_reads_what_it_had_not_committed(
    kafka_settings: KafkaSettings, topic: str
) -> None:
    telemetry = setup_telemetry("pipelined-restart", TelemetrySettings())
    failed: list[str] = []
    handled: list[str] = []

    def decode(raw: bytes) -> str:
        if not failed:  # not InvalidEvent: a fault of the consumer, not of the message
            failed.append(raw.decode())
            raise RuntimeError("decoder fault")
        return raw.decode()

    async def handler(batch: list[tuple[str, Delivery]]) -> None:
        handled.extend(value for value, _ in batch)

    await _produce(kafka_settings, topic, 3)
    consumer = PipelinedConsumer(topic=topic, group=f"g-{uuid.uuid4().hex[:6]}", handler=handler, decode=decode,
                                 settings=kafka_settings, telemetry=telemetry,
                                 broker=create_broker(kafka_settings, telemetry))  # fmt: skip
    consumer.start()
    try:
        await wait_until(lambda: len(handled) == 3, timeout=30, message="the three messages, after a restart")
    finally:
        await consumer.stop()
    assert failed == ["m0"]
    assert handled == ["m0", "m1", "m2"]
