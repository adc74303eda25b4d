"""PostgreSQL and artifact-store access of the ingest service."""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pyarrow as pa

from libs.common import outbox
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import BatchEntry, DatasetManifest, acceptance_time, table_to_parquet
from libs.common.errors import Conflict, NotFound
from libs.common.events import ArtifactRef, DataArrived
from libs.common.jsonbody import off_loop
from libs.common.schema import DatasetSchema
from services.ingest.domain import quarantine
from services.ingest.domain.validation import RejectedRows, ValidationResult, rejection


@dataclass(frozen=True)
class StoredSubmission:
    submission_id: uuid.UUID
    accepted: int
    rejected: int
    version: int | None
    total_rows: int
    rejections: RejectedRows = field(default_factory=RejectedRows.empty)
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


@dataclass(frozen=True)
class _NewVersion:
    """A dataset version about to be stored: the accepted rows of one submission and who sent them."""

    dataset: str
    number: int
    schema: DatasetSchema
    rows: pa.Table
    total_rows: int
    """The dataset's rows once this version is stored."""
    created_at: datetime
    principal: str | None
    trusted: bool | None


async def store_submission(
    conn: asyncpg.Connection,
    store: ArtifactStore,
    *,
    dataset: str,
    result: ValidationResult,
    source: str,
    producer: str = "ingest",
    correlation_id: str | None = None,
    principal: str | None = None,
    trusted: bool | None = None,
    written: list[ArtifactRef] | None = None,
) -> StoredSubmission:
    """Record one submission inside the caller's transaction.

    Accepted rows become the next dataset version (batch Parquet + manifest,
    both content-addressed) and a ``data.arrived`` event in the outbox;
    rejected rows are kept with their reasons. The dataset row is locked so
    concurrent submissions get consecutive versions. The artifacts written are
    appended to ``written`` (see :func:`discard_on_error`).
    """
    written = [] if written is None else written
    head = await _lock_dataset(conn, dataset)
    schema = await parse_schema(head["schema"])
    accepted, rejected = await _refuse_stored_keys(conn, dataset, schema.key, result)
    submission_id = uuid.uuid4()
    version: int | None = None
    total = int(head["total_rows"])
    if accepted:
        new = _NewVersion(dataset, head["last_version"] + 1, schema, accepted, total + len(accepted),
                          acceptance_time(), principal, trusted)  # fmt: skip
        batch, manifest = await _write_version_files(conn, store, new, _parent(head), written)
        await _insert_version(conn, new, batch, manifest)
        arrived = _arrived(new, batch, manifest, len(rejected), producer, correlation_id or str(submission_id))
        await outbox.add(conn, arrived)
        version, total = new.number, new.total_rows
    received = result.accepted.num_rows + len(result.rejected)
    await _record_submission(conn, submission_id, dataset, source, received, len(accepted), rejected, version,
                             first_id=head["rejections_issued"] + 1)  # fmt: skip
    return StoredSubmission(submission_id, len(accepted), len(rejected), version, total, rejected)


async def _lock_dataset(conn: asyncpg.Connection, dataset: str) -> asyncpg.Record:
    """The dataset's schema, last version (and its manifest), rows and rejection ids issued, its row
    locked until the transaction ends (so concurrent submissions get consecutive versions and ids)."""
    head = await conn.fetchrow(
        "SELECT d.schema, d.last_version, d.total_rows, d.rejections_issued, v.manifest_uri, v.manifest_sha256, "
        "v.manifest_size FROM datasets d LEFT JOIN versions v ON v.dataset = d.name AND v.version = d.last_version "
        "WHERE d.name = $1 FOR UPDATE OF d",
        dataset,
    )
    if head is None:
        raise NotFound(f"dataset {dataset!r} is not declared", dataset=dataset)
    return head


