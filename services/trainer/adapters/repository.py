"""PostgreSQL access of the trainer: its dataset/model view and the job queue."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
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


async def record_batch(conn: Conn, name: str, version: int, rows: int, at: datetime) -> None:
    """Remember a version's batch: its rows and when ingest accepted them (for "rows since" counts)."""
    await conn.execute(
        "INSERT INTO dataset_batches (dataset, version, rows, created_at) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        name, version, rows, at,
    )  # fmt: skip


@dataclass(frozen=True)
class DatasetRows:
    """A dataset version's row counts, as the retrain policy decides with.

    Counted from the batches the trainer recorded off data.arrived; only when it missed some
    versions (it started after them) does it fall back to the version's manifest.
    """

    name: str
    version: int
    total: int
    manifest_ref: ArtifactRef
    manifest: DatasetManifest | None = None

    async def since(self, conn: Conn, moment: datetime) -> int:
        """Rows accepted at or after ``moment``."""
        if self.manifest is not None:
            return sum(b.rows for b in self.manifest.since(moment))
        counted = await conn.fetchval(
            "SELECT coalesce(sum(rows), 0) FROM dataset_batches WHERE dataset = $1 AND version <= $2 "
            "AND created_at >= $3",
            self.name, self.version, moment,
        )  # fmt: skip
        return int(counted)


async def counted_versions(conn: Conn, name: str, version: int) -> int:
    """How many of versions 1..``version`` the trainer recorded a batch for."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM dataset_batches WHERE dataset = $1 AND version <= $2", name, version
    ))  # fmt: skip


async def dataset(conn: Conn, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT name, version, total_rows, manifest FROM datasets WHERE name = $1", name)


async def ensure_model(conn: Conn, model: str, dataset_name: str) -> None:
    await conn.execute(
        "INSERT INTO models (name, dataset) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", model, dataset_name
    )


async def model_row(conn: Conn, model: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM models WHERE name = $1", model)


async def job(conn: Conn, job_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)


async def jobs(conn: Conn, *, model: str | None, status: str | None, limit: int) -> list[asyncpg.Record]:
    """Jobs, newest first, of ``model`` and in ``status`` when given."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM jobs WHERE ($1::text IS NULL OR model = $1) AND ($2::text IS NULL OR status = $2) "
        "ORDER BY created_at DESC LIMIT $3",
        model, status, limit,
    )  # fmt: skip
    return rows


async def models_of(conn: Conn, dataset_name: str) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM models WHERE dataset = $1", dataset_name)]


async def view(conn: Conn, model: str, rows: DatasetRows | None) -> ModelView:
    """The policy's view of ``model`` (locks the model row when inside a transaction)."""
    row = await conn.fetchrow("SELECT * FROM models WHERE name = $1 FOR UPDATE", model)
    if row is None:
        raise KeyError(model)
    active = await conn.fetchval(
        "SELECT trigger FROM jobs WHERE model = $1 AND status IN ('queued', 'running') LIMIT 1", model
    )
    since, horizon = row["drift_since"], row["horizon"]
    return ModelView(
        total_rows=rows.total if rows else 0,
        last_trained_rows=row["last_trained_rows"],
        active_job=active is not None,
        drift_since=since,
        rows_since_drift=await rows.since(conn, since) if rows and since else 0,
        last_drift_job_at=row["last_drift_job_at"],
        active_trigger=active,
        champion_version=row["champion_version"],
        drift_version=row["drift_version"],
        last_drift_version=row["last_drift_version"],
        horizon=horizon,
        rows_since_horizon=await rows.since(conn, horizon) if rows and horizon else 0,
    )


async def enqueue(
    conn: asyncpg.Connection,
    *,
    model: str,
    dataset_name: str,
    version: int,
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
        "correlation_id, trace_headers, quick) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        "ON CONFLICT (model) WHERE status IN ('queued', 'running') DO NOTHING RETURNING true",
        job_id, model, dataset_name, version, manifest_ref.model_dump_json(), decision.trigger.value,
        trigger_event_id, decision.reason, decision.since, correlation_id, json.dumps(trace_headers), decision.quick,
    )  # fmt: skip
    if not inserted:
        return None
    if decision.trigger.value == "drift":
        drift_trace = await conn.fetchval(
            "UPDATE models SET drift_since = NULL, drift_event_id = NULL, last_drift_job_at = now(), horizon = $2, "
            "last_drift_version = drift_version, drift_version = NULL, updated_at = now() WHERE name = $1 "
            "RETURNING (SELECT drift_trace FROM models WHERE name = $1)",
            model, decision.since,
        )  # fmt: skip
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


