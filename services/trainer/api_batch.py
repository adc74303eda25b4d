"""HTTP API of batch predictions: submit a job over a dataset version or an uploaded Parquet file, follow it."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from libs.common import idempotency, outbox
from libs.common.auth import Principal, Role, require
from libs.common.errors import Conflict, DriftloopError, NotFound
from libs.common.events import ArtifactRef
from libs.common.http import INT4_MAX, errors
from libs.common.idempotency import IdempotencyKey, fingerprint
from libs.common.jsonbody import off_loop
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from services.trainer.adapters import batch_inputs, batch_jobs
from services.trainer.adapters.batch_runner import BatchRunner, batch_event
from services.trainer.adapters.registry import Registry
from services.trainer.domain.batch import chunk_count
from services.trainer.settings import TrainerSettings

BATCH_SCOPE = "trainer.batch-jobs"
PARQUET = "application/vnd.apache.parquet"
NAME = r"^[a-z0-9][a-z0-9_.-]*$"


T = TypeVar("T", bound=BaseModel)


class UnsupportedMediaType(DriftloopError):
    status_code = 415
    code = "unsupported_media_type"


class Target(BaseModel):
    """Which version predicts: a version number or an alias (``champion`` when neither is given)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128, pattern=NAME)
    version: int | None = Field(default=None, ge=1, le=INT4_MAX)
    alias: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$",
                              examples=["champion", "canary"])  # fmt: skip

    @model_validator(mode="after")
    def _one_of(self) -> Target:
        if self.version is not None and self.alias is not None:
            raise ValueError("give a version or an alias, not both")
        return self


class BatchJobRequest(Target):
    dataset: str = Field(min_length=1, max_length=128, pattern=NAME, description="The dataset whose rows to predict.")
    dataset_version: int | None = Field(default=None, ge=1, le=INT4_MAX, description="Latest when unset.")


class BatchJob(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    model: str
    version: int = Field(description="The version predicting (an alias was resolved when the job was submitted).")
    alias: str | None
    input: dict[str, Any] = Field(description="kind (dataset or upload), dataset and dataset_version, or upload.")
    status: str = Field(examples=["queued", "running", "succeeded", "failed", "cancelled"])
    total_rows: int
    rows_done: int
    chunks: int
    chunks_done: int
    chunk_rows: int
    progress: float = Field(description="rows_done / total_rows.")
    attempts: int
    resumed_at_chunk: list[int] = Field(description="Per attempt, the chunk it started at (a resumed job: > 0).")
    output: dict[str, Any] | None = Field(description="The predictions' Parquet artifact (uri, sha256, size).")
    error: str | None
    cancel_reason: str | None = Field(default=None, description="Who cancelled the job, and why.")
    worker_pid: int | None
    requested_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None


CancelReason = Annotated[str | None, Query(max_length=500, description="Why; kept with the job.")]
# The query of a Parquet upload (a JSON body names them itself).
UploadModel = Annotated[str | None, Query(description="With a Parquet body: the model.")]
UploadVersion = Annotated[int | None, Query(ge=1, le=INT4_MAX, description="With a Parquet body.")]
UploadAlias = Annotated[str | None, Query(description="With a Parquet body (champion when no version).")]
UploadIdColumn = Annotated[
    str | None,
    Query(max_length=128, description="With a Parquet body: the column copied to the output's row_id (default: "
          "the row's position)."),
]  # fmt: skip

_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON: model, version or alias, dataset and dataset_version. Or a Parquet file "
        f"(content-type {PARQUET}) with model, version or alias and id_column in the query.",
        "content": {"application/json": {"schema": BatchJobRequest.model_json_schema()}},
    }
}


def mount(app: FastAPI, rt: Runtime, settings: TrainerSettings, runner: BatchRunner, registry: Registry) -> None:
    router = APIRouter(prefix="/v1/batch-jobs", tags=["batch predictions"])
    _mount_submit(router, rt, settings, runner, registry)
    _mount_reads(router, rt)
    _mount_cancel(router, rt, runner)
    app.include_router(router)


def _mount_submit(
    router: APIRouter, rt: Runtime, settings: TrainerSettings, runner: BatchRunner, registry: Registry
) -> None:
    @router.post("", status_code=202, response_model=BatchJob, responses=errors(404, 409, 415, 422),
                 summary="Predict every row of a dataset version or of an uploaded Parquet file",
                 openapi_extra=_BODY)  # fmt: skip
    async def submit(
        request: Request,
        principal: Annotated[Principal, require(Role.OPERATOR)],
        model: UploadModel = None,
        version: UploadVersion = None,
        alias: UploadAlias = None,
        id_column: UploadIdColumn = None,
        key: IdempotencyKey = None,
    ) -> dict[str, Any] | Response:
        body = await request.body()
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        target, dataset = _request(kind, body, {"model": model, "version": version, "alias": alias})
        record = await registry.version(target.model, version=target.version,
                                        alias=None if target.version else target.alias or "champion")  # fmt: skip
        artifact = ArtifactRef.model_validate(record["artifact"])
        runner.verifier.verify(artifact, "model")
        features = [f.name for f in DatasetSchema.model_validate(record["schema"]).features]
        async with rt.db.acquire() as conn, conn.transaction():
            request_print = fingerprint(principal.name, kind, request.url.query, body)
            if key is not None and (replay := await idempotency.claim(conn, BATCH_SCOPE, key, request_print)):
                return replay.response()
            source = await _source(conn, rt, dataset, body, features, id_column)
            total = sum(int(segment["rows"]) for segment in source["segments"])
            row = await batch_jobs.enqueue(conn, {
                "id": uuid.uuid4(), "model": target.model, "version": record["version"], "alias": target.alias,
                "artifact": artifact.model_dump(mode="json"), "dataset_schema": record["schema"], "input": source,
                "total_rows": total, "chunk_rows": settings.batch_chunk_rows,
                "chunks": chunk_count(total, settings.batch_chunk_rows), "requested_by": principal.name,
            })  # fmt: skip
            answer: dict[str, Any] = jsonable_encoder(batch_jobs.job_out(row, 0, 0))
            if key is not None:
                await idempotency.remember(conn, BATCH_SCOPE, key, 202, json.dumps(answer).encode())
        runner.wake()
        return answer


