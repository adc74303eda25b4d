"""PostgreSQL access: a pool per service schema, retried at start-up, and a
migration runner for plain ``.sql`` files.

Each service owns one schema and never reads another's. The pool sets
``search_path`` to that schema, so migrations and queries name tables without
a schema prefix, and a test can run a whole service in a fresh schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from libs.common.errors import MigrationError
from libs.common.retry import retry_with_backoff
from libs.common.settings import DatabaseSettings

log = logging.getLogger(__name__)

COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _check_schema(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


async def connect_with_retry(settings: DatabaseSettings, schema: str) -> asyncpg.Pool:
    """Create the schema if needed and open a pool on it.

    A database that is down at start-up is retried with exponential backoff
    (one log line per attempt) until ``settings.connect_timeout_s``; then a
    :class:`TransientError` says where it tried.
    """
    _check_schema(schema)

    async def attempt() -> asyncpg.Pool:
        conn = await asyncpg.connect(settings.url, timeout=5)
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        finally:
            await conn.close()
        pool: asyncpg.Pool = await asyncpg.create_pool(
            settings.url,
            min_size=settings.min_pool_size,
            max_size=settings.max_pool_size,
            server_settings={"search_path": schema, "application_name": f"driftloop-{schema}"},
        )
        return pool

    return await retry_with_backoff(
        attempt,
        name="PostgreSQL",
        where=_redact(settings.url),
        timeout_s=settings.connect_timeout_s,
        errors=(TimeoutError, OSError, asyncpg.PostgresError),
    )


async def close_pool(pool: asyncpg.Pool, timeout_s: float = 10.0) -> None:
    """Close ``pool`` gracefully, or terminate it after ``timeout_s``.

    ``Pool.close`` waits for every acquired connection to be released; one that is never
    released (a listener whose task was cancelled mid-acquire, a request cut off by the stop)
    would hang the service's shutdown forever, so a stop is bounded and then forced.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await pool.close()
    except TimeoutError:
        log.warning("PostgreSQL pool did not close in %.0fs; terminating its connections", timeout_s)
        pool.terminate()


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(*directories: Path) -> list[Migration]:
    """Every ``.sql`` file of the directories, ordered by file name.

    The shared migrations (outbox, processed events) use ``000_`` names;
    a service's start at ``001_``. Two files with one name are refused.
    """
    files = sorted((p for d in directories for p in d.glob("*.sql")), key=lambda p: p.name)
    names = [p.name for p in files]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MigrationError(f"migration names must be unique, repeated: {repeated}")
    return [Migration(p.name, p.read_text()) for p in files]


async def migrate(pool: asyncpg.Pool, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply pending migrations in order; return the names applied now.

    A transaction-scoped advisory lock keyed on the schema serialises replicas
    starting together, so no two apply the same file. An applied file whose
    checksum has since changed is refused: history is never rewritten, a
    change is a new file.
    """
    _check_schema(schema)
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"driftloop.migrate.{schema}")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        for migration in migrations:
            recorded = done.get(migration.name)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} in schema {schema} was changed after it was applied "
                        f"(recorded sha256 {recorded[:12]}…, file {migration.checksum[:12]}…); "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", migration.name, migration.checksum
            )
            applied_now.append(migration.name)
    if applied_now:
        log.info("migrations applied", extra={"schema": schema, "migrations": applied_now})
    return applied_now