async def heartbeat(conn: Conn, job_id: uuid.UUID) -> bool:
    """Renew a running job's lease; False when the job is no longer running (cancelled or re-queued)."""
    renewed = await conn.fetchval(
        "UPDATE jobs SET heartbeat_at = now() WHERE id = $1 AND status = 'running' RETURNING true", job_id
    )
    return bool(renewed)


async def set_worker(conn: Conn, job_id: uuid.UUID, pid: int | None) -> None:
    await conn.execute("UPDATE jobs SET worker_pid = $2 WHERE id = $1", job_id, pid)


async def job_status(conn: Conn, job_id: uuid.UUID) -> str | None:
    status: str | None = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status


async def cancel_routine(conn: asyncpg.Connection, model: str, reason: str, routine: frozenset[str]) -> list[uuid.UUID]:
    """Cancel the model's queued or running routine job; its runner stops the worker (NOTIFY ``cancel:<id>``)."""
    rows = await conn.fetch(
        "UPDATE jobs SET status = 'cancelled', cancel_reason = $2, finished_at = now() "
        "WHERE model = $1 AND status IN ('queued', 'running') AND trigger = ANY($3::text[]) RETURNING id",
        model, reason[:4000], sorted(routine),
    )  # fmt: skip
    for row in rows:
        await conn.execute("SELECT pg_notify('driftloop_jobs_' || current_schema(), $1)", f"cancel:{row['id']}")
    return [row["id"] for row in rows]


async def clear_drift(conn: Conn, model: str) -> None:
    await conn.execute(
        "UPDATE models SET drift_since = NULL, drift_event_id = NULL, drift_version = NULL, updated_at = now() "
        "WHERE name = $1",
        model,
    )


async def models_with_kept_drift(conn: Conn) -> list[asyncpg.Record]:
    """Models holding an alarm that no queued or running job answers yet (the watcher re-plans them)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT name, dataset FROM models m WHERE drift_since IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM jobs j WHERE j.model = m.name AND j.status IN ('queued', 'running'))"
    )
    return rows


async def requeue_orphans(conn: Conn, lease_s: float, max_attempts: int) -> int:
    """Jobs whose worker stopped heart-beating go back to the queue (or fail for good)."""
    rows = await conn.fetch(
        "UPDATE jobs SET status = CASE WHEN attempts >= $2 THEN 'failed' ELSE 'queued' END, "
        "error = CASE WHEN attempts >= $2 THEN 'worker lost too many times' ELSE error END, "
        "finished_at = CASE WHEN attempts >= $2 THEN now() END, worker_pid = NULL "
        "WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) RETURNING id",
        lease_s, max_attempts,
    )  # fmt: skip
    return len(rows)


async def finish(
    conn: asyncpg.Connection, job_id: uuid.UUID, result: dict[str, Any], trained_rows: int, model: str
) -> bool:
    """Record a job's success; False (and nothing recorded) when it is no longer running: a cancelled
    job's result is never registered, even when its worker finished in the race window."""
    done = await conn.fetchval(
        "UPDATE jobs SET status = 'succeeded', result = $2, finished_at = now() WHERE id = $1 AND status = 'running' "
        "RETURNING true",
        job_id, json.dumps(result),
    )  # fmt: skip
    if not done:
        return False
    await conn.execute(
        "UPDATE models SET last_trained_rows = greatest(last_trained_rows, $2), updated_at = now() WHERE name = $1",
        model, trained_rows,
    )  # fmt: skip
    return True


async def export_state(conn: Conn, model: str, job_id: uuid.UUID, sha256: str) -> tuple[bool, bool]:
    """Whether ``model`` has a training job queued or running, and whether job ``job_id``'s model (``sha256``)
    is superseded: a job queued after it succeeded and the champion is another artifact."""
    row = await conn.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE model = $1 AND status IN ('queued', 'running')) AS busy, "
        "(EXISTS (SELECT 1 FROM jobs WHERE model = $1 AND status = 'succeeded' "
        "         AND created_at > (SELECT created_at FROM jobs WHERE id = $2)) "
        " AND (SELECT champion_artifact->>'sha256' FROM models WHERE name = $1) IS DISTINCT FROM $3) AS superseded",
        model, job_id, sha256,
    )  # fmt: skip
    return bool(row["busy"]), bool(row["superseded"])


async def record_export(conn: Conn, job_id: uuid.UUID, onnx: dict[str, Any], seconds: float | None) -> None:
    """The ONNX export made after the job's model.trained, and how long it took, in the job's result."""
    await conn.execute(
        "UPDATE jobs SET result = result || jsonb_build_object('onnx', $2::jsonb, 'export_seconds', $3::float8) "
        "WHERE id = $1",
        job_id, json.dumps(onnx), seconds,
    )  # fmt: skip


