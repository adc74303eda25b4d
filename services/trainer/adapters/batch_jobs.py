"""PostgreSQL access of batch predictions: the job queue, its leases, and each job's finished chunks."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from libs.common.events import ArtifactRef
from services.trainer.adapters.repository import Conn


async def enqueue(conn: Conn, job: dict[str, Any]) -> asyncpg.Record:
    """Queue a batch job (``job``: the columns of a new row) and wake the runners."""
    row: asyncpg.Record = await conn.fetchrow(
        "INSERT INTO batch_jobs (id, model, version, alias, artifact, dataset_schema, input, total_rows, chunk_rows, "
        "chunks, requested_by, correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *",
        job["id"], job["model"], job["version"], job["alias"], json.dumps(job["artifact"]),
        json.dumps(job["dataset_schema"]), json.dumps(job["input"]), job["total_rows"], job["chunk_rows"],
        job["chunks"], job["requested_by"], job.get("correlation_id"),
    )  # fmt: skip
    await conn.execute("SELECT pg_notify('driftloop_batch_' || current_schema(), '')")
    return row


async def claim(conn: Conn) -> asyncpg.Record | None:
    """Take the oldest queued job (SKIP LOCKED: two runners never take the same one); note where it resumes."""
    return await conn.fetchrow(
        "UPDATE batch_jobs j SET status = 'running', started_at = coalesce(started_at, now()), heartbeat_at = now(), "
        "attempts = attempts + 1, resumed_at = resumed_at || "
        "(SELECT count(*)::int FROM batch_chunks c WHERE c.job_id = j.id) "
        "WHERE id = (SELECT id FROM batch_jobs WHERE status = 'queued' ORDER BY created_at "
        "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING *"
    )


async def done_chunks(conn: Conn, job_id: uuid.UUID) -> dict[int, ArtifactRef]:
    rows = await conn.fetch("SELECT seq, artifact FROM batch_chunks WHERE job_id = $1 ORDER BY seq", job_id)
    return {r["seq"]: ArtifactRef.model_validate_json(r["artifact"]) for r in rows}


async def chunk_done(conn: Conn, job_id: uuid.UUID, seq: int, rows: int, artifact: dict[str, Any]) -> bool:
    """Record a finished chunk and renew the lease, in one statement; False when the job is no longer
    running (cancelled through the API, or its lease lost: another runner owns it now); this chunk is
    then not recorded."""
    return bool(await conn.fetchval(
        "WITH live AS (UPDATE batch_jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'running' RETURNING id), "
        "added AS (INSERT INTO batch_chunks (job_id, seq, rows, artifact) SELECT id, $2, $3, $4 FROM live "
        "ON CONFLICT DO NOTHING) SELECT count(*) > 0 FROM live",
        job_id, seq, rows, json.dumps(artifact),
    ))  # fmt: skip


async def heartbeat(conn: Conn, job_id: uuid.UUID) -> bool:
    renewed = await conn.fetchval(
        "UPDATE batch_jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'running' RETURNING true", job_id
    )
    return bool(renewed)


async def set_worker(conn: Conn, job_id: uuid.UUID, pid: int | None) -> None:
    await conn.execute("UPDATE batch_jobs SET worker_pid = $2 WHERE id = $1", job_id, pid)


async def succeed(conn: asyncpg.Connection, job_id: uuid.UUID, output: dict[str, Any]) -> asyncpg.Record | None:
    """Mark the job succeeded with its output; None when it was not running here any more."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE batch_jobs SET status = 'succeeded', output = $2, finished_at = now(), worker_pid = NULL "
        "WHERE id = $1 AND status = 'running' RETURNING *",
        job_id, json.dumps(output),
    )  # fmt: skip
    return row


