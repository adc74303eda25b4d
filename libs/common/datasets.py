"""Dataset batches and versions, as ingest writes them and the trainer reads them.

A dataset is append-only. Each accepted batch is one Parquet file in the
artifact store; dataset version N is every batch up to N, recorded in a
manifest (JSON, itself content-addressed) so a training run names exactly the
bytes it learned from and can be reproduced.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef, Source, tally
from libs.common.schema import DatasetSchema, DType, FeatureSpec

_ARROW_TYPES = {
    DType.NUMERIC: pa.float64(),
    DType.INTEGER: pa.int64(),
    DType.CATEGORICAL: pa.string(),
    DType.BOOLEAN: pa.bool_(),
}

#: Column added to every stored row: when ingest accepted it (UTC, to the millisecond).
INGESTED_AT = "_ingested_at"


def acceptance_time(at: datetime | None = None) -> datetime:
    """``at`` (default: now) cut to the millisecond, the resolution of :data:`INGESTED_AT`.

    A batch's acceptance time is stored twice: in the manifest and the versions table (which decide
    whole batches) and in each row (which decides the rows of a compacted segment). Both must hold the
    same instant, or a drift that began within a batch's millisecond takes that batch's rows in one
    reading and leaves them out in the other."""
    moment = at or datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _row_time_at_or_after(since: datetime) -> pa.Scalar:
    """The first :data:`INGESTED_AT` value (a millisecond) at or after ``since``: a row stamped at
    ``t`` ms was accepted at or after ``since`` exactly when ``t`` is at least this (``since`` rounded
    up, not down as a cast to milliseconds would)."""
    ceiling = acceptance_time(since)
    if ceiling < since:
        ceiling += timedelta(milliseconds=1)
    return pa.scalar(ceiling, type=pa.timestamp("ms", tz="UTC"))


class BatchEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    artifact: ArtifactRef
    rows: int = Field(ge=0)
    created_at: datetime
    principal: str | None = Field(default=None, description="Who sent the batch (None: not recorded).")
    trusted: bool | None = Field(default=None, description="Whether that principal is trusted.")
    first_seq: int | None = Field(
        default=None, ge=1, description="A compacted segment: the first batch it holds (``seq`` is its last)."
    )
    until: datetime | None = Field(
        default=None, description="A compacted segment: when its last batch was accepted (``created_at``: its first)."
    )

    @property
    def compacted(self) -> bool:
        return self.first_seq is not None and self.first_seq < self.seq

    @property
    def last_at(self) -> datetime:
        return self.until or self.created_at


class DatasetManifest(BaseModel):
    """Dataset version ``version``: its schema and the Parquet segments holding its rows, in order.

    A version is a delta on its ``parent`` (the previous version's manifest, by digest): the parent's
    segments plus the new batch. Ingest compacts runs of small batches into larger segments in the
    background, so the list stays short as history grows; a compacted segment holds exactly the rows
    of its batches, in order, so no version's content ever changes.
    """

    model_config = ConfigDict(frozen=True)

    dataset: str
    version: int = Field(ge=1)
    dataset_schema: DatasetSchema
    batches: list[BatchEntry]
    parent: ArtifactRef | None = Field(default=None, description="The manifest of version ``version - 1``.")

    @property
    def total_rows(self) -> int:
        return sum(b.rows for b in self.batches)

    def since(self, moment: datetime) -> list[BatchEntry]:
        """Segments holding rows accepted at or after ``moment`` (a compacted one may hold earlier rows too)."""
        return [b for b in self.batches if b.last_at >= moment]


def row_sources(batches: Iterable[BatchEntry]) -> list[Source] | None:
    """Who supplied the rows of ``batches`` (None when no batch recorded its sender)."""
    known = [(b.principal, bool(b.trusted), b.rows) for b in batches if b.principal is not None]
    return tally(known) if known else None


def counted_sources(counts: Iterable[tuple[BatchEntry, int]]) -> list[Source] | None:
    """Who supplied the rows read (segment, rows read from it); None when no segment recorded its sender."""
    known = [(b.principal, bool(b.trusted), n) for b, n in counts if b.principal is not None]
    return tally(known) if known else None


def arrow_schema(schema: DatasetSchema) -> pa.Schema:
    columns: list[FeatureSpec] = schema.stored_columns
    fields = [pa.field(c.name, _ARROW_TYPES[c.dtype], nullable=True) for c in columns]
    return pa.schema([*fields, pa.field(INGESTED_AT, pa.timestamp("ms", tz="UTC"))])


def batch_to_parquet(schema: DatasetSchema, rows: Sequence[dict[str, Any]], at: datetime | None = None) -> bytes:
    """Validated rows as one Parquet file with the dataset's column types."""
    target = arrow_schema(schema)
    stamp = at or datetime.now(UTC)
    columns = {f.name: [row.get(f.name) for row in rows] for f in target if f.name != INGESTED_AT}
    columns[INGESTED_AT] = [stamp] * len(rows)
    table = pa.Table.from_pydict(columns, schema=target)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def table_to_parquet(schema: DatasetSchema, table: pa.Table, at: datetime | None = None) -> bytes:
    """Validated columns (in the dataset's types, as ingest's validation returns them) as one Parquet file."""
    target = arrow_schema(schema)
    stamp = pa.scalar(at or datetime.now(UTC), type=target.field(INGESTED_AT).type)
    columns = [table.column(f.name) for f in target if f.name != INGESTED_AT]
    columns.append(pa.repeat(stamp, table.num_rows))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(columns, schema=target), sink, **_write_options(target, fresh=True))
    return sink.getvalue()


