"""A real broker restart on the same port: the embedded tansu keeps memory only, so it
comes back with no topics, groups or offsets. The services notice, report
not-ready meanwhile, create the topics again, rejoin and resume, with no restart."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from devstack.embedded import EmbeddedKafka
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import RecordsSubmitted
from libs.common.settings import KafkaSettings
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from tests.conftest import Isolation, serve
from tests.helpers import wait_until
from tests.integration.test_ingest import SCHEMA, _row
from tests.integration.test_registry import _has, trained
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


async def _ready(client: Any) -> bool:
    return bool((await client.get("/readyz")).status_code == 200)


async def _not_ready(client: Any) -> bool:
    return bool((await client.get("/readyz")).status_code == 503)


async def test_services_resume_after_the_broker_restarts_empty(isolated: Isolation, tmp_path: Path) -> None:
    broker = EmbeddedKafka(tmp_path / "broker")
    broker.start()
    try:
        kafka = KafkaSettings(bootstrap=broker.bootstrap, topic_prefix=isolated.kafka.topic_prefix, max_attempts=3,
                              retry_backoff_s=0.05, connect_timeout_s=20)  # fmt: skip
        own = Isolation(kafka, isolated.database, isolated.artifacts_root, isolated.suffix)
        store = ArtifactStore(own.artifacts_root)
        ingest, ingest_rt = ingest_app(own.settings(IngestSettings, micro_batch_wait_s=0.2))
        registry, _ = registry_app(own.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
        async with serve(ingest) as ingest_client, serve(registry) as registry_client:
            assert (await ingest_client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201

            async def versions() -> int:
                return int(await ingest_rt.db.fetchval("SELECT last_version FROM datasets") or 0)

            async def submit(n: int) -> None:
                event = RecordsSubmitted(producer="test", dataset="customers", records=[_row(age=20 + n)])
                await publish(own, event)

            await submit(1)
            await wait_until(lambda: _at_least(versions, 1), message="batch 1 stored")
            await publish(own, trained(store, 0.7))
            await wait_until(lambda: _has(registry_client, 1), message="v1 registered")

            broker.process.stop(signal.SIGKILL)  # kill -9
            await wait_until(lambda: _not_ready(ingest_client), timeout=20, message="ingest not ready")
            await wait_until(lambda: _not_ready(registry_client), timeout=20, message="registry not ready")

            broker.start()  # same port, empty
            restarted = time.monotonic()
            await wait_until(lambda: _ready(ingest_client), timeout=30, message="ingest ready again")
            await wait_until(lambda: _topic_exists(kafka), timeout=30, message="topics created again")
            await submit(2)
            await wait_until(lambda: _at_least(versions, 2), timeout=30, message="batch 2 stored after the restart")
            await publish(own, trained(store, 0.8, 0.7, 1))
            await wait_until(lambda: _has(registry_client, 2), timeout=30, message="v2 registered after the restart")
            resumed = time.monotonic() - restarted
            recreated = [_counter((await c.get("/metrics")).text) for c in (ingest_client, registry_client)]
            assert sum(recreated) >= 1  # whichever service noticed first created them
            print(f"data flowed again {resumed:.1f}s after the broker restarted empty")
            assert resumed < 30
    finally:
        broker.stop()


def _counter(metrics: str, name: str = "driftloop_broker_topics_recreated_total") -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))


async def _at_least(probe: Any, n: int) -> bool:
    return bool(await probe() >= n)


async def _topic_exists(kafka: KafkaSettings) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        return kafka.topic(topics.RECORDS_SUBMITTED) in set(await admin.list_topics())
    finally:
        await admin.close()
