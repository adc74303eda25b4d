"""Outbox and idempotent consumers against real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest
from faststream.kafka import KafkaBroker

from libs.common import outbox
from libs.common.events import TrainingRequested
from libs.common.kafka import BrokerPublisher, Delivery, Route, create_broker, subscribe
from libs.common.settings import KafkaSettings, TelemetrySettings
from libs.common.telemetry import setup_telemetry
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class CrashAfterPublish(BrokerPublisher):
    """Publishes for real, then 'crashes' before the relay can mark the rows sent."""

    async def send(
        self, topic: str, payload: bytes, *, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        ack = await super().send(topic, payload, key=key, headers=headers)

        async def crash() -> None:
            await ack
            raise ConnectionResetError("relay died after the broker acked")

        return crash()


async def _effects_table(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS effects (event_id uuid, reason text)")


async def _write_effect(conn: asyncpg.Connection, event: TrainingRequested) -> str:
    await conn.execute("INSERT INTO effects VALUES ($1, $2)", event.event_id, event.reason)
    return "applied"


def _consumer(broker: KafkaBroker, pool: asyncpg.Pool, topic: str, settings: KafkaSettings, seen: list[str]) -> None:
    """An idempotent consumer: its effect and the dedupe record share one transaction."""

    async def handle(event: TrainingRequested, delivery: Delivery) -> None:
        seen.append(event.reason)
        await outbox.once(pool, "effects-writer", event, lambda conn: _write_effect(conn, event))

    subscribe(broker, {topic: Route(handle, (TrainingRequested,))}, group=f"g-{uuid.uuid4().hex[:6]}",
              settings=settings, telemetry=setup_telemetry("consumer", TelemetrySettings()))  # fmt: skip


@contextlib.asynccontextmanager
async def _consumed(
    pool: asyncpg.Pool, topic: str, settings: KafkaSettings
) -> AsyncIterator[tuple[KafkaBroker, list[str]]]:
    """A started broker whose consumer of ``topic`` applies each event's effect once; the reasons seen."""
    await _effects_table(pool)
    seen: list[str] = []
    broker = create_broker(settings, setup_telemetry("relay", TelemetrySettings()))
    _consumer(broker, pool, topic, settings, seen)
    async with broker:
        await broker.start()
        yield broker, seen


async def test_crash_between_commit_and_publish_still_delivers_and_redelivery_changes_nothing(
    pool: asyncpg.Pool, schema: str, topic: str, kafka_settings: KafkaSettings
) -> None:
    await _effects_table(pool)
    event = TrainingRequested(producer="test", model="churn", dataset="customers", reason="outboxed")
    # The service commits its change and the event together, then "crashes"
    # before any relay runs.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("CREATE TABLE IF NOT EXISTS jobs (id int)")
        await conn.execute("INSERT INTO jobs VALUES (1)")
        await outbox.add(conn, event, topic=topic)
    assert await outbox.pending_count(pool) == 1

    async with _consumed(pool, topic, kafka_settings) as (broker, seen):
        # The first relay publishes, then dies before marking: the row stays pending.
        crashing = outbox.OutboxRelay(pool, CrashAfterPublish(broker), schema=schema)
        with pytest.raises(ConnectionResetError):
            await crashing.relay_once()
        assert await outbox.pending_count(pool) == 1
        # The restarted relay publishes it again and marks it.
        relay = outbox.OutboxRelay(pool, BrokerPublisher(broker), schema=schema)
        assert await relay.relay_once() == 1
        assert await outbox.pending_count(pool) == 0
        await wait_until(lambda: len(seen) == 2, message="both deliveries")

    assert seen == ["outboxed", "outboxed"]  # delivered twice …
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1  # … applied once
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == 1