def _parent(head: asyncpg.Record) -> ArtifactRef | None:
    """The manifest of the dataset's last version (None before the first)."""
    if head["manifest_uri"] is None:
        return None
    return ArtifactRef(uri=head["manifest_uri"], sha256=head["manifest_sha256"], size=head["manifest_size"])


async def _write_version_files(
    conn: asyncpg.Connection, store: ArtifactStore, new: _NewVersion, parent: ArtifactRef | None,
    written: list[ArtifactRef],
) -> tuple[ArtifactRef, ArtifactRef]:  # fmt: skip
    """Write the version's batch (Parquet) and manifest to the store; both are appended to ``written``."""
    data = await off_loop(new.rows.nbytes, table_to_parquet, new.schema, new.rows, new.created_at)
    batch = await off_loop(len(data), store.put, data, suffix=".parquet")
    written.append(batch)
    entry = BatchEntry(seq=new.number, artifact=batch, rows=len(new.rows), created_at=new.created_at,
                       principal=new.principal, trusted=new.trusted)  # fmt: skip
    manifest_doc = DatasetManifest(
        dataset=new.dataset, version=new.number, dataset_schema=new.schema,
        batches=[*await segments(conn, new.dataset), entry],
        parent=parent,
    )  # fmt: skip
    text = manifest_doc.model_dump_json().encode()
    manifest = await off_loop(len(text), store.put, text, suffix=".manifest.json")
    written.append(manifest)
    return batch, manifest


async def _insert_version(
    conn: asyncpg.Connection, new: _NewVersion, batch: ArtifactRef, manifest: ArtifactRef
) -> None:
    """The version's segment and version rows, and the dataset's new head (one statement: one round trip)."""
    rows = len(new.rows)
    await conn.execute(
        "WITH segment AS (INSERT INTO segments (dataset, first_seq, last_seq, uri, sha256, size, rows, created_at, "
        "until, principal, trusted) VALUES ($1, $2, $2, $3, $4, $5, $6, $11, $11, $12, $13)), "
        "version AS (INSERT INTO versions (dataset, version, batch_uri, batch_sha256, batch_size, rows, manifest_uri, "
        "manifest_sha256, manifest_size, total_rows, created_at, principal, trusted) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)) "
        "UPDATE datasets SET last_version = $2, total_rows = $10, updated_at = now() WHERE name = $1",
        new.dataset, new.number, batch.uri, batch.sha256, batch.size, rows, manifest.uri, manifest.sha256,
        manifest.size, new.total_rows, new.created_at, new.principal, new.trusted,
    )  # fmt: skip


def _arrived(
    new: _NewVersion, batch: ArtifactRef, manifest: ArtifactRef, rejected: int, producer: str, correlation_id: str
) -> DataArrived:
    return DataArrived(
        occurred_at=new.created_at,  # the batch's acceptance time: what "rows since" is counted by
        producer=producer,
        correlation_id=correlation_id,
        dataset=new.dataset,
        version=new.number,
        batch=batch,
        manifest=manifest,
        rows_accepted=len(new.rows),
        rows_rejected=rejected,
        total_rows=new.total_rows,
        dataset_schema=new.schema,
        principal=new.principal,
        trusted=new.trusted,
    )


async def _record_submission(
    conn: asyncpg.Connection, submission_id: uuid.UUID, dataset: str, source: str, received: int, accepted: int,
    rejected: RejectedRows, version: int | None, *, first_id: int,
) -> None:  # fmt: skip
    """The submission's counts, and its rejected rows with their reasons, in one statement. The
    rejections' ids start at ``first_id`` (the dataset's counter, read under its row lock)."""
    blocks: list[tuple[int, int, bytes]] = []
    if rejected:
        size = rejected.reasons.nbytes + (0 if rejected.records is None else rejected.records.nbytes)
        blocks = await off_loop(size, quarantine.blocks, rejected)
    await conn.execute(
        "WITH submission AS (INSERT INTO submissions (id, dataset, source, received, accepted, rejected, version) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)), "
        "counter AS (UPDATE datasets SET rejections_issued = rejections_issued + $6 WHERE name = $2 AND $6 > 0) "
        "INSERT INTO rejection_blocks (dataset, first_id, rows, submission_id, block) "
        "SELECT $2, f, r, $1, b FROM unnest($8::bigint[], $9::int[], $10::bytea[]) AS t(f, r, b)",
        submission_id, dataset, source, received, accepted, len(rejected), version,
        [first_id + start for start, _, _ in blocks], [rows for _, rows, _ in blocks], [b for _, _, b in blocks],
    )  # fmt: skip