def _mount_reads(router: APIRouter, rt: Runtime) -> None:
    @router.get("", summary="Batch jobs, newest first", dependencies=[require(Role.READER)])
    async def list_jobs(
        model: str | None = None,
        status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[BatchJob]:
        rows = await batch_jobs.jobs(rt.db, model=model, status=status, limit=limit)
        return [await _out(rt, row) for row in rows]

    @router.get("/{job_id}", summary="One batch job: progress, then its output", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def get_job(job_id: uuid.UUID) -> BatchJob:
        row = await batch_jobs.job(rt.db, job_id)
        if row is None:
            raise NotFound(f"no batch job {job_id}")
        return await _out(rt, row)


def _request(kind: str, body: bytes, query: dict[str, Any]) -> tuple[Target, BatchJobRequest | None]:
    """Which version predicts what: a Parquet upload names its target in the query, a JSON body names
    the target and the dataset; any other media type is a 415."""
    if kind == PARQUET:
        return _parsed(Target, query, "query"), None
    if kind == "application/json":
        dataset = _parsed(BatchJobRequest, body, "body")
        return dataset, dataset
    raise UnsupportedMediaType(f"content-type: {kind!r} is not accepted; send application/json or {PARQUET}",
                               field="content-type")  # fmt: skip


def _mount_cancel(router: APIRouter, rt: Runtime, runner: BatchRunner) -> None:
    """``DELETE /v1/batch-jobs/{id}`` and ``POST /v1/batch-jobs/{id}/cancel``: the same cancel."""

    @router.delete("/{job_id}", response_model=BatchJob, responses=errors(404, 409, 422),
                   summary="Cancel a queued or running batch job (the job is kept, status cancelled)")  # fmt: skip
    async def delete_job(
        job_id: uuid.UUID, principal: Annotated[Principal, require(Role.OPERATOR)], reason: CancelReason = None
    ) -> BatchJob:
        return await _cancel(rt, runner, job_id, principal, reason)

    @router.post("/{job_id}/cancel", response_model=BatchJob, responses=errors(404, 409, 422),
                 summary="Cancel a queued or running batch job")  # fmt: skip
    async def cancel_job(
        job_id: uuid.UUID, principal: Annotated[Principal, require(Role.OPERATOR)], reason: CancelReason = None
    ) -> BatchJob:
        return await _cancel(rt, runner, job_id, principal, reason)


async def _cancel(
    rt: Runtime, runner: BatchRunner, job_id: uuid.UUID, principal: Principal, reason: str | None
) -> BatchJob:
    """Cancel the job; the replica running it kills its worker at once (NOTIFY after the commit).

    Idempotent: cancelling a cancelled job answers it as it is (the first reason kept, no second
    event). A job that succeeded or failed is a 409 naming its status; an unknown one a 404."""
    why = f"cancelled by {principal.name}" + (f": {reason}" if reason else "")
    async with rt.db.acquire() as conn, conn.transaction():
        row = await batch_jobs.cancel(conn, job_id, why)
        if row is None:
            row = await batch_jobs.job(conn, job_id)
            if row is None:
                raise NotFound(f"job_id: no batch job {job_id}", field="job_id")
            if row["status"] != "cancelled":
                raise Conflict(f"job_id: batch job {job_id} already ended: it is {row['status']}, it cannot be "
                               "cancelled", field="job_id", status=row["status"])  # fmt: skip
            return await _out(rt, row)
        await outbox.add(conn, batch_event(row, "cancelled", 0, error=why))
    runner.jobs_total.labels("cancelled").inc()
    return await _out(rt, row)


async def _source(
    conn: Any, rt: Runtime, dataset: BatchJobRequest | None, body: bytes, features: list[str], id_column: str | None
) -> dict[str, Any]:
    """The job's input: a dataset version's segments, or the uploaded Parquet file, stored."""
    if dataset is not None:
        manifest = await batch_inputs.dataset_version(conn, rt.store, dataset.dataset, dataset.dataset_version)
        segments = batch_inputs.dataset_segments(manifest, features)
        return {
            "kind": "dataset",
            "dataset": dataset.dataset,
            "dataset_version": manifest.version,
            "segments": segments,
        }
    rows = await off_loop(len(body), batch_inputs.read_upload, body, features, id_column)
    upload = rt.store.put(body, suffix=".batch-input.parquet").model_dump(mode="json")
    return {
        "kind": "upload",
        "upload": upload,
        "id_column": id_column,
        "segments": [{"artifact": upload, "rows": rows}],
    }


async def _out(rt: Runtime, row: Any) -> BatchJob:
    chunks, rows = await batch_jobs.progress(rt.db, row["id"])
    return BatchJob.model_validate(batch_jobs.job_out(row, chunks, rows))


def _parsed(cls: type[T], data: bytes | dict[str, Any], where: str) -> T:
    """``data`` validated as ``cls``; a 422 (or 400 for JSON that does not parse) naming the field."""
    try:
        return cls.model_validate_json(data) if isinstance(data, bytes) else cls.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(), body=data if where == "body" else None) from exc
