"""What a service is (:class:`ServiceSpec`) and its started pieces (:class:`Runtime`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from starlette.types import ASGIApp

from libs.common import outbox
from libs.common.artifacts import ArtifactStore
from libs.common.auth import Authenticator
from libs.common.brokerwatch import BrokerWatch
from libs.common.events import Event
from libs.common.kafka import BrokerPublisher
from libs.common.retention import ArtifactUse, Rule
from libs.common.service.settings import ServiceSettings
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The started pieces of one service, handed to its handlers and routes."""

    name: str
    settings: ServiceSettings
    telemetry: Telemetry
    broker: KafkaBroker
    store: ArtifactStore
    auth: Authenticator
    pool: asyncpg.Pool | None = None
    relay: outbox.OutboxRelay | None = None
    watch: BrokerWatch | None = None
    ready: bool = False
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError(f"{self.name}: the database is not connected yet")
        return self.pool

    @property
    def publisher(self) -> BrokerPublisher:
        return BrokerPublisher(self.broker, self.settings.kafka.topic_prefix)

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run a background task for the service's lifetime; a crash is logged, not silent."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        task.add_done_callback(_log_crash)
        self.background.append(task)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())


@dataclass
class ServiceSpec:
    """What makes a service itself."""

    name: str
    migrations: Path | None
    register: Callable[[Runtime], None] = lambda rt: None
    """Registers subscribers on ``rt.broker`` (before it starts)."""
    routes: Callable[[FastAPI, Runtime], None] = lambda app, rt: None
    """Mounts the service's HTTP routes."""
    on_start: Callable[[Runtime], Awaitable[None]] | None = None
    """Runs after the database and broker are up (load state, start workers)."""
    on_stop: Callable[[Runtime], Awaitable[None]] | None = None
    readiness: Callable[[], dict[str, str]] | None = None
    """Checks of the service's own, merged into ``/readyz`` ("ok" or why not), e.g. serving's loaded champions."""
    description: str = ""
    publishes: tuple[type[Event], ...] = ()
    """Events the service emits (for its AsyncAPI document)."""
    receives: tuple[type[Event], ...] = ()
    """Events it consumes without a faststream subscriber (for its AsyncAPI document): ingest's
    micro-batch consumer of records.submitted."""
    verify_artifacts: bool = False
    """Loads what the trainer made (serving, the monitor): every artifact read must carry a valid signature."""
    front: Callable[[ASGIApp], ASGIApp] | None = None
    """An ASGI layer in front of every other one, given the rest of the app: serving answers its predict
    routes there, doing its own token check, limits, metrics and tracing (see services/serving/hotpath.py)."""
    retention: tuple[Rule, ...] = ()
    """The service's own tables that are pruned, besides the shared ones (libs/common/retention.py)."""
    artifacts: ArtifactUse | None = None
    """The artifacts the service writes, and which of them are in use: the rest are collected
    by the retention pass (libs/common/retention.py). None: the service writes none."""
