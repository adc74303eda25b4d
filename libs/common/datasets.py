"""Dataset batches and versions, as ingest writes them and the trainer reads them.

A dataset is append-only. Each accepted batch is one Parquet file in the
artifact store; dataset version N is every batch up to N, recorded in a
manifest (JSON, itself content-addressed) so a training run names exactly the
bytes it learned from and can be reproduced.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
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

#: Column added to every stored row: when ingest accepted it (UTC).
INGESTED_AT = "_ingested_at"


class BatchEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    artifact: ArtifactRef
    rows: int = Field(ge=0)
    created_at: datetime
    principal: str | None = Field(default=None, description="Who sent the batch (None: not recorded).")
    trusted: bool | None = Field(default=None, description="Whether that principal is trusted.")


class DatasetManifest(BaseModel):
    """Dataset version ``version``: its schema and every batch it is made of."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    version: int = Field(ge=1)
    dataset_schema: DatasetSchema
    batches: list[BatchEntry]

    @property
    def total_rows(self) -> int:
        return sum(b.rows for b in self.batches)

    def since(self, moment: datetime) -> list[BatchEntry]:
        """Batches accepted at or after ``moment``."""
        return [b for b in self.batches if b.created_at >= moment]


def row_sources(batches: Iterable[BatchEntry]) -> list[Source] | None:
    """Who supplied the rows of ``batches`` (None when no batch recorded its sender)."""
    known = [(b.principal, bool(b.trusted), b.rows) for b in batches if b.principal is not None]
    return tally(known) if known else None


def arrow_schema(schema: DatasetSchema) -> pa.Schema:
    columns: list[FeatureSpec] = [*schema.features, schema.target]
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
    pq.write_table(pa.Table.from_arrays(columns, schema=target), sink, compression="zstd")
    return sink.getvalue()


def read_batches(store: ArtifactStore, batches: Iterable[BatchEntry]) -> pa.Table:
    """Concatenate verified batches into one table (digests checked on read)."""
    tables = [pq.read_table(io.BytesIO(store.get(b.artifact))) for b in batches]
    if not tables:
        raise ValueError("no batches to read")
    return pa.concat_tables(tables, promote_options="default")
