"""PostgreSQL access of scheduled retraining: the schedules and their claim when due."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from services.trainer.adapters.repository import Conn


async def put(
    conn: Conn, *, model: str, dataset: str, cron: str, next_run_at: datetime, source: str, actor: str
) -> asyncpg.Record:
    """Create or replace ``model``'s schedule (its next run starts over from the new expression)."""
    row: asyncpg.Record = await conn.fetchrow(
        "INSERT INTO schedules (model, dataset, cron, source, next_run_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (model) DO UPDATE SET dataset = $2, cron = $3, source = $4, next_run_at = $5, updated_by = $6, "
        "updated_at = now() RETURNING *",
        model, dataset, cron, source, next_run_at, actor,
    )  # fmt: skip
    return row


async def put_from_settings(conn: Conn, *, model: str, dataset: str, cron: str, next_run_at: datetime) -> bool:
    """Create ``model``'s schedule from the settings, or replace one that came from them with another
    expression; one registered through the API is left alone, in the same statement (a PUT that lands
    while the settings are applied is never overwritten). Whether anything was written."""
    written = await conn.fetchval(
        "INSERT INTO schedules (model, dataset, cron, source, next_run_at, updated_by) "
        "VALUES ($1, $2, $3, 'setting', $4, 'settings') "
        "ON CONFLICT (model) DO UPDATE SET dataset = $2, cron = $3, next_run_at = $4, updated_at = now() "
        "WHERE schedules.source = 'setting' AND schedules.cron <> $3 RETURNING true",
        model, dataset, cron, next_run_at,
    )  # fmt: skip
    return bool(written)


async def get(conn: Conn, model: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM schedules WHERE model = $1", model)


async def all_(conn: Conn) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM schedules ORDER BY model")
    return rows


async def delete(conn: Conn, model: str) -> bool:
    return bool(await conn.fetchval("DELETE FROM schedules WHERE model = $1 RETURNING true", model))


async def claim_due(conn: asyncpg.Connection, now: datetime) -> asyncpg.Record | None:
    """One schedule due at ``now``, locked for this transaction (another replica skips it)."""
    return await conn.fetchrow(
        "SELECT * FROM schedules WHERE next_run_at <= $1 ORDER BY next_run_at FOR UPDATE SKIP LOCKED LIMIT 1", now
    )


async def fired(
    conn: asyncpg.Connection, model: str, *, at: datetime, next_run_at: datetime, job_id: uuid.UUID | None, outcome: str
) -> None:
    """Record a firing and move the schedule to its next time, in the claiming transaction."""
    await conn.execute(
        "UPDATE schedules SET last_run_at = $2, next_run_at = $3, last_job_id = coalesce($4, last_job_id), "
        "last_outcome = $5 WHERE model = $1",
        model, at, next_run_at, job_id, outcome[:2000],
    )  # fmt: skip


def out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "model": row["model"],
        "dataset": row["dataset"],
        "cron": row["cron"],
        "source": row["source"],
        "next_run_at": row["next_run_at"].isoformat(),
        "last_run_at": row["last_run_at"].isoformat() if row["last_run_at"] else None,
        "last_job_id": str(row["last_job_id"]) if row["last_job_id"] else None,
        "last_outcome": row["last_outcome"],
        "updated_by": row["updated_by"],
        "updated_at": row["updated_at"].isoformat(),
    }
