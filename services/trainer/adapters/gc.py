"""Which of the trainer's artifacts are in use, for the artifact GC (libs/common/retention.py).

A job's worker writes its model (``.skops``), reference profile (``.profile.json``)
and holdout (``.holdout.parquet``), and the ONNX export after it (``.onnx``). In use:
every artifact a job's recorded result names (at any depth, so a field added to the
result later is covered) and each model's champion. A job that failed or was cancelled
records no result: its files are collected once the grace period has passed.
"""

from __future__ import annotations

import asyncpg

from libs.common.retention import ArtifactUse, RetentionSettings

NAMESPACE = "trainer"
"""Where the trainer and its worker processes write in the artifact store (the service's name)."""


async def in_use(db: asyncpg.Pool, settings: RetentionSettings) -> set[str]:
    rows = await db.fetch(
        "SELECT jsonb_path_query(result, 'lax $.**.sha256') #>> '{}' AS digest FROM jobs WHERE result IS NOT NULL "
        "UNION SELECT champion_artifact ->> 'sha256' FROM models WHERE champion_artifact IS NOT NULL"
    )
    return {r["digest"] for r in rows if r["digest"]}


ARTIFACTS = ArtifactUse(suffixes=(".skops", ".profile.json", ".holdout.parquet", ".onnx"), in_use=in_use)
