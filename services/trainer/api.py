"""HTTP API of the trainer: request jobs, follow them, see the policy's view."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query, Response
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field

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


def mount(app: FastAPI, rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None]) -> None:
    router = APIRouter(tags=["training"])

    @router.post(
        "/v1/training-jobs", status_code=202, response_model=None, responses=errors(404, 409),
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
            row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
            assert row is not None
            answer: dict[str, Any] = jsonable_encoder(repository.job_out(row))
            if key is not None:
                await idempotency.remember(conn, JOBS_SCOPE, key, 202, json.dumps(answer).encode())
        on_queued()
        return answer

    @router.get("/v1/training-jobs", summary="Jobs, newest first", dependencies=[require(Role.READER)])
    async def list_jobs(
        model: str | None = None,
        status: Literal["queued", "running", "succeeded", "failed"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[dict[str, Any]]:
        rows = await rt.db.fetch(
            "SELECT * FROM jobs WHERE ($1::text IS NULL OR model = $1) AND ($2::text IS NULL OR status = $2) "
            "ORDER BY created_at DESC LIMIT $3",
            model, status, limit,
        )  # fmt: skip
        return [repository.job_out(r) for r in rows]

    @router.get("/v1/training-jobs/{job_id}", summary="One job", dependencies=[require(Role.READER)])
    async def get_job(job_id: uuid.UUID) -> dict[str, Any]:
        row = await rt.db.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        if row is None:
            raise NotFound(f"no training job {job_id}")
        return repository.job_out(row)

    @router.get("/v1/models/{model}", summary="The retrain policy's view of a model",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def model_state(model: str) -> dict[str, Any]:
        async with rt.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM models WHERE name = $1", model)
            if row is None:
                raise NotFound(f"the trainer knows no model {model!r}")
            view, _ = await model_view(conn, rt.store, model, row["dataset"])
        return {
            "model": model,
            "dataset": row["dataset"],
            "total_rows": view.total_rows,
            "last_trained_rows": view.last_trained_rows,
            "active_job": view.active_job,
            "drift_since": view.drift_since.isoformat() if view.drift_since else None,
            "rows_since_drift": view.rows_since_drift,
            "champion_version": row["champion_version"],
        }

    app.include_router(router)
