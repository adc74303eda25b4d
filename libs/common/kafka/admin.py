"""Topic provisioning: every topic is created explicitly, never by auto-creation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from libs.common import topics
from libs.common.errors import TransientError
from libs.common.kafka.broker import connect_with_retry
from libs.common.kafka_security import client_options
from libs.common.settings import KafkaSettings
from libs.common.tasks import shielded

log = logging.getLogger(__name__)


async def ensure_topics(settings: KafkaSettings, specs: Iterable[topics.TopicSpec] = topics.all_topics()) -> list[str]:
    """Create the topics that do not exist yet, with ``settings.replication_factor``; return the names created.

    Idempotent: a topic that exists is left exactly as it is (partitions and
    configuration are never changed here). Retries an unreachable cluster like
    :func:`start_with_retry`.
    """
    specs = [topics.TopicSpec(settings.topic(s.name), s.partitions, s.retention_ms) for s in specs]
    deadline = time.monotonic() + settings.connect_timeout_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, client_id=f"{settings.client_id}-admin", **client_options(settings)
    )
    await connect_with_retry(admin.start, admin.close, settings)
    try:
        existing = set(await admin.list_topics())
        created: list[str] = []
        for spec in (s for s in specs if s.name not in existing):
            new = NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={"retention.ms": str(spec.retention_ms)},
            )
            try:
                await admin.create_topics([new])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another replica won the race
        await _wait_for_metadata(admin, [s.name for s in specs], deadline)
        if created:
            log.info("topics created", extra={"topics": created})
        return created
    finally:
        await shielded(admin.close())  # aiokafka's close swallows a cancel: see libs.common.tasks


async def _wait_for_metadata(admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> None:
    while True:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TransientError(f"topics did not appear in metadata: {missing}")
        await asyncio.sleep(0.1)
