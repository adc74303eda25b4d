"""Operator tools: consumer lag, topics, and the dead-letter queues.

Lag is measured as the brokers see it: for every consumer group, the end
offset of each partition minus the group's committed offset. A dead-lettered
message can be replayed to its original topic once its cause is fixed; the
replay is recorded in PostgreSQL (schema ``ops``) before it is sent, so the
same message is never replayed twice.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from libs.common import topics
from libs.common.db import connect_with_retry, load_migrations, migrate
from libs.common.errors import Conflict, NotFound
from libs.common.kafka.dead_letters import dlq_topics, read_tails
from libs.common.kafka_security import client_options
from libs.common.settings import DatabaseSettings, KafkaSettings

OPS_SCHEMA = "ops"
MIGRATIONS = Path(__file__).parent / "migrations"


async def topic_table(bootstrap: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every topic under ``prefix`` with its partitions and messages retained (end − beginning)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **_security())
    await consumer.start()
    try:
        names = sorted(t for t in await consumer.topics() if t.startswith(prefix) and not t.startswith("__"))
        rows = []
        for name in names:
            parts = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
            ends = await consumer.end_offsets(parts)
            starts = await consumer.beginning_offsets(parts)
            rows.append({
                "topic": name,
                "partitions": len(parts),
                "messages": sum(ends[tp] - starts[tp] for tp in parts),
                "dlq": name.endswith(topics.DLQ_SUFFIX),
            })  # fmt: skip
        return rows
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class DeadLetter:
    dlq_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.dlq_topic}:{self.partition}:{self.offset}"

    def summary(self, replayed: bool = False) -> dict[str, Any]:
        h = self.headers
        return {
            "ref": self.ref,
            "original": f"{h.get(topics.HEADER_DLQ_ORIGINAL_TOPIC)}:{h.get(topics.HEADER_DLQ_ORIGINAL_PARTITION)}:"
            f"{h.get(topics.HEADER_DLQ_ORIGINAL_OFFSET)}",
            "group": h.get(topics.HEADER_DLQ_CONSUMER_GROUP),
            "error_type": h.get(topics.HEADER_DLQ_ERROR_TYPE),
            "reason": h.get(topics.HEADER_DLQ_REASON),
            "attempts": h.get(topics.HEADER_DLQ_ATTEMPTS),
            "failed_at": h.get(topics.HEADER_DLQ_FAILED_AT),
            "replayed": replayed,
        }


async def dead_letters(bootstrap: str, prefix: str = "", topic: str | None = None) -> list[DeadLetter]:
    """Every message in the dead-letter topics (or in ``topic``), oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **_security())
    await consumer.start()
    try:
        names = [topic] if topic else await dlq_topics(consumer, prefix)
        found = [
            DeadLetter(r.topic, r.partition, r.offset, r.key, r.value,
                       {k: bytes(v).decode(errors="replace") for k, v in r.headers})
            for r in await read_tails(consumer, names)
        ]  # fmt: skip
        return sorted(found, key=lambda d: (d.dlq_topic, d.partition, d.offset))
    finally:
        await consumer.stop()


async def replayed_refs(database: DatabaseSettings) -> set[str]:
    pool = await _ops_pool(database)
    try:
        rows = await pool.fetch("SELECT dlq_topic, dlq_partition, dlq_offset FROM dlq_replays")
        return {f"{r['dlq_topic']}:{r['dlq_partition']}:{r['dlq_offset']}" for r in rows}
    finally:
        await pool.close()


async def replay(bootstrap: str, database: DatabaseSettings, ref: str, *, actor: str | None = None) -> dict[str, Any]:
    """Send dead letter ``ref`` (``topic:partition:offset``) back to its original topic, once."""
    dlq_topic, partition, offset = _parse_ref(ref)
    letter = next(
        (d for d in await dead_letters(bootstrap, topic=dlq_topic) if (d.partition, d.offset) == (partition, offset)),
        None,
    )
    if letter is None:
        raise NotFound(f"no dead letter at {ref}")
    target = letter.headers.get(topics.HEADER_DLQ_ORIGINAL_TOPIC) or dlq_topic.removesuffix(topics.DLQ_SUFFIX)
    headers = [(k, v.encode()) for k, v in letter.headers.items() if not k.startswith("x-dlq-")]
    headers.append(("x-replayed-from", ref.encode()))
    pool = await _ops_pool(database)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, **_security())
    await producer.start()
    try:
        async with pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, target_topic, replayed_by) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
                dlq_topic, partition, offset, target, actor or getpass.getuser(),
            )  # fmt: skip
            if not inserted:
                raise Conflict(f"{ref} was already replayed")
            # Sent inside the transaction: if the broker refuses, the record rolls back and a retry is allowed.
            sent = await producer.send_and_wait(target, letter.value, key=letter.key, headers=headers)
        return {"ref": ref, "replayed_to": f"{target}:{sent.partition}:{sent.offset}",
                "at": datetime.now(UTC).isoformat()}  # fmt: skip
    finally:
        await producer.stop()
        await pool.close()


def _parse_ref(ref: str) -> tuple[str, int, int]:
    topic, _, rest = ref.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    if not topic or not partition.isdigit() or not rest.isdigit():
        raise NotFound(f"a dead letter is named topic:partition:offset, not {ref!r}")
    return topic, int(partition), int(rest)


async def _ops_pool(database: DatabaseSettings) -> Any:
    pool = await connect_with_retry(database, OPS_SCHEMA)
    await migrate(pool, OPS_SCHEMA, load_migrations(MIGRATIONS))
    return pool


def _security() -> dict[str, Any]:
    """TLS/SASL of the operator's clients, from the same ``DRIFTLOOP_KAFKA_*`` variables as the services."""
    return client_options(KafkaSettings())
