"""Starting and stopping a service: database and migrations, topics, broker, outbox relay, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from prometheus_client import Counter, Gauge

from libs.common import outbox, retention
from libs.common.artifacts import ArtifactStore
from libs.common.brokerwatch import BrokerWatch
from libs.common.db import COMMON_MIGRATIONS, close_pool, connect_with_retry, load_migrations, migrate
from libs.common.kafka import ensure_topics, start_with_retry
from libs.common.service.runtime import Runtime, ServiceSpec
from libs.common.service.settings import ServiceSettings
from libs.common.signing import Verifier, VerifyingStore
from libs.common.tasks import bounded
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)


def store_for(spec: ServiceSpec, settings: ServiceSettings, telemetry: Telemetry) -> ArtifactStore:
    if not spec.verify_artifacts:
        return ArtifactStore(settings.artifacts.root, namespace=spec.name)
    verifier = Verifier.from_settings(settings.signing, telemetry.registry)
    if not verifier.paths:
        log.warning(
            "%s: no public keys configured (DRIFTLOOP_SIGNING_PUBLIC_KEYS): every artifact is refused", spec.name
        )
    return VerifyingStore(settings.artifacts.root, namespace=spec.name, verifier=verifier)


async def start(spec: ServiceSpec, rt: Runtime) -> None:
    started = time.monotonic()
    schema = rt.settings.database_schema or spec.name
    await rt.auth.start(rt.settings.database)
    if spec.migrations is not None:
        rt.pool = await connect_with_retry(rt.settings.database, schema)
        await migrate(rt.pool, schema, load_migrations(COMMON_MIGRATIONS, spec.migrations))
    if rt.settings.kafka.create_topics:
        await ensure_topics(rt.settings.kafka)
    await start_with_retry(rt.broker, rt.settings.kafka)
    rt.watch = BrokerWatch(rt.settings.kafka, rt.telemetry)
    rt.spawn(rt.watch.run(), "broker-watch")
    if rt.pool is not None:
        backlog = Gauge("driftloop_outbox_pending", "Outbox rows not yet published.", registry=rt.telemetry.registry)
        published = Counter(
            "driftloop_outbox_published_total", "Outbox rows published.", registry=rt.telemetry.registry
        )
        rt.relay = outbox.OutboxRelay(rt.pool, rt.publisher, schema=schema, on_published=published.inc)
        rt.relay.start()
        pool = rt.pool

        async def measure_backlog() -> None:
            while True:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    backlog.set(await outbox.pending_count(pool))
                await asyncio.sleep(5)

        rt.spawn(measure_backlog(), "outbox-backlog")
        pruner = retention.Pruner(rt.pool, retention.SHARED + spec.retention, rt.settings.retention, rt.telemetry,
                                  store=rt.store, artifacts=spec.artifacts)  # fmt: skip
        rt.spawn(pruner.run(), "retention")
    if spec.on_start is not None:
        await spec.on_start(rt)
    rt.ready = True
    log.info("%s ready in %.2fs", spec.name, time.monotonic() - started)


BROKER_STOP_TIMEOUT_S = 15.0
"""Stopping the Kafka clients sends LeaveGroup and flushes the producer; against a broker that
does not answer, each request waits aiokafka's request timeout (40 s). A shutdown does not wait
for a dead broker that long (Kubernetes kills after 30 s): the rest of the stop goes on."""
STOP_TIMEOUT_S = 45.0
"""A watchdog, not a mitigation: every step of a stop ends by itself (see libs.common.tasks for
the hang this once was). Should one not, the stop logs where it is stuck and the process exits."""


async def stop(spec: ServiceSpec, rt: Runtime) -> None:
    rt.ready = False
    if spec.on_stop is not None:
        await spec.on_stop(rt)
    for task in rt.background:
        task.cancel()
    await asyncio.gather(*rt.background, return_exceptions=True)
    if rt.relay is not None:  # before the broker: it publishes what was committed (up to 5 s), the rest stays pending
        await rt.relay.stop()
    await bounded(rt.broker.stop(), timeout_s=BROKER_STOP_TIMEOUT_S, what=f"{spec.name}: stopping the Kafka clients")
    if rt.pool is not None:
        await close_pool(rt.pool)
    await rt.auth.stop()
    rt.telemetry.shutdown()