async def fail(conn: Conn, job_id: uuid.UUID, error: str, *, retry: bool) -> asyncpg.Record | None:
    """Back to the queue (``retry``) or failed for good; None when it was not running here any more."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE batch_jobs SET status = $2, error = $3, worker_pid = NULL, "
        "finished_at = CASE WHEN $2 = 'failed' THEN now() END WHERE id = $1 AND status = 'running' RETURNING *",
        job_id, "queued" if retry else "failed", error[:4000],
    )  # fmt: skip
    return row


async def cancel(conn: asyncpg.Connection, job_id: uuid.UUID, reason: str) -> asyncpg.Record | None:
    """Cancel a queued or running job and tell the runners (NOTIFY ``cancel:<id>``: the one running it kills
    its worker at once); None when the job is not queued or running (the caller says why)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE batch_jobs SET status = 'cancelled', cancel_reason = $2, finished_at = now(), worker_pid = NULL "
        "WHERE id = $1 AND status IN ('queued', 'running') RETURNING *",
        job_id, reason[:500],
    )  # fmt: skip
    if row is not None:
        await conn.execute("SELECT pg_notify('driftloop_batch_' || current_schema(), $1)", f"cancel:{job_id}")
    return row


async def hand_back(conn: Conn, job_ids: list[uuid.UUID]) -> None:
    """Jobs interrupted by a stop go back to the queue at once (the attempt does not count)."""
    await conn.execute(
        "UPDATE batch_jobs SET status = 'queued', attempts = greatest(attempts - 1, 0), worker_pid = NULL "
        "WHERE id = ANY($1::uuid[]) AND status = 'running'",
        job_ids,
    )


async def requeue_orphans(conn: Conn, lease_s: float, max_attempts: int) -> list[asyncpg.Record]:
    """Jobs whose runner stopped renewing the lease go back to the queue (or fail for good)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "UPDATE batch_jobs SET status = CASE WHEN attempts >= $2 THEN 'failed' ELSE 'queued' END, "
        "error = CASE WHEN attempts >= $2 THEN 'worker lost too many times' ELSE error END, "
        "finished_at = CASE WHEN attempts >= $2 THEN now() END, worker_pid = NULL "
        "WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) RETURNING *",
        lease_s, max_attempts,
    )  # fmt: skip
    return rows


async def job(conn: Conn, job_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM batch_jobs WHERE id = $1", job_id)


async def progress(conn: Conn, job_id: uuid.UUID) -> tuple[int, int]:
    """Chunks and rows finished so far."""
    row = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(rows), 0) AS r FROM batch_chunks WHERE job_id = $1",
                              job_id)  # fmt: skip
    return int(row["n"]), int(row["r"])


async def jobs(conn: Conn, *, model: str | None, status: str | None, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM batch_jobs WHERE ($1::text IS NULL OR model = $1) AND ($2::text IS NULL OR status = $2) "
        "ORDER BY created_at DESC LIMIT $3",
        model, status, limit,
    )  # fmt: skip
    return rows


def job_out(row: asyncpg.Record, chunks_done: int, rows_done: int) -> dict[str, Any]:
    """A job as the API shows it, with its progress."""
    output = json.loads(row["output"]) if row["output"] else None
    return {
        "id": str(row["id"]),
        "model": row["model"],
        "version": row["version"],
        "alias": row["alias"],
        "input": {k: v for k, v in json.loads(row["input"]).items() if k != "segments"},  # segments: internal
        "status": row["status"],
        "total_rows": row["total_rows"],
        "rows_done": rows_done,
        "chunks": row["chunks"],
        "chunks_done": chunks_done,
        "chunk_rows": row["chunk_rows"],
        "progress": round(rows_done / row["total_rows"], 4) if row["total_rows"] else 1.0,
        "attempts": row["attempts"],
        "resumed_at_chunk": list(row["resumed_at"]),
        "output": output,
        "error": row["error"],
        "cancel_reason": row["cancel_reason"],
        "worker_pid": row["worker_pid"],
        "requested_by": row["requested_by"],
        "created_at": row["created_at"].isoformat(),
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }
