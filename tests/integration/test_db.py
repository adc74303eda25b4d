"""Migrations and start-up retries against real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from devstack.embedded import EmbeddedPostgres, free_port
from libs.common.db import close_pool, connect_with_retry, load_migrations, migrate
from libs.common.errors import MigrationError, TransientError
from libs.common.kafka import ensure_topics
from libs.common.settings import DatabaseSettings, KafkaSettings

pytestmark = pytest.mark.integration


def _write(directory: Path, name: str, sql: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(sql)


async def test_migrations_apply_once_and_are_recorded(pool: asyncpg.Pool, schema: str, tmp_path: Path) -> None:
    _write(tmp_path, "001_items.sql", "CREATE TABLE items (id int PRIMARY KEY);")
    _write(tmp_path, "002_seed.sql", "INSERT INTO items VALUES (1), (2);")
    assert await migrate(pool, schema, load_migrations(tmp_path)) == ["001_items.sql", "002_seed.sql"]
    assert await migrate(pool, schema, load_migrations(tmp_path)) == []
    assert await pool.fetchval("SELECT count(*) FROM items") == 2  # the seed ran once
    recorded = [r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations ORDER BY name")]
    assert recorded == ["000_idempotency.sql", "000_outbox.sql", "000_retention.sql", "001_items.sql", "002_seed.sql"]


async def test_replicas_migrating_at_once_apply_each_file_once(pool: asyncpg.Pool, schema: str, tmp_path: Path) -> None:
    _write(tmp_path, "001_counter.sql", "CREATE TABLE counter (n int); INSERT INTO counter VALUES (1);")
    results = await asyncio.gather(*(migrate(pool, schema, load_migrations(tmp_path)) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert await pool.fetchval("SELECT count(*) FROM counter") == 1


async def test_changed_checksum_is_refused(pool: asyncpg.Pool, schema: str, tmp_path: Path) -> None:
    _write(tmp_path, "001_items.sql", "CREATE TABLE items (id int);")
    await migrate(pool, schema, load_migrations(tmp_path))
    _write(tmp_path, "001_items.sql", "CREATE TABLE items (id bigint);")
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        await migrate(pool, schema, load_migrations(tmp_path))


async def test_failed_migration_leaves_nothing_half_applied(pool: asyncpg.Pool, schema: str, tmp_path: Path) -> None:
    _write(tmp_path, "001_ok.sql", "CREATE TABLE ok (id int);")
    _write(tmp_path, "002_broken.sql", "CREATE TABLE broken (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(pool, schema, load_migrations(tmp_path))
    tables = {r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)}
    assert "ok" not in tables
    assert "broken" not in tables


def test_duplicate_migration_names_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a", "001_x.sql", "SELECT 1;")
    _write(tmp_path / "b", "001_x.sql", "SELECT 2;")
    with pytest.raises(MigrationError, match="unique"):
        load_migrations(tmp_path / "a", tmp_path / "b")


async def test_database_down_at_start_retries_with_backoff_then_says_so(caplog: pytest.LogCaptureFixture) -> None:
    settings = DatabaseSettings(url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout_s=1.5)
    with caplog.at_level(logging.WARNING), pytest.raises(TransientError, match="PostgreSQL unreachable at"):
        await connect_with_retry(settings, "anything")
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert 2 <= len(retries) <= 6  # backoff, not a tight crash loop


async def test_kafka_down_at_start_retries_with_backoff_then_says_so(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", connect_timeout_s=1.5)
    with caplog.at_level(logging.WARNING), pytest.raises(TransientError, match="Kafka unreachable at"):
        await ensure_topics(settings)
    assert any("retrying in" in r.getMessage() for r in caplog.records)


async def test_database_that_comes_up_late_is_joined(caplog: pytest.LogCaptureFixture) -> None:
    """Start-up outlasts a database that is still starting: retries, then connects."""
    # Not under pytest's basetemp: another pytest session starting meanwhile chmods it to 0700,
    # and the server, which runs as another user, loses its data directory (as in conftest's stack).
    home = Path(tempfile.mkdtemp(prefix="driftloop-late-db-"))
    port = free_port()
    settings = DatabaseSettings(url=f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout_s=60)
    with caplog.at_level(logging.WARNING):
        connecting = asyncio.create_task(connect_with_retry(settings, "late_join"))
        await asyncio.sleep(1.0)
        assert not connecting.done()  # nothing listens yet: still retrying
        server = EmbeddedPostgres(home / "pgdata", port=port, durable=False)
        await asyncio.to_thread(server.start)
        try:
            pool = await asyncio.wait_for(connecting, 30)
            assert await pool.fetchval("SELECT current_schema()") == "late_join"
            await pool.close()
        finally:
            await asyncio.to_thread(server.stop)
            shutil.rmtree(home, ignore_errors=True)
    assert any("retrying in" in r.getMessage() for r in caplog.records)


async def test_a_pool_with_a_connection_never_released_still_closes(
    db_settings: DatabaseSettings, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Pool.close waits for every acquired connection; a service's stop must not wait for ever."""
    pool = await connect_with_retry(db_settings, schema)
    await pool.acquire()  # never released, like a listener cancelled mid-acquire
    with caplog.at_level(logging.WARNING, logger="libs.common.db"):
        await asyncio.wait_for(close_pool(pool, timeout_s=0.5), 10)
    assert pool.is_closing()
    assert "terminating" in caplog.text
