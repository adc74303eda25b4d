"""Session fixtures: the real embedded PostgreSQL and Kafka-compatible broker,
started once; a fresh schema and fresh topics for every test that asks.

Set DRIFTLOOP_DATABASE_URL / DRIFTLOOP_KAFKA_BOOTSTRAP to run the same tests
against external servers.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from devstack.embedded import EmbeddedStack, StackEndpoints
from libs.common import auth, topics
from libs.common.auth import Role
from libs.common.db import COMMON_MIGRATIONS, connect_with_retry, load_migrations, migrate
from libs.common.kafka import ensure_topics
from libs.common.service import ServiceSettings
from libs.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings, TelemetrySettings
from tests.keys import SIGNING


@pytest.fixture(scope="session")
def stack() -> Iterator[StackEndpoints]:
    # Not under pytest's basetemp: every pytest session chmods /tmp/pytest-of-<user> back to 0700, which
    # cuts the non-root PostgreSQL of another session running at the same time off its data directory.
    with (
        tempfile.TemporaryDirectory(prefix="driftloop-stack-") as home,
        EmbeddedStack(Path(home), durable=False) as running,
    ):
        yield running.endpoints


@pytest.fixture(scope="session")
def kafka_settings(stack: StackEndpoints) -> KafkaSettings:
    return KafkaSettings(bootstrap=stack.kafka_bootstrap, max_attempts=3, retry_backoff_s=0.05, connect_timeout_s=20)


@pytest.fixture(scope="session")
def db_settings(stack: StackEndpoints) -> DatabaseSettings:
    return DatabaseSettings(url=stack.database_url, connect_timeout_s=20)


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pool(db_settings: DatabaseSettings, schema: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh schema with the shared migrations (outbox, processed events) applied."""
    pool = await connect_with_retry(db_settings, schema)
    await migrate(pool, schema, load_migrations(COMMON_MIGRATIONS))
    yield pool
    await pool.execute(f"DROP SCHEMA {schema} CASCADE")
    await pool.close()


@pytest.fixture
async def topic(kafka_settings: KafkaSettings) -> str:
    """A fresh topic (3 partitions) and its dead-letter twin."""
    name = f"test.{uuid.uuid4().hex[:12]}"
    await ensure_topics(kafka_settings, [topics.TopicSpec(name, 3), topics.TopicSpec(topics.dlq(name), 1)])
    return name


@pytest.fixture
def artifact_root(tmp_path: Path) -> str:
    return (tmp_path / "artifacts").as_uri()


@dataclass
class Isolation:
    """One test's private slice of the shared stack: topic prefix, schema suffix, artifact root."""

    kafka: KafkaSettings
    database: DatabaseSettings
    artifacts_root: str
    suffix: str

    def settings(self, cls: type[S], **overrides: Any) -> S:
        service = cls.__name__.removesuffix("Settings").lower()
        values: dict[str, Any] = {
            "kafka": self.kafka,
            "database": self.database,
            "artifacts": ArtifactSettings(root=self.artifacts_root),
            "telemetry": TelemetrySettings(json_logs=False),
            "signing": SIGNING,
            "database_schema": f"{service}_{self.suffix}",
            **overrides,
        }
        return cls(**values)


S = TypeVar("S", bound=ServiceSettings)


@pytest.fixture
def isolated(kafka_settings: KafkaSettings, db_settings: DatabaseSettings, tmp_path: Path) -> Isolation:
    suffix = uuid.uuid4().hex[:10]
    return Isolation(
        kafka=kafka_settings.model_copy(update={"topic_prefix": f"t{suffix}."}),
        database=db_settings,
        artifacts_root=(tmp_path / "artifacts").as_uri(),
        suffix=suffix,
    )


@contextlib.asynccontextmanager
async def serve(
    app: FastAPI, *roles: Role, principal: str = "test-admin", token: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan (database, broker, consumers) and talk to it over ASGI.

    The client carries a fresh bearer token of ``principal`` with ``roles``
    (``admin`` when none are given), or none with ``token=False``.
    """
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service", timeout=30) as client,
    ):
        if token:
            client.headers.update(await bearer(app, *(roles or (Role.ADMIN,)), principal=principal))
        yield client


async def bearer(app: FastAPI, *roles: Role, principal: str = "test") -> dict[str, str]:
    """``Authorization`` headers with a fresh token for ``roles``, on a started app:
    ``await client.post(url, json=..., headers=await bearer(app, Role.PRODUCER))``."""
    issued = await auth.issue(app.state.auth.db, principal, roles, created_by="tests")
    return {"Authorization": f"Bearer {issued.token}"}