async def _refuse_stored_keys(
    conn: asyncpg.Connection, dataset: str, column: str | None, result: ValidationResult
) -> tuple[pa.Table, RejectedRows]:
    """Record the keys of the accepted rows; rows whose key an earlier submission stored become rejections."""
    keys = result.keys
    if not keys:  # the schema names no key column
        return result.accepted, result.rejected
    fresh = {r["key"] for r in await conn.fetch(
        "INSERT INTO record_keys (dataset, key) SELECT $1, k FROM unnest($2::text[]) AS k ON CONFLICT DO NOTHING "
        "RETURNING key", dataset, [key for _, key, _ in keys])}  # fmt: skip
    if len(fresh) == len(keys):
        return result.accepted, result.rejected
    stale = [(row, key) for row, key, _ in keys if key not in fresh]
    records = result.originals([row for row, _ in stale])
    refused = [
        rejection(row, column, f"duplicate key {key!r}: an earlier submission stored it", record)
        for (row, key), record in zip(stale, records, strict=True)
    ]
    kept = result.accepted.filter(pa.array([key in fresh for _, key, _ in keys]))
    return kept, RejectedRows.concat([result.rejected, RejectedRows.of(refused)])


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


async def segments(conn: asyncpg.Connection | asyncpg.Pool, dataset: str) -> list[BatchEntry]:
    """The segments holding the dataset's rows, in order (what the next manifest lists before its new batch)."""
    rows = await conn.fetch(
        "SELECT first_seq, last_seq, uri, sha256, size, rows, created_at, until, principal, trusted FROM segments "
        "WHERE dataset = $1 ORDER BY first_seq",
        dataset,
    )
    return [_entry(r) for r in rows]


def _entry(row: asyncpg.Record) -> BatchEntry:
    compacted = row["first_seq"] != row["last_seq"]
    return BatchEntry(
        seq=row["last_seq"],
        first_seq=row["first_seq"] if compacted else None,
        artifact=ArtifactRef(uri=row["uri"], sha256=row["sha256"], size=row["size"]),
        rows=row["rows"],
        created_at=row["created_at"],
        until=row["until"] if compacted else None,
        principal=row["principal"],
        trusted=row["trusted"],
    )


