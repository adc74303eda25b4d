"""Which of ingest's artifacts are in use, for the artifact GC (libs/common/retention.py).

Ingest writes batch files and compacted segments (``.parquet``) and manifests
(``.manifest.json``). In use: every manifest (versions are never pruned), every
current segment (what the next version lists), and what the manifests of versions
younger than ``superseded_batches_days`` list: the batch files of those versions and
the segments compaction replaced since then (``superseded_segments``, recorded by a
trigger: every version listing a replaced segment was written before it was replaced).
"""

from __future__ import annotations

import asyncpg

from libs.common.retention import DAY_S, ArtifactUse, RetentionSettings


async def in_use(db: asyncpg.Pool, settings: RetentionSettings) -> set[str]:
    days = settings.superseded_batches_days
    rows = await db.fetch(
        "SELECT sha256 AS digest FROM segments "
        "UNION SELECT manifest_sha256 FROM versions "
        "UNION SELECT batch_sha256 FROM versions "
        "WHERE $1::float8 IS NULL OR created_at >= now() - make_interval(secs => $1) "
        "UNION SELECT sha256 FROM superseded_segments "
        "WHERE $1::float8 IS NULL OR superseded_at >= now() - make_interval(secs => $1)",
        days * DAY_S if days is not None else None,
    )
    return {r["digest"] for r in rows}


ARTIFACTS = ArtifactUse(suffixes=(".parquet", ".manifest.json"), in_use=in_use)
