"""Consumer lag: measured per group, topic and partition, and exported to Prometheus."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from libs.common.kafka_security import client_options
from libs.common.settings import KafkaSettings
from libs.common.tasks import shielded
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagRow:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


async def consumer_lag(bootstrap: str, prefix: str = "", options: dict[str, Any] | None = None) -> list[LagRow]:
    """Committed offset, end offset and lag of every group × topic × partition under ``prefix``.

    Committed offsets are read through a consumer of each group that never
    joins it (OffsetFetch per partition): the admin client's list-offsets call
    is not answered by every Kafka-compatible broker, this is. ``options``: TLS/SASL
    (:func:`libs.common.kafka_security.client_options`).
    """
    options = options or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="driftloop-lag", **options)
    await admin.start()
    try:
        groups = sorted(g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix))
    finally:
        await shielded(admin.close())  # aiokafka's close swallows a cancel: see libs.common.tasks
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    await probe.start()
    try:
        names = [t for t in await probe.topics() if t.startswith(prefix) and not t.startswith("__")]
        partitions = [TopicPartition(t, p) for t in sorted(names) for p in sorted(probe.partitions_for_topic(t) or ())]
        ends = await probe.end_offsets(partitions) if partitions else {}
    finally:
        await shielded(probe.stop())
    rows: list[LagRow] = []
    for group in groups:
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **options)
        await reader.start()
        try:
            for tp in partitions:
                committed = await reader.committed(tp)
                if committed is not None:
                    rows.append(LagRow(group, tp.topic, tp.partition, committed, ends.get(tp, committed)))
        finally:
            await shielded(reader.stop())
    return rows


class LagExporter:
    """Publishes ``driftloop_consumer_lag{group, topic, partition}`` for every group of the installation."""

    def __init__(self, settings: KafkaSettings, telemetry: Telemetry, interval_s: float = 15.0) -> None:
        from prometheus_client import Gauge

        self.settings = settings
        self.interval_s = interval_s
        self.gauge = Gauge(
            "driftloop_consumer_lag", "Messages behind the end of the partition, per consumer group.",
            ["group", "topic", "partition"], registry=telemetry.registry,
        )  # fmt: skip

    async def run(self) -> None:
        while True:
            try:
                rows = await consumer_lag(
                    self.settings.bootstrap, self.settings.topic_prefix, client_options(self.settings)
                )
                self.gauge.clear()
                for row in rows:
                    self.gauge.labels(row.group, row.topic, str(row.partition)).set(row.lag)
            except (KafkaError, OSError) as exc:
                log.warning("consumer lag not measured: %r", exc)
            await asyncio.sleep(self.interval_s)