async def fail(conn: Conn, job_id: uuid.UUID, error: str, retry: bool) -> None:
    await conn.execute(
        "UPDATE jobs SET status = $2, error = $3, worker_pid = NULL, "
        "finished_at = CASE WHEN $2 = 'failed' THEN now() END WHERE id = $1 AND status = 'running'",
        job_id, "queued" if retry else "failed", error[:4000],
    )  # fmt: skip


async def set_champion(conn: Conn, model: str, version: int, artifact: ArtifactRef, dataset_name: str) -> None:
    await ensure_model(conn, model, dataset_name)
    await conn.execute(
        "UPDATE models SET champion_version = $2, champion_artifact = $3, updated_at = now() WHERE name = $1",
        model, version, artifact.model_dump_json(),
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO champions (model, version, artifact) VALUES ($1, $2, $3) "
        "ON CONFLICT (model, version) DO UPDATE SET artifact = $3, promoted_at = now()",
        model, version, artifact.model_dump_json(),
    )  # fmt: skip


async def earlier_champions(conn: Conn, model: str, current: int | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` earlier champions of ``model`` for a drift job to score, each a pipeline of its own.

    Only versions older than ``current`` (the champion now): a newer one (before a rollback) may have
    trained on the rows the drift job holds out, and would win there unfairly. One entry per pipeline (a
    version that reused an earlier one's pipeline is that pipeline), and never the current champion's.
    Those that were serving when a drift job was queued come first, newest first: each is the fullest
    model of a concept that then changed, the one to serve if that concept returns; after a drift the
    post-drift refreshes of one concept would otherwise fill every place. Then the rest, newest first.
    """
    rows = await conn.fetch(
        "SELECT c.version, c.artifact, c.promoted_at, EXISTS ("
        "  SELECT 1 FROM jobs j WHERE j.model = $1 AND j.trigger = 'drift' AND j.created_at > c.promoted_at"
        "  AND NOT EXISTS (SELECT 1 FROM champions n WHERE n.model = $1"
        "                  AND n.promoted_at > c.promoted_at AND n.promoted_at < j.created_at)"
        ") AS ended FROM champions c "
        "WHERE c.model = $1 AND ($2::int IS NULL OR c.version < $2) "
        "AND c.artifact->>'sha256' IS DISTINCT FROM (SELECT champion_artifact->>'sha256' FROM models WHERE name = $1)",
        model, current,
    )  # fmt: skip
    return [{"version": r["version"], "artifact": json.loads(r["artifact"])} for r in pick_earlier(rows, limit)]


def pick_earlier(rows: list[Any], limit: int) -> list[Any]:
    """``earlier_champions``'s choice among its rows (version, artifact, promoted_at, ended): the newest
    row per pipeline, ended if any of its versions ended a concept; the ended first, each group newest first."""
    newest: dict[str, Any] = {}
    ended: set[str] = set()
    for row in rows:
        sha = json.loads(row["artifact"])["sha256"]
        if sha not in newest or row["promoted_at"] > newest[sha]["promoted_at"]:
            newest[sha] = row
        if row["ended"]:
            ended.add(sha)
    ranked = sorted(newest.items(), key=lambda kv: (kv[0] in ended, kv[1]["promoted_at"]), reverse=True)
    return [row for _, row in ranked[:limit]]


async def mark_drift(
    conn: Conn, model: str, since: datetime, event_id: uuid.UUID, trace: dict[str, str], version: int | None = None
) -> None:
    await conn.execute(
        "UPDATE models SET drift_since = $2, drift_event_id = $3, drift_trace = $4, drift_version = $5, "
        "updated_at = now() WHERE name = $1",
        model, since, event_id, json.dumps(trace), version,
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
        "quick": row["quick"],
        "status": row["status"],
        "attempts": row["attempts"],
        "error": row["error"],
        "cancel_reason": row["cancel_reason"],
        "worker_pid": row["worker_pid"],
        "metrics": result["metrics"] if result else None,
        "champion_metrics": result["champion_metrics"] if result else None,
        "training_rows": result.get("training_rows") if result else None,
        "holdout_rows": result.get("holdout_rows") if result else None,
        "search": result.get("search") if result else None,
        "reused_version": result.get("reused_version") if result else None,
        "stages": result.get("stages") if result else None,
        "onnx": result.get("onnx") if result else None,
        "export_seconds": result.get("export_seconds") if result else None,
        "created_at": row["created_at"].isoformat(),
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }
