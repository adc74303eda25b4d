"""What a batch job reads: a dataset version's segments, or an uploaded Parquet file (stored first)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest
from libs.common.errors import NotFound, ValidationFailed
from libs.common.events import ArtifactRef
from services.trainer.adapters import repository
from services.trainer.adapters.repository import Conn
from services.trainer.domain.batch import missing_features


async def dataset_version(conn: Conn, store: ArtifactStore, dataset: str, version: int | None) -> DatasetManifest:
    """The manifest of ``dataset`` at ``version`` (latest when None), walking back from the latest by parent."""
    row = await repository.dataset(conn, dataset)
    if row is None:
        raise NotFound(f"dataset: the trainer knows no dataset {dataset!r} (no data.arrived seen)", field="dataset")
    latest = row["version"]
    if version is not None and version > latest:
        raise NotFound(f"dataset_version: dataset {dataset!r} has no version {version} (latest: {latest})",
                       field="dataset_version")  # fmt: skip
    manifest = DatasetManifest.model_validate_json(store.get(ArtifactRef.model_validate_json(row["manifest"])))
    while version is not None and manifest.version > version:
        if manifest.parent is None:
            raise NotFound(f"dataset_version: version {version} of {dataset!r} is not reachable from the latest "
                           f"manifest (v{manifest.version} names no parent)", field="dataset_version")  # fmt: skip
        manifest = DatasetManifest.model_validate_json(store.get(manifest.parent))
    return manifest


def dataset_segments(manifest: DatasetManifest, features: list[str]) -> list[dict[str, Any]]:
    """The version's segments, in order, once its columns are known to hold the model's features."""
    lacking = missing_features(features, [f.name for f in manifest.dataset_schema.features])
    if lacking:
        raise ValidationFailed(f"dataset: {manifest.dataset!r} lacks the model's features {lacking}", field="dataset")
    if manifest.total_rows == 0:
        raise ValidationFailed(f"dataset: version {manifest.version} of {manifest.dataset!r} has no rows",
                               field="dataset_version")  # fmt: skip
    return [{"artifact": b.artifact.model_dump(mode="json"), "rows": b.rows} for b in manifest.batches if b.rows]


def read_upload(body: bytes, features: list[str], id_column: str | None) -> int:
    """Rows of an uploaded Parquet file, once it is known to be Parquet with the columns needed."""
    if not body:
        raise ValidationFailed("body: empty; send a Parquet file", field="body")
    try:
        metadata = pq.ParquetFile(pa.BufferReader(body)).metadata
        pq.read_table(pa.BufferReader(body), columns=[])  # the file opens as a table, not only its footer
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ValidationFailed(f"body: not a Parquet file ({exc})", field="body") from exc
    columns = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    lacking = missing_features(features, columns)
    if lacking:
        raise ValidationFailed(f"body: the Parquet file lacks the model's features {lacking}", field="body")
    if id_column is not None and id_column not in columns:
        raise ValidationFailed(f"id_column: the Parquet file has no column {id_column!r}", field="id_column")
    if metadata.num_rows == 0:
        raise ValidationFailed("body: the Parquet file has no rows", field="body")
    return int(metadata.num_rows)
