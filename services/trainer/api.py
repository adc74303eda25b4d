"""HTTP API of the trainer: request jobs, follow them, see the policy's view."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field

from libs.common import idempotency
from libs.common.auth import Principal, Role, require
from libs.common.errors import Conflict, NotFound
from libs.common.http import errors
from libs.common.idempotency import IdempotencyKey, fingerprint
from libs.common.service import Runtime
from services.trainer.adapters import repository
from services.trainer.handlers.planning import dataset_for, model_view, plan
from services.trainer.settings import TrainerSettings

JOBS_SCOPE = "trainer.training-jobs"


class JobRequest(BaseModel):
    model: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    dataset: str | None = Field(default=None, description="Defaults to the model's configured dataset.")
    reason: str = Field(default="requested over HTTP", max_length=500)


class Job(BaseModel):
    """A training job. Fields added to the job's record later pass through (extra="allow")."""

    model_config = ConfigDict(extra="allow")

    id: str
    model: str
    dataset: str
    dataset_version: int
    trigger: str = Field(examples=["new_data", "drift", "request"])
    reason: str
    since: str | None = Field(description="Drift jobs: the first row time they train from (ISO 8601).")
    quick: bool = Field(default=False, description="The job answers a drift: it searched with the short drift budget.")
    status: str = Field(examples=["queued", "running", "succeeded", "failed", "cancelled"])
    attempts: int
    error: str | None
    cancel_reason: str | None
    worker_pid: int | None
    metrics: dict[str, Any] | None
    champion_metrics: dict[str, Any] | None
    training_rows: int | None
    holdout_rows: int | None
    search: str | None = Field(description="How the hyper-parameters were searched.")
    reused_version: int | None = Field(
        default=None, description="A drift job: the earlier champion whose pipeline it registered again, if any."
    )
    stages: list[dict[str, Any]] | None = Field(description="Each step of the job with its seconds, in order.")
    onnx: dict[str, Any] | None = Field(
        default=None, description="The ONNX export made after model.trained (model.exported), once it is done."
    )
    export_seconds: float | None = Field(default=None, description="Seconds the ONNX export and parity check took.")
    created_at: str
    started_at: str | None
    finished_at: str | None


class ModelState(BaseModel):
    """The retrain policy's view of a model."""

    model: str
    dataset: str
    total_rows: int = Field(description="Rows in the latest dataset version.")
    last_trained_rows: int = Field(description="Rows the last job trained on (0: never trained).")
    active_job: bool
    drift_since: str | None = Field(description="Start of a drift not yet answered by a retrain (ISO 8601).")
    rows_since_drift: int
    champion_version: int | None


def mount(app: FastAPI, rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> None:
    router = APIRouter(tags=["training"])
    _mount_request(router, rt, settings, on_queued)
    _mount_reads(router, rt)
    app.include_router(router)


def _mount_request(router: APIRouter, rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> None:
    @router.post(
        "/v1/training-jobs", status_code=202, response_model=Job, responses=errors(404, 409),
        summary="Queue a training job now",
    )  # fmt: skip
    async def request_job(
        body: JobRequest, principal: Annotated[Principal, require(Role.OPERATOR)], key: IdempotencyKey = None
    ) -> dict[str, Any] | Response:
        dataset = body.dataset or dataset_for(settings, body.model)
        async with rt.db.acquire() as conn, conn.transaction():
            request = fingerprint(principal.name, body.model_dump_json())
            if key is not None and (replay := await idempotency.claim(conn, JOBS_SCOPE, key, request)):
                return replay.response()
            if await repository.dataset(conn, dataset) is None:
                raise NotFound(f"dataset {dataset!r} has no data yet (no data.arrived seen)", dataset=dataset)
            decision, job_id = await plan(
                conn, rt.store, settings, model=body.model, dataset=dataset, requested=True,
                reason=f"{body.reason} (by {principal.name})",
            )  # fmt: skip
            if job_id is None:
                raise Conflict(f"no job queued for {body.model!r}: {decision.reason}", model=body.model)
            row = await repository.job(conn, job_id)
            assert row is not None
            answer: dict[str, Any] = jsonable_encoder(repository.job_out(row))
            if key is not None:
                await idempotency.remember(conn, JOBS_SCOPE, key, 202, json.dumps(answer).encode())
        on_queued()
        return answer


def _mount_reads(router: APIRouter, rt: Runtime) -> None:
    @router.get("/v1/training-jobs", summary="Jobs, newest first", dependencies=[require(Role.READER)])
    async def list_jobs(
        model: str | None = None,
        status: Literal["queued", "running", "succeeded", "failed"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[Job]:
        rows = await repository.jobs(rt.db, model=model, status=status, limit=limit)
        return [Job.model_validate(repository.job_out(r)) for r in rows]

    @router.get("/v1/training-jobs/{job_id}", summary="One job", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def get_job(job_id: uuid.UUID) -> Job:
        row = await repository.job(rt.db, job_id)
        if row is None:
            raise NotFound(f"no training job {job_id}")
        return Job.model_validate(repository.job_out(row))

    @router.get("/v1/models/{model}", summary="The retrain policy's view of a model", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def model_state(model: str) -> ModelState:
        async with rt.db.acquire() as conn, conn.transaction():
            row = await repository.model_row(conn, model)
            if row is None:
                raise NotFound(f"the trainer knows no model {model!r}")
            view, _ = await model_view(conn, rt.store, model, row["dataset"])
        return ModelState(
            model=model, dataset=row["dataset"], total_rows=view.total_rows, last_trained_rows=view.last_trained_rows,
            active_job=view.active_job, drift_since=view.drift_since.isoformat() if view.drift_since else None,
            rows_since_drift=view.rows_since_drift, champion_version=row["champion_version"],
        )  # fmt: skip
