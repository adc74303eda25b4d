"""Which of the trainer's artifacts are in use, for the artifact GC (libs/common/retention.py).

A job's worker writes its model (``.skops``), reference profile (``.profile.json``)
and holdout (``.holdout.parquet``), and the ONNX export after it (``.onnx``). In use:
every artifact a job's recorded result names (at any depth, so a field added to the
result later is covered) and each model's champion. A job that failed or was cancelled
records no result: its files are collected once the grace period has passed.

Batch jobs write their chunks' predictions and their output (``.predictions.parquet``)
and keep an uploaded input (``.batch-input.parquet``). In use: a queued or running job's
upload and finished chunks (it resumes from them), a succeeded job's output and upload.
Collected: a succeeded job's chunks (its output holds their rows), every file of a failed
or cancelled job, and a finished job's output once its row is pruned, ``batch_jobs_days``
after it ended (:data:`RULES`).
"""

from __future__ import annotations

import asyncpg

from libs.common.retention import ArtifactUse, RetentionSettings, Rule

NAMESPACE = "trainer"
"""Where the trainer and its worker processes write in the artifact store (the service's name)."""


async def in_use(db: asyncpg.Pool, settings: RetentionSettings) -> set[str]:
    rows = await db.fetch(
        "SELECT jsonb_path_query(result, 'lax $.**.sha256') #>> '{}' AS digest FROM jobs WHERE result IS NOT NULL "
        "UNION SELECT champion_artifact ->> 'sha256' FROM models WHERE champion_artifact IS NOT NULL"
    )
    return {r["digest"] for r in rows if r["digest"]} | await batch_in_use(db)


async def batch_in_use(db: asyncpg.Pool) -> set[str]:
    rows = await db.fetch(
        "SELECT d.digest FROM batch_jobs j, LATERAL (VALUES (j.output ->> 'sha256'), "
        "(j.input -> 'upload' ->> 'sha256')) AS d (digest) WHERE j.status IN ('queued', 'running', 'succeeded') "
        "UNION SELECT c.artifact ->> 'sha256' FROM batch_chunks c JOIN batch_jobs j ON j.id = c.job_id "
        "WHERE j.status IN ('queued', 'running')"
    )
    return {r["digest"] for r in rows if r["digest"]}


ARTIFACTS = ArtifactUse(
    suffixes=(".skops", ".profile.json", ".holdout.parquet", ".onnx", ".predictions.parquet", ".batch-input.parquet"),
    in_use=in_use,
)

RULES = (Rule("batch_jobs", "finished_at", "batch_jobs_days", only="status IN ('succeeded', 'failed', 'cancelled')"),)
"""Finished batch jobs go with their chunks rows (ON DELETE CASCADE); their files follow in the same pass."""
