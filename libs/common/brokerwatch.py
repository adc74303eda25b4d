"""Noticing that the broker went away, and that it came back without our topics.

Kafka clients reconnect by themselves, but a broker that restarts empty (the
embedded tansu keeps memory only; a Kafka cluster rebuilt from scratch is the
same) comes back without topics, consumer groups or committed offsets. The
clients then see metadata without the topic and wait, silently, until their
next full metadata refresh (5 minutes by default) -- and even then nothing
creates the topics, since driftloop never relies on auto-creation.

:class:`BrokerWatch` asks the broker for its topics every few seconds. It
records whether the broker answered (``/readyz`` reports it), and when topics
the service needs are missing it creates them again, with a log line and
``driftloop_broker_topics_recreated_total``. The consumers and producers
refresh their metadata every :data:`METADATA_MAX_AGE_MS`, so within seconds
they see the new topics, rejoin their groups (a group the broker forgot is
joined afresh and starts where ``auto_offset_reset`` says) and resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from libs.common import topics
from libs.common.kafka import METADATA_MAX_AGE_MS, ensure_topics
from libs.common.kafka_security import client_options
from libs.common.settings import KafkaSettings
from libs.common.tasks import shielded
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)


class BrokerWatch:
    """Probes the broker every ``interval_s``; re-creates missing topics (see the module docstring)."""

    def __init__(
        self,
        settings: KafkaSettings,
        telemetry: Telemetry,
        specs: Iterable[topics.TopicSpec] = topics.all_topics(),
        *,
        interval_s: float = 3.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.specs = list(specs)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.reachable = True
        self.problem = ""
        self.last_seen = time.monotonic()
        self.recreated = Counter(
            "driftloop_broker_topics_recreated_total",
            "Times the broker was found without topics the service needs, and they were created again.",
            registry=telemetry.registry,
        )
        self.up = Gauge("driftloop_broker_reachable", "1 while the broker answers metadata requests.",
                        registry=telemetry.registry)  # fmt: skip
        self.up.set(1)

    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)

    async def check(self) -> None:
        """One probe: reachability, and the topics re-created if the broker lost them."""
        try:
            async with asyncio.timeout(self.timeout_s):  # not wait_for: see libs.common.tasks
                existing = await self._topics()
        except (KafkaError, OSError, TimeoutError) as exc:
            if self.reachable:
                log.warning("broker unreachable at %s: %r", self.settings.bootstrap, exc)
            self._mark(reachable=False, problem=f"unreachable: {exc!r}")
            return
        missing = sorted(s.name for s in self.specs if self.settings.topic(s.name) not in existing)
        if missing:
            log.warning("broker at %s has lost topics %s (restarted empty?); creating them again",
                        self.settings.bootstrap, missing)  # fmt: skip
            try:
                async with asyncio.timeout(self.timeout_s * 3):
                    await ensure_topics(self.settings, self.specs)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._mark(reachable=False, problem=f"topics missing and not re-created: {exc!r}")
                return
            self.recreated.inc()
            log.info("topics created again; consumers rejoin within %.0fs", METADATA_MAX_AGE_MS / 1000)
        if not self.reachable:
            log.info("broker at %s reachable again", self.settings.bootstrap)
        self._mark(reachable=True, problem="")

    def _mark(self, *, reachable: bool, problem: str) -> None:
        self.reachable = reachable
        self.problem = problem
        self.up.set(1 if reachable else 0)
        if reachable:
            self.last_seen = time.monotonic()

    async def _topics(self) -> set[str]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap,
            client_id=f"{self.settings.client_id}-watch",
            request_timeout_ms=int(self.timeout_s * 1000),
            **client_options(self.settings),
        )
        try:
            await admin.start()
            return set(await admin.list_topics())
        finally:
            await shielded(admin.close())  # aiokafka's close swallows a cancel: see libs.common.tasks
