"""HTTP API of scheduled retraining: one cron schedule per model, set, read and removed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Response
from pydantic import BaseModel, Field, field_validator

from libs.common.auth import Principal, Role, require
from libs.common.errors import NotFound
from libs.common.http import errors
from libs.common.service import Runtime
from services.trainer.adapters import schedules
from services.trainer.domain.schedule import InvalidCron, next_run, normalise
from services.trainer.handlers.planning import dataset_for
from services.trainer.settings import TrainerSettings

ModelName = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


class ScheduleRequest(BaseModel):
    cron: str = Field(
        max_length=200, description="Five cron fields (minute hour day month weekday) or @hourly/@daily/@weekly/"
        "@monthly/@yearly, evaluated in UTC.", examples=["0 3 * * *", "*/30 * * * 1-5", "@daily"],
    )  # fmt: skip
    dataset: str | None = Field(default=None, description="Defaults to the model's configured dataset.")

    @field_validator("cron")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            return normalise(value)
        except InvalidCron as exc:
            raise ValueError(f"invalid cron expression: {exc}") from exc


class Schedule(BaseModel):
    model: str
    dataset: str
    cron: str = Field(description="The expression in its five-field form (UTC).")
    source: str = Field(examples=["api", "setting"], description="Set through this API or by a trainer setting.")
    next_run_at: str = Field(description="When it fires next (ISO 8601, UTC).")
    last_run_at: str | None
    last_job_id: str | None = Field(description="The last job it queued (GET /v1/training-jobs/{id}).")
    last_outcome: str | None = Field(description="What the retrain policy decided when it last fired, and why.")
    updated_by: str
    updated_at: str


def mount(app: FastAPI, rt: Runtime, settings: TrainerSettings, clock: Callable[[], datetime]) -> None:
    router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

    @router.get("", summary="Every retrain schedule", dependencies=[require(Role.READER)])
    async def list_schedules() -> list[Schedule]:
        return [Schedule.model_validate(schedules.out(r)) for r in await schedules.all_(rt.db)]

    @router.get("/{model}", summary="A model's retrain schedule", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def get_schedule(model: ModelName) -> Schedule:
        return Schedule.model_validate(schedules.out(await _existing(rt, model)))

    @router.put("/{model}", summary="Set a model's retrain schedule (cron, UTC)", responses=errors(422))
    async def put_schedule(
        model: ModelName, body: ScheduleRequest, principal: Annotated[Principal, require(Role.OPERATOR)]
    ) -> Schedule:
        row = await schedules.put(
            rt.db, model=model, dataset=body.dataset or dataset_for(settings, model), cron=body.cron,
            next_run_at=next_run(body.cron, clock()), source="api", actor=principal.name,
        )  # fmt: skip
        return Schedule.model_validate(schedules.out(row))

    @router.delete("/{model}", status_code=204, summary="Remove a model's retrain schedule", responses=errors(404),
                   response_class=Response, dependencies=[require(Role.OPERATOR)])  # fmt: skip
    async def delete_schedule(model: ModelName) -> None:
        if not await schedules.delete(rt.db, model):
            raise NotFound(f"model {model!r} has no retrain schedule", model=model)

    app.include_router(router)


async def _existing(rt: Runtime, model: str) -> Any:
    row = await schedules.get(rt.db, model)
    if row is None:
        raise NotFound(f"model {model!r} has no retrain schedule", model=model)
    return row