async def test_once_applies_an_events_effects_once_per_consumer_and_a_failed_attempt_counts_for_nothing(
    pool: asyncpg.Pool,
) -> None:
    await _effects_table(pool)
    event = TrainingRequested(producer="test", model="churn", dataset="customers", reason="once")

    async def fails_midway(conn: asyncpg.Connection) -> str:
        await _write_effect(conn, event)
        raise ConnectionResetError("the attempt died after its first write")

    with pytest.raises(ConnectionResetError):
        await outbox.once(pool, "effects-writer", event, fails_midway)
    assert await pool.fetchval("SELECT count(*) FROM effects") == 0  # rolled back with the delivery record
    assert await outbox.once(pool, "effects-writer", event, lambda conn: _write_effect(conn, event)) == "applied"
    assert await outbox.once(pool, "effects-writer", event, lambda conn: _write_effect(conn, event)) is None
    assert await pool.fetchval("SELECT count(*) FROM effects") == 1
    # another consumer of the same event applies its own effects
    assert await outbox.once(pool, "another-consumer", event, lambda conn: _write_effect(conn, event)) == "applied"
    assert await pool.fetchval("SELECT count(*) FROM effects") == 2


async def test_rolled_back_transaction_publishes_nothing(pool: asyncpg.Pool) -> None:
    async def change_that_fails() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, TrainingRequested(producer="test", model="m", dataset="d"))
            raise RuntimeError("business rule failed")

    with pytest.raises(RuntimeError, match="business rule"):
        await change_that_fails()
    assert await outbox.pending_count(pool) == 0


async def test_add_outside_a_transaction_is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await outbox.add(conn, TrainingRequested(producer="t", model="m", dataset="d"))


async def test_running_relay_wakes_on_commit_and_keeps_order(
    pool: asyncpg.Pool, schema: str, topic: str, kafka_settings: KafkaSettings
) -> None:
    async with _consumed(pool, topic, kafka_settings) as (broker, seen):
        # A long poll interval: only NOTIFY can make delivery this quick.
        relay = outbox.OutboxRelay(pool, BrokerPublisher(broker), schema=schema, poll_interval_s=60)
        relay.start()
        try:
            await asyncio.sleep(0.2)  # let the relay LISTEN before the commits
            for i in range(20):
                async with pool.acquire() as conn, conn.transaction():
                    await outbox.add(conn, TrainingRequested(producer="t", model="m", dataset="d", reason=f"r{i}"),
                                     topic=topic)  # fmt: skip
            await wait_until(lambda: len(seen) == 20, timeout=30, message="20 relayed events")
        finally:
            await relay.stop()
    assert seen == [f"r{i}" for i in range(20)]  # one key → one partition → outbox order
    assert await outbox.pending_count(pool) == 0


class Unused:
    async def send(self, topic: str, payload: bytes, *, key: bytes | None, headers: dict[str, str]) -> Any:
        raise AssertionError("the outbox is empty: nothing is sent")


async def test_relay_stops_when_woken_as_it_is_stopped(pool: asyncpg.Pool, schema: str) -> None:
    """A commit's wake-up and the service's stop in the same loop iteration: with
    ``asyncio.wait_for`` (Python 3.11) the relay swallowed the cancel and ran on, holding its
    listening connection, and the service's stop hung (libs/common/tasks.py)."""
    relay = outbox.OutboxRelay(pool, Unused(), schema=schema, poll_interval_s=60)
    relay.start()
    await asyncio.sleep(0.3)  # listening, and waiting to be woken
    relay.wake()
    stopping = asyncio.ensure_future(relay.stop())  # runs in the iteration the wake-up completes in
    done, _ = await asyncio.wait([stopping], timeout=5)
    assert done, "the relay did not stop"
    await stopping
    assert pool.get_size() - pool.get_idle_size() == 0  # its listening connection was released


async def test_a_stopping_relay_publishes_what_was_committed_first(
    pool: asyncpg.Pool, schema: str, topic: str, kafka_settings: KafkaSettings
) -> None:
    """Rows committed that the relay has not published yet (here it never ran) are published by its
    stop, not left for the service's next start."""
    async with _consumed(pool, topic, kafka_settings) as (broker, seen):
        for i in range(3):
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, TrainingRequested(producer="t", model="m", dataset="d", reason=f"s{i}"),
                                 topic=topic)  # fmt: skip
        assert await outbox.pending_count(pool) == 3
        await outbox.OutboxRelay(pool, BrokerPublisher(broker), schema=schema, poll_interval_s=60).stop()
        assert await outbox.pending_count(pool) == 0
        await wait_until(lambda: len(seen) == 3, timeout=30, message="3 relayed events")
    assert seen == ["s0", "s1", "s2"]
