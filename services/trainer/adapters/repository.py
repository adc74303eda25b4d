"""PostgreSQL access of the trainer: its dataset/model view and the job queue."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from libs.common.datasets import DatasetManifest
from libs.common.events import ArtifactRef
from services.trainer.domain.policy import Decision, ModelView

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def upsert_dataset(conn: Conn, name: str, version: int, total_rows: int, manifest: ArtifactRef) -> bool:
    """Record a dataset version if it is newer than the one known; True if it was."""
    updated = await conn.fetchval(
        "INSERT INTO datasets (name, version, total_rows, manifest) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (name) DO UPDATE SET version = $2, total_rows = $3, manifest = $4, updated_at = now() "
        "WHERE datasets.version < $2 RETURNING true",
        name, version, total_rows, manifest.model_dump_json(),
    )  # fmt: skip
    return bool(updated)


async def dataset(conn: Conn, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT name, version, total_rows, manifest FROM datasets WHERE name = $1", name)


async def ensure_model(conn: Conn, model: str, dataset_name: str) -> None:
    await conn.execute(
        "INSERT INTO models (name, dataset) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", model, dataset_name
    )


async def models_of(conn: Conn, dataset_name: str) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM models WHERE dataset = $1", dataset_name)]


async def view(conn: Conn, model: str, manifest: DatasetManifest | None) -> ModelView:
    """The policy's view of ``model`` (locks the model row when inside a transaction)."""
    row = await conn.fetchrow("SELECT * FROM models WHERE name = $1 FOR UPDATE", model)
    if row is None:
        raise KeyError(model)
    active = await conn.fetchval(
        "SELECT exists(SELECT 1 FROM jobs WHERE model = $1 AND status IN ('queued', 'running'))", model
    )
    since = row["drift_since"]
    return ModelView(
        total_rows=manifest.total_rows if manifest else 0,
        last_trained_rows=row["last_trained_rows"],
        active_job=bool(active),
        drift_since=since,
        rows_since_drift=sum(b.rows for b in manifest.since(since)) if manifest and since else 0,
        last_drift_job_at=row["last_drift_job_at"],
    )


async def enqueue(
    conn: asyncpg.Connection,
    *,
    model: str,
    dataset_name: str,
    manifest: DatasetManifest,
    manifest_ref: ArtifactRef,
    decision: Decision,
    trigger_event_id: uuid.UUID | None,
    correlation_id: str | None,
    trace_headers: dict[str, str],
) -> uuid.UUID | None:
    """Queue a job; None if the model already has an active one (the unique index decides)."""
    assert decision.trigger is not None
    job_id = uuid.uuid4()
    inserted = await conn.fetchval(
        "INSERT INTO jobs (id, model, dataset, dataset_version, manifest, trigger, trigger_event_id, reason, since, "
        "correlation_id, trace_headers) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
        "ON CONFLICT (model) WHERE status IN ('queued', 'running') DO NOTHING RETURNING true",
        job_id, model, dataset_name, manifest.version, manifest_ref.model_dump_json(), decision.trigger.value,
        trigger_event_id, decision.reason, decision.since, correlation_id, json.dumps(trace_headers),
    )  # fmt: skip
    if not inserted:
        return None
    if decision.trigger.value == "drift":
        drift_trace = await conn.fetchval(
            "UPDATE models SET drift_since = NULL, drift_event_id = NULL, last_drift_job_at = now(), "
            "updated_at = now() WHERE name = $1 RETURNING (SELECT drift_trace FROM models WHERE name = $1)",
            model,
        )
        if drift_trace:
            await conn.execute("UPDATE jobs SET link_headers = jsonb_build_array($2::jsonb) WHERE id = $1",
                               job_id, drift_trace)  # fmt: skip
    await conn.execute("SELECT pg_notify('driftloop_jobs_' || current_schema(), '')")
    return job_id


async def claim(conn: Conn) -> asyncpg.Record | None:
    """Take the oldest queued job (SKIP LOCKED: workers never take the same one)."""
    return await conn.fetchrow(
        "UPDATE jobs SET status = 'running', started_at = now(), heartbeat_at = now(), attempts = attempts + 1 "
        "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) "
        "RETURNING *"
    )


async def heartbeat(conn: Conn, job_id: uuid.UUID) -> None:
    await conn.execute("UPDATE jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'running'", job_id)


async def requeue_orphans(conn: Conn, lease_s: float, max_attempts: int) -> int:
    """Jobs whose worker stopped heart-beating go back to the queue (or fail for good)."""
    rows = await conn.fetch(
        "UPDATE jobs SET status = CASE WHEN attempts >= $2 THEN 'failed' ELSE 'queued' END, "
        "error = CASE WHEN attempts >= $2 THEN 'worker lost too many times' ELSE error END, "
        "finished_at = CASE WHEN attempts >= $2 THEN now() END "
        "WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) RETURNING id",
        lease_s, max_attempts,
    )  # fmt: skip
    return len(rows)


async def finish(
    conn: asyncpg.Connection, job_id: uuid.UUID, result: dict[str, Any], trained_rows: int, model: str
) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'succeeded', result = $2, finished_at = now() WHERE id = $1",
        job_id, json.dumps(result),
    )  # fmt: skip
    await conn.execute(
        "UPDATE models SET last_trained_rows = greatest(last_trained_rows, $2), updated_at = now() WHERE name = $1",
        model, trained_rows,
    )  # fmt: skip


async def fail(conn: Conn, job_id: uuid.UUID, error: str, retry: bool) -> None:
    await conn.execute(
        "UPDATE jobs SET status = $2, error = $3, finished_at = CASE WHEN $2 = 'failed' THEN now() END WHERE id = $1",
        job_id, "queued" if retry else "failed", error[:4000],
    )  # fmt: skip


async def set_champion(conn: Conn, model: str, version: int, artifact: ArtifactRef, dataset_name: str) -> None:
    await ensure_model(conn, model, dataset_name)
    await conn.execute(
        "UPDATE models SET champion_version = $2, champion_artifact = $3, updated_at = now() WHERE name = $1",
        model, version, artifact.model_dump_json(),
    )  # fmt: skip


async def mark_drift(conn: Conn, model: str, since: datetime, event_id: uuid.UUID, trace: dict[str, str]) -> None:
    await conn.execute(
        "UPDATE models SET drift_since = $2, drift_event_id = $3, drift_trace = $4, updated_at = now() WHERE name = $1",
        model, since, event_id, json.dumps(trace),
    )  # fmt: skip


def job_out(row: asyncpg.Record) -> dict[str, Any]:
    result = json.loads(row["result"]) if row["result"] else None
    return {
        "id": str(row["id"]),
        "model": row["model"],
        "dataset": row["dataset"],
        "dataset_version": row["dataset_version"],
        "trigger": row["trigger"],
        "reason": row["reason"],
        "since": row["since"].isoformat() if row["since"] else None,
        "status": row["status"],
        "attempts": row["attempts"],
        "error": row["error"],
        "metrics": result["metrics"] if result else None,
        "champion_metrics": result["champion_metrics"] if result else None,
        "search": result.get("search") if result else None,
        "created_at": row["created_at"].isoformat(),
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }
