"""The answers of ingest's HTTP API, as its OpenAPI document describes them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from libs.common.schema import DatasetSchema


class RejectionOut(BaseModel):
    row: int = Field(description="Index of the row in the request (0-based).")
    field: str | None = Field(description="The column at fault; None when the row as a whole is.")
    reason: str


class DeclaredOut(BaseModel):
    dataset: str
    created: bool = Field(description="True: declared now (201); false: confirmed or replaced (200).")
    dataset_schema: DatasetSchema = Field(alias="schema")


class SubmissionOut(BaseModel):
    dataset: str
    submission_id: str
    received: int = Field(description="Rows in the request.")
    accepted: int = Field(description="Rows stored in the new version.")
    rejected: int = Field(description="Rows kept as rejections, with their reasons.")
    version: int | None = Field(description="The dataset version the accepted rows made; None when none was.")
    total_rows: int = Field(description="The dataset's rows after this submission.")
    rejections: list[RejectionOut] = Field(description="The first 100 rejected rows.")


class DatasetListed(BaseModel):
    dataset: str
    version: int = Field(description="Latest version (0: no data yet).")
    total_rows: int


class RecordCounts(BaseModel):
    received: int
    accepted: int
    rejected: int


class DatasetSummary(BaseModel):
    dataset: str
    dataset_schema: DatasetSchema = Field(alias="schema")
    version: int = Field(description="Latest version (0: no data yet).")
    total_rows: int
    records: RecordCounts = Field(description="Rows of every submission so far.")


class ManifestRef(BaseModel):
    uri: str = Field(description="URI of the version's manifest in the artifact store.")
    sha256: str = Field(description="Hex sha256 of the manifest's bytes.")
    size: int = Field(description="Size in bytes.")


class VersionOut(BaseModel):
    dataset: str
    version: int
    manifest: ManifestRef = Field(description="The manifest listing every batch up to this version.")
    batch_rows: int = Field(description="Rows this version added.")
    total_rows: int = Field(description="Rows of the dataset up to this version.")
    created_at: str = Field(description="When the version was stored (ISO 8601, UTC).")


class StoredRejection(BaseModel):
    id: int = Field(description="Pagination cursor: pass it as before_id for older rejections.")
    submission_id: str
    row: int = Field(description="Index of the row in its submission.")
    field: str | None
    reason: str
    record: Any = Field(
        description="The row as it was sent (None when it could not be kept); a NaN or an infinity, which JSON "
        'cannot hold, is the string "NaN", "Infinity" or "-Infinity".'
    )
    at: str = Field(description="When it was rejected (ISO 8601, UTC).")


class RejectionsPage(BaseModel):
    dataset: str
    total: int = Field(description="Rejections of the dataset in all.")
    rejections: list[StoredRejection] = Field(description="This page, newest first.")
