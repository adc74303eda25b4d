"""The latest dead letters of each dead-letter topic, with why they failed: read-only, bounded.

Reads the tail of every ``<topic>.dlq`` of the installation with a consumer that joins no group and
commits nothing, so looking never moves anyone's offsets. Each message keeps the diagnostics
:func:`libs.common.kafka.deadletter.dead_letter` added (reason, error type, source topic, consumer
group, time); of its body only the size and a short printable preview travel, never the whole payload.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from libs.common import topics
from libs.common.kafka_security import client_options
from libs.common.settings import KafkaSettings
from libs.common.tasks import shielded

PREVIEW_CHARS = 120


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    dlq_topic: str
    partition: int
    offset: int
    source_topic: str | None
    group: str | None
    error_type: str | None
    reason: str | None
    failed_at: str | None
    attempts: str | None
    size: int
    """Bytes of the dead-lettered body."""
    preview: str
    """Its first characters, non-printable ones escaped (``\\x..``); "…" when cut."""

    @property
    def ref(self) -> str:
        """What ``driftloop dlq replay`` takes."""
        return f"{self.dlq_topic}:{self.partition}:{self.offset}"


def preview(body: bytes | None, limit: int = PREVIEW_CHARS) -> str:
    """A short printable rendering of a body: decoded as UTF-8 (bad bytes replaced), control characters
    escaped (``\\x00``, never cut in half), at most ``limit`` characters, then "…" when there was more."""
    data = body or b""
    text = data[: limit * 4].decode(errors="replace")  # a UTF-8 character is at most 4 bytes
    shown: list[str] = []
    used = 0
    for ch in text:
        piece = ch if ch.isprintable() else f"\\x{ord(ch):02x}"
        if used + len(piece) > limit:
            return "".join(shown) + "…"
        shown.append(piece)
        used += len(piece)
    return "".join(shown) + ("…" if len(data) > limit * 4 else "")


def view(record: ConsumerRecord[bytes, bytes]) -> DeadLetterView:
    headers = {k: bytes(v).decode(errors="replace") for k, v in record.headers}
    return DeadLetterView(
        dlq_topic=record.topic, partition=record.partition, offset=record.offset,
        source_topic=headers.get(topics.HEADER_DLQ_ORIGINAL_TOPIC), group=headers.get(topics.HEADER_DLQ_CONSUMER_GROUP),
        error_type=headers.get(topics.HEADER_DLQ_ERROR_TYPE), reason=headers.get(topics.HEADER_DLQ_REASON),
        failed_at=headers.get(topics.HEADER_DLQ_FAILED_AT), attempts=headers.get(topics.HEADER_DLQ_ATTEMPTS),
        size=len(record.value or b""), preview=preview(record.value),
    )  # fmt: skip


async def latest_dead_letters(
    settings: KafkaSettings, per_topic: int, timeout_s: float = 10.0
) -> dict[str, list[DeadLetterView]]:
    """Dead-letter topic → its latest ``per_topic`` messages, newest first (topics with none left out).
    Raises ``TimeoutError`` when the tail cannot be read within ``timeout_s``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False, **client_options(settings)
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            return await _tails(consumer, settings.topic_prefix, per_topic)
    finally:  # a start that failed leaves a client to close too
        await shielded(consumer.stop())


async def _tails(consumer: AIOKafkaConsumer, prefix: str, per_topic: int) -> dict[str, list[DeadLetterView]]:
    found: dict[str, list[DeadLetterView]] = {}
    for record in await read_tails(consumer, await dlq_topics(consumer, prefix), per_topic):
        found.setdefault(record.topic, []).append(view(record))
    return {
        topic: sorted(letters, key=lambda d: (d.failed_at or "", d.offset), reverse=True)[:per_topic]
        for topic, letters in found.items()
    }


async def dlq_topics(consumer: AIOKafkaConsumer, prefix: str) -> list[str]:
    """The dead-letter topics of the installation whose topics start with ``prefix``."""
    return sorted(t for t in await consumer.topics() if t.startswith(prefix) and t.endswith(topics.DLQ_SUFFIX))


async def read_tails(
    consumer: AIOKafkaConsumer, names: list[str], per_partition: int | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    """The messages of topics ``names`` up to their current ends: the last ``per_partition`` of each
    partition, or all of them (None). ``consumer`` joins no group: nothing is committed."""
    parts = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
    if not parts:
        return []
    ends, starts = await consumer.end_offsets(parts), await consumer.beginning_offsets(parts)
    wanted = {
        tp: starts[tp] if per_partition is None else max(starts[tp], ends[tp] - per_partition)
        for tp in parts
        if ends[tp] > starts[tp]
    }
    if not wanted:
        return []
    consumer.assign(list(wanted))
    for tp, offset in wanted.items():
        consumer.seek(tp, offset)
    found: list[ConsumerRecord[bytes, bytes]] = []
    while [tp for tp in wanted if await consumer.position(tp) < ends[tp]]:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            found.extend(records)
    return found
