"""Small helpers shared by the tests: bounded polling and topic reading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition


async def wait_until(
    probe: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        result = probe()
        last = await result if isinstance(result, Awaitable) else result
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning until ``expect`` records arrived (or fail).

    Partitions are assigned directly: no consumer group, so no join delay.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        partitions: set[int] = set()
        while not partitions and time.monotonic() < deadline:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        while len(records) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
    assert len(records) >= expect, f"{topic}: expected {expect} records, got {len(records)}"
    return records


async def outbox_drained(pool: object) -> None:
    """Wait until every outbox row of ``pool``'s schema is published."""
    from libs.common import outbox

    async def empty() -> bool:
        return await outbox.pending_count(pool) == 0

    await wait_until(empty, timeout=30, message="the outbox to drain")


async def send_raw(bootstrap: str, topic: str, body: bytes, key: bytes = b"churn") -> None:
    """Write ``body`` as it is to ``topic`` (a message no consumer can parse, say)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, body, key=key)
    finally:
        await producer.stop()
