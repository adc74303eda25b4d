"""PostgreSQL and artifact-store access of the ingest service."""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.common import outbox
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import BatchEntry, DatasetManifest, batch_to_parquet
from libs.common.errors import NotFound
from libs.common.events import ArtifactRef, DataArrived
from libs.common.jsonbody import off_loop
from libs.common.schema import DatasetSchema
from services.ingest.domain.validation import Rejection


@dataclass(frozen=True)
class StoredSubmission:
    submission_id: uuid.UUID
    accepted: int
    rejected: int
    version: int | None
    total_rows: int
    rejections: list[Rejection] = field(default_factory=list)
    """Every rejected row: the request's own, and those whose key was stored before."""


async def get_schema(conn: asyncpg.Connection | asyncpg.Pool, dataset: str) -> DatasetSchema:
    raw = await conn.fetchval("SELECT schema FROM datasets WHERE name = $1", dataset)
    if raw is None:
        raise NotFound(f"dataset {dataset!r} is not declared; PUT /v1/datasets/{dataset} first", dataset=dataset)
    return await parse_schema(raw)


async def parse_schema(raw: str) -> DatasetSchema:
    """The stored schema, parsed once per distinct text and off the event loop when large
    (a schema of 10⁵ features takes seconds to validate)."""
    return await off_loop(len(raw), _parse_cached, raw)


@functools.lru_cache(maxsize=32)
def _parse_cached(raw: str) -> DatasetSchema:
    return DatasetSchema.model_validate_json(raw)


async def store_submission(
    conn: asyncpg.Connection,
    store: ArtifactStore,
    *,
    dataset: str,
    accepted: list[dict[str, Any]],
    rejected: list[Rejection],
    source: str,
    producer: str = "ingest",
    correlation_id: str | None = None,
    principal: str | None = None,
    trusted: bool | None = None,
    written: list[ArtifactRef] | None = None,
    keys: list[tuple[int, str, Any]] | None = None,
) -> StoredSubmission:
    """Record one submission inside the caller's transaction.

    Accepted rows become the next dataset version (batch Parquet + manifest,
    both content-addressed) and a ``data.arrived`` event in the outbox;
    rejected rows are kept with their reasons. The dataset row is locked so
    concurrent submissions get consecutive versions. The artifacts written are
    appended to ``written`` (see :func:`discard_on_error`).
    """
    written = [] if written is None else written
    head = await conn.fetchrow(
        "SELECT schema, last_version, total_rows FROM datasets WHERE name = $1 FOR UPDATE", dataset
    )
    if head is None:
        raise NotFound(f"dataset {dataset!r} is not declared", dataset=dataset)
    schema = await parse_schema(head["schema"])
    if keys:
        accepted, rejected = await _refuse_stored_keys(conn, dataset, schema.key, accepted, rejected, keys)
    submission_id = uuid.uuid4()
    version: int | None = None
    total = int(head["total_rows"])
    if accepted:
        version = head["last_version"] + 1
        now = datetime.now(UTC)
        batch = store.put(batch_to_parquet(schema, accepted, now), suffix=".parquet")
        written.append(batch)
        entries = [_entry(r) for r in await conn.fetch(
            "SELECT version, batch_uri, batch_sha256, batch_size, rows, created_at, principal, trusted FROM versions "
            "WHERE dataset = $1 ORDER BY version", dataset)]  # fmt: skip
        entries.append(BatchEntry(seq=version, artifact=batch, rows=len(accepted), created_at=now,
                                  principal=principal, trusted=trusted))  # fmt: skip
        manifest_doc = DatasetManifest(dataset=dataset, version=version, dataset_schema=schema, batches=entries)
        manifest = store.put(manifest_doc.model_dump_json().encode(), suffix=".manifest.json")
        written.append(manifest)
        total += len(accepted)
        await conn.execute(
            "INSERT INTO versions (dataset, version, batch_uri, batch_sha256, batch_size, rows, manifest_uri, "
            "manifest_sha256, manifest_size, total_rows, created_at, principal, trusted) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            dataset, version, batch.uri, batch.sha256, batch.size, len(accepted),
            manifest.uri, manifest.sha256, manifest.size, total, now, principal, trusted,
        )  # fmt: skip
        await conn.execute(
            "UPDATE datasets SET last_version = $2, total_rows = $3, updated_at = now() WHERE name = $1",
            dataset, version, total,
        )  # fmt: skip
        await outbox.add(
            conn,
            DataArrived(
                producer=producer,
                correlation_id=correlation_id or str(submission_id),
                dataset=dataset,
                version=version,
                batch=batch,
                manifest=manifest,
                rows_accepted=len(accepted),
                rows_rejected=len(rejected),
                total_rows=total,
                dataset_schema=schema,
                principal=principal,
                trusted=trusted,
            ),
        )
    await conn.execute(
        "INSERT INTO submissions (id, dataset, source, received, accepted, rejected, version) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        submission_id, dataset, source, len(accepted) + len(rejected), len(accepted), len(rejected), version,
    )  # fmt: skip
    if rejected:
        await conn.copy_records_to_table(
            "rejections",
            columns=["dataset", "submission_id", "row_index", "field", "reason", "record"],
            records=[(dataset, submission_id, r.row, r.field, r.reason, _as_json(r.record)) for r in rejected],
        )
    return StoredSubmission(submission_id, len(accepted), len(rejected), version, total, rejected)


async def _refuse_stored_keys(
    conn: asyncpg.Connection, dataset: str, column: str | None, accepted: list[dict[str, Any]],
    rejected: list[Rejection], keys: list[tuple[int, str, Any]],
) -> tuple[list[dict[str, Any]], list[Rejection]]:  # fmt: skip
    """Record the keys of ``accepted`` (one per row); rows whose key an earlier submission stored become rejections."""
    fresh = {r["key"] for r in await conn.fetch(
        "INSERT INTO record_keys (dataset, key) SELECT $1, k FROM unnest($2::text[]) AS k ON CONFLICT DO NOTHING "
        "RETURNING key", dataset, [key for _, key, _ in keys])}  # fmt: skip
    if len(fresh) == len(keys):
        return accepted, rejected
    kept, refused = [], list(rejected)
    for row, (index, key, record) in zip(accepted, keys, strict=True):
        if key in fresh:
            kept.append(row)
        else:
            refused.append(Rejection(index, column, f"duplicate key {key!r}: an earlier submission stored it", record))
    return kept, sorted(refused, key=lambda r: r.row)


@contextlib.asynccontextmanager
async def discard_on_error(store: ArtifactStore) -> AsyncIterator[list[ArtifactRef]]:
    """Collects the artifacts a submission writes and deletes them if the block fails.

    Used inside the transaction (``async with conn.transaction(), discard_on_error(store)``):
    an error in the block means the rows that would reference the files are
    rolled back, so the files go too. A failure of the COMMIT itself leaves
    them: the rows may have been committed with the answer lost.
    """
    written: list[ArtifactRef] = []
    try:
        yield written
    except BaseException:
        for ref in written:
            store.delete(ref)
        raise


def _entry(row: asyncpg.Record) -> BatchEntry:
    return BatchEntry(
        seq=row["version"],
        artifact=ArtifactRef(uri=row["batch_uri"], sha256=row["batch_sha256"], size=row["batch_size"]),
        rows=row["rows"],
        created_at=row["created_at"],
        principal=row["principal"],
        trusted=row["trusted"],
    )


def _as_json(record: Any) -> str | None:
    """The rejected record as JSON for the quarantine; text when it holds NaN or infinity."""
    if record is None:
        return None
    try:
        return json.dumps(record, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(str(record))