def _write_options(schema: pa.Schema, *, fresh: bool) -> dict[str, Any]:
    """How batches are written: dictionary encoding only where values repeat (text, flags, the
    ingestion time; a float column rarely gains from it and costs most of the write), LZ4 for a
    fresh batch on the request path, zstd for a compacted segment written in the background
    (smaller, slower). Readers need no setting: the codec is in the file."""
    repeats = [f.name for f in schema if not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    if fresh:  # statistics of the ingestion time only (what readers skip row groups by): the others cost
        # a fifth of the write (min/max of every text column) and a fresh batch is one row group anyway
        return {"compression": "lz4", "use_dictionary": repeats, "write_statistics": [INGESTED_AT]}
    return {"compression": "zstd", "compression_level": 1, "use_dictionary": repeats}


def read_rows(
    store: ArtifactStore,
    batches: Sequence[BatchEntry],
    *,
    since: datetime | None = None,
    max_rows: int | None = None,
    labelled: str | None = None,
) -> tuple[pa.Table, list[tuple[BatchEntry, int]]]:
    """The rows of ``batches`` accepted at or after ``since``, at most the last ``max_rows`` of them,
    and how many rows each segment gave. ``labelled`` (the target column): only rows where it is set,
    so ``max_rows`` counts the rows training can use.

    Memory is bounded by ``max_rows``: segments are opened from the newest back, and inside a
    compacted segment (row groups of consecutive rows) row groups are read from its end, until
    ``max_rows`` rows are in hand; what lies further back is never read. In a compacted segment, a
    row group wholly before ``since`` is skipped by its ingestion-time statistics.
    """
    chosen = [b for b in batches if since is None or b.last_at >= since]
    if not chosen:
        raise ValueError("no batches to read")
    read: list[tuple[BatchEntry, pa.Table]] = []  # newest first
    rows = 0
    for entry in reversed(chosen):
        if max_rows is not None and rows >= max_rows:
            break
        # A batch of its own is taken or left whole by its acceptance time; a compacted segment
        # that straddles ``since`` is cut by each row's.
        cut = since if since is not None and entry.compacted and entry.created_at < since else None
        wanted = None if max_rows is None else max_rows - rows
        table = _read_segment(store.get(entry.artifact), cut, labelled, wanted)
        read.append((entry, table))
        rows += table.num_rows
    return _last(read[::-1], max_rows)


def _read_segment(data: bytes, cut: datetime | None, labelled: str | None, wanted: int | None) -> pa.Table:
    """A segment's rows accepted since ``cut`` (and labelled), read row group by row group from its end
    until ``wanted`` are in hand."""
    file = pq.ParquetFile(pa.BufferReader(data))
    groups: list[pa.Table] = []
    rows = 0
    for group in reversed(range(file.num_row_groups)):
        if wanted is not None and rows >= wanted:
            break
        if cut is not None and _ingested_before(file, group, cut):
            continue
        table = _kept(file.read_row_group(group), cut, labelled)
        groups.append(table)
        rows += table.num_rows
    return pa.concat_tables(groups[::-1]) if groups else file.schema_arrow.empty_table()


def _last(
    read: list[tuple[BatchEntry, pa.Table]], max_rows: int | None
) -> tuple[pa.Table, list[tuple[BatchEntry, int]]]:
    """The segments' rows in order, at most the last ``max_rows``, and how many each segment gave."""
    table = pa.concat_tables([t for _, t in read], promote_options="default")
    counts = [(e, t.num_rows) for e, t in read]
    if max_rows is not None and table.num_rows > max_rows:
        drop = table.num_rows - max_rows
        table = table.slice(drop)
        counts = _trim_counts(counts, drop)
    return table, [(e, n) for e, n in counts if n]


def _ingested_before(file: pq.ParquetFile, group: int, since: datetime) -> bool:
    """Whether every row of row group ``group`` was accepted before ``since`` (by its statistics)."""
    meta = file.metadata.row_group(group)
    for column in range(meta.num_columns):
        chunk = meta.column(column)
        if chunk.path_in_schema == INGESTED_AT:
            stats = chunk.statistics
            return bool(stats is not None and stats.has_min_max and stats.max < since)
    return False


def _kept(table: pa.Table, since: datetime | None, labelled: str | None) -> pa.Table:
    """The rows of ``table`` accepted at or after ``since`` and (when ``labelled`` names it) with a label."""
    keep = None
    if since is not None:
        keep = pc.greater_equal(table.column(INGESTED_AT), _row_time_at_or_after(since))
    if labelled is not None and table.column(labelled).null_count:
        valid = pc.is_valid(table.column(labelled))
        keep = valid if keep is None else pc.and_(keep, valid)
    return table if keep is None else table.filter(keep)


def _trim_counts(counts: list[tuple[BatchEntry, int]], drop: int) -> list[tuple[BatchEntry, int]]:
    """Per-segment row counts after the first ``drop`` rows were cut off."""
    trimmed = []
    for entry, n in counts:
        cut = min(n, drop)
        drop -= cut
        trimmed.append((entry, n - cut))
    return trimmed


COMPACT_GROUP_ROWS = 16_384
"""Rows per row group of a compacted segment: large enough that a merge costs per row, not per
batch, and small enough that a reader after the last ``max_rows`` or the rows since a moment
skips most of a large segment by its row groups' ingestion-time statistics."""


def compact(store: ArtifactStore, batches: Sequence[BatchEntry], *, group_rows: int = COMPACT_GROUP_ROWS) -> bytes:
    """One Parquet file holding the rows of consecutive ``batches`` in order, in row groups of
    ``group_rows`` (rows arrive in ingestion order, so each group covers one stretch of time
    and a filter on the ingestion time skips whole groups by their statistics).

    Each input is read whole and the output written in a few calls: copying one row group per
    original batch made a merge cost about 5 ms per batch it held, so the tiered merges of a long
    history of small submissions cost more per submission as the tiers filled up."""
    if not batches:
        raise ValueError("nothing to compact")
    tables = [pq.ParquetFile(pa.BufferReader(store.get(e.artifact))).read(use_threads=False) for e in batches]
    table = pa.concat_tables([t.cast(tables[0].schema) for t in tables])
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(group_rows, 1), **_write_options(table.schema, fresh=False))
    return sink.getvalue()


def compacted_entry(batches: Sequence[BatchEntry], artifact: ArtifactRef) -> BatchEntry:
    """The manifest entry of the segment :func:`compact` made of ``batches``."""
    first, last = batches[0], batches[-1]
    return BatchEntry(
        seq=last.seq, first_seq=first.first_seq or first.seq, artifact=artifact, rows=sum(b.rows for b in batches),
        created_at=first.created_at, until=last.last_at, principal=first.principal, trusted=first.trusted,
    )  # fmt: skip


def read_batches(store: ArtifactStore, batches: Iterable[BatchEntry]) -> pa.Table:
    """Concatenate verified batches into one table (digests checked on read)."""
    tables = [pq.read_table(io.BytesIO(store.get(b.artifact))) for b in batches]
    if not tables:
        raise ValueError("no batches to read")
    return pa.concat_tables(tables, promote_options="default")