async def declare(pool: asyncpg.Pool, dataset: str, schema: DatasetSchema, text: str) -> bool:
    """Store ``schema`` as the dataset's (True: created), confirm it, or replace it while the
    dataset holds no data; a different schema for a dataset with data is a :class:`Conflict`."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT schema, last_version FROM datasets WHERE name = $1 FOR UPDATE", dataset)
        if row is None:
            await conn.execute("INSERT INTO datasets (name, schema) VALUES ($1, $2)", dataset, text)
            return True
        if await parse_schema(row["schema"]) != schema:
            if row["last_version"] > 0:
                raise Conflict(
                    f"dataset {dataset!r} already has data under a different schema; declare a new dataset",
                    dataset=dataset,
                )
            await conn.execute("UPDATE datasets SET schema = $2, updated_at = now() WHERE name = $1", dataset, text)
    return False


async def list_datasets(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT name, last_version, total_rows FROM datasets ORDER BY name")
    return [{"dataset": r["name"], "version": r["last_version"], "total_rows": r["total_rows"]} for r in rows]


async def summary(pool: asyncpg.Pool, dataset: str) -> dict[str, Any]:
    """Schema, latest version, rows and submission counts of ``dataset``."""
    schema = await get_schema(pool, dataset)
    row = await pool.fetchrow(
        "SELECT d.last_version, d.total_rows, coalesce(sum(s.received), 0) AS received, "
        "coalesce(sum(s.accepted), 0) AS accepted, coalesce(sum(s.rejected), 0) AS rejected "
        "FROM datasets d LEFT JOIN submissions s ON s.dataset = d.name WHERE d.name = $1 "
        "GROUP BY d.last_version, d.total_rows",
        dataset,
    )
    if row is None:  # deleted between the two reads
        raise NotFound(f"dataset {dataset!r} is not declared")
    return {
        "dataset": dataset,
        "schema": schema,  # the parsed model: the answer serialises it once
        "version": row["last_version"],
        "total_rows": row["total_rows"],
        "records": {"received": row["received"], "accepted": row["accepted"], "rejected": row["rejected"]},
    }


async def version(pool: asyncpg.Pool, dataset: str, number: int) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT manifest_uri, manifest_sha256, manifest_size, total_rows, rows, created_at FROM versions "
        "WHERE dataset = $1 AND version = $2",
        dataset,
        number,
    )
    if row is None:
        raise NotFound(f"dataset {dataset!r} has no version {number}")
    return {
        "dataset": dataset,
        "version": number,
        "manifest": {"uri": row["manifest_uri"], "sha256": row["manifest_sha256"], "size": row["manifest_size"]},
        "batch_rows": row["rows"],
        "total_rows": row["total_rows"],
        "created_at": row["created_at"].isoformat(),
    }


async def rejections(pool: asyncpg.Pool, dataset: str, before_id: int | None, limit: int) -> dict[str, Any]:
    """A page of ``dataset``'s rejected rows, newest first, and how many there are in all.

    The page comes from the quarantine blocks, newest first, read one at a time until it is full;
    then from the rows of the table that held rejections before the blocks (all of lower ids).
    """
    await get_schema(pool, dataset)
    page: list[dict[str, Any]] = []
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        blocks = conn.cursor(
            "SELECT first_id, submission_id, block, created_at FROM rejection_blocks "
            "WHERE dataset = $1 AND ($2::bigint IS NULL OR first_id < $2) ORDER BY first_id DESC",
            dataset, before_id, prefetch=4,
        )  # fmt: skip
        async for b in blocks:
            found = await off_loop(len(b["block"]), quarantine.newest, b["block"], b["first_id"], before_id,
                                   limit - len(page))  # fmt: skip
            page += [{**r, "submission_id": str(b["submission_id"]), "at": b["created_at"].isoformat()} for r in found]
            if len(page) >= limit:
                break
        if len(page) < limit:
            page += [_legacy(r) for r in await conn.fetch(
                "SELECT id, submission_id, row_index, field, reason, record, created_at FROM rejections "
                "WHERE dataset = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                dataset, before_id, limit - len(page),
            )]  # fmt: skip
        total = await conn.fetchval(
            "SELECT (SELECT COALESCE(sum(rows), 0) FROM rejection_blocks WHERE dataset = $1) "
            "+ (SELECT count(*) FROM rejections WHERE dataset = $1)",
            dataset,
        )
    return {"dataset": dataset, "total": total, "rejections": page}


def _legacy(r: asyncpg.Record) -> dict[str, Any]:
    """A rejection stored as its own row (before the quarantine blocks)."""
    return {
        "id": r["id"],
        "row": r["row_index"],
        "field": r["field"],
        "reason": r["reason"],
        "record": None if r["record"] is None else json.loads(r["record"]),
        "submission_id": str(r["submission_id"]),
        "at": r["created_at"].isoformat(),
    }
