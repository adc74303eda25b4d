"""HTTP API of the monitor: the current drift report of each model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from libs.common.auth import Role, require
from libs.common.errors import NotFound
from libs.common.http import errors
from libs.common.schema import Task
from libs.common.service import Runtime
from services.monitor.adapters import repository, versions
from services.monitor.adapters.repository import StoredReport
from services.monitor.adapters.state import Monitors
from services.monitor.domain.groups import LiveGroups
from services.monitor.domain.monitor import ModelMonitor


class Render(Protocol):
    """Renders a model's drift report page from its monitor, judged windows (oldest first) and alarms (newest
    first): :func:`services.monitor.report.render.render`, handed in by the app (a view sits above the API)."""

    def __call__(
        self,
        monitor: ModelMonitor,
        reports: list[StoredReport],
        alarms: list[dict[str, Any]],
        *,
        groups: LiveGroups | None = None,
    ) -> str: ...


class LivePerformance(BaseModel):
    metric: str = Field(description="The live metric: accuracy (classification) or rmse (regression).")
    value: float = Field(description="Its value over the recent labelled predictions.")
    holdout: float = Field(description="The same metric on the version's holdout, the reference.")
    labels: int = Field(description="Labels the live value is computed over.")


class MonitoredModel(BaseModel):
    model: str
    version: int = Field(description="The version monitored (the champion).")
    windows_evaluated: int
    current_window_records: int = Field(description="Predictions in the window being filled.")
    labels_seen: int
    live: LivePerformance | None = Field(description="None until the version's holdout metric is known.")


class VersionLive(BaseModel):
    version: int
    shadow: bool = Field(description="Scores of the shadow's copies (never served) rather than served answers.")
    labels: int = Field(description="Labelled predictions scored.")
    mean: float = Field(description="Mean score: accuracy (classification) or mean squared error (regression).")


class VersionsLive(BaseModel):
    model: str
    champion: int
    score: str = Field(description="What a labelled prediction scores.")
    versions: list[VersionLive]
    challengers: dict[str, Any] = Field(
        description="canary/shadow → version, since, and comparison with the champion: metric, labels and value on "
        "each side, difference (positive: challenger better) with its 95 % interval and method; canary: Newcombe "
        "(accuracy) or Welch (mse) on each version's own requests; shadow: paired on the same requests."
    )


class Alarm(BaseModel):
    event_id: str = Field(description="The drift.detected event raised.")
    version: int
    kinds: list[str] = Field(examples=[["data_drift", "performance"]])
    summary: str | None
    at: str = Field(description="When it was raised (ISO 8601).")


class DriftState(MonitoredModel):
    report: dict[str, Any] | None = Field(
        description="The last judged window: records, kinds, reason, per-feature statistics and thresholds."
    )
    alarms: list[Alarm] = Field(description="The latest alarms, newest first.")


#: The live group metrics of a monitored model's champion, for its drift report (None: not computed).
LiveGroupsOf = Callable[[ModelMonitor], Awaitable[LiveGroups | None]]


REPORT_PAGE = {
    "content": {"text/html": {}},
    "description": "The report: per feature the reference against the current window with its statistics, the live "
    "metric over time and the alarms; inline SVG, no external resource.",
}


def mount(app: FastAPI, rt: Runtime, monitors: Monitors, render: Render, groups: LiveGroupsOf | None = None) -> None:
    router = APIRouter(prefix="/v1/models", tags=["drift"])

    @router.get("", summary="Models being monitored", dependencies=[require(Role.READER)])
    async def list_models() -> list[MonitoredModel]:
        return [_summary(m) for m in sorted(monitors.all(), key=lambda m: m.model)]

    @router.get("/{model}/drift", summary="The latest drift report of a model, with its recent alarms",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def drift(model: str) -> DriftState:
        monitor = await _monitored(rt, monitors, model)
        return DriftState(
            **_summary(monitor).model_dump(),
            report=monitor.last_report.to_dict() if monitor.last_report else None,
            alarms=[Alarm(**a) for a in await repository.recent_alarms(rt.db, model)],
        )

    _mount_report(router, rt, monitors, render, groups)

    @router.get("/{model}/versions", summary="Live metrics per version, and the canary's and shadow's comparison "
                "with the champion", responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def live_versions(model: str) -> VersionsLive:
        monitor = await _monitored(rt, monitors, model)
        classification = monitor.schema.task is Task.CLASSIFICATION
        return VersionsLive(
            model=model,
            champion=monitor.version,
            score="correct (1/0)" if classification else "squared error",
            versions=[VersionLive(**v) for v in await versions.per_version(rt.db, model)],
            challengers=await versions.comparisons(rt.db, model, monitor.version, classification),
        )

    app.include_router(router)


def _mount_report(
    router: APIRouter, rt: Runtime, monitors: Monitors, render: Render, groups: LiveGroupsOf | None
) -> None:
    """The drift report page: the report renderer and the live group metrics are handed in by the app."""

    @router.get("/{model}/drift/report", summary="The drift report of a model as a self-contained HTML page",
                response_class=HTMLResponse, dependencies=[require(Role.READER)],
                responses={**errors(404), 200: REPORT_PAGE})  # fmt: skip
    async def drift_report(
        model: str, windows: Annotated[int, Query(ge=1, le=1000, description="Judged windows on the timeline.")] = 200
    ) -> HTMLResponse:
        monitor = await _monitored(rt, monitors, model)
        reports = await repository.recent_reports(rt.db, model, windows)
        alarms = await repository.recent_alarms(rt.db, model)
        live = await groups(monitor) if groups is not None else None
        return HTMLResponse(render(monitor, reports, alarms, groups=live))


async def _monitored(rt: Runtime, monitors: Monitors, model: str) -> ModelMonitor:
    monitor = await monitors.load(rt.db, model, fresh=True)
    if monitor is None:
        raise NotFound(f"model {model!r} is not monitored (no champion promoted yet)", model=model)
    return monitor


def _summary(m: ModelMonitor) -> MonitoredModel:
    performance = m.performance()
    live = None
    if performance is not None:
        live = LivePerformance(metric=performance.metric, value=performance.live, holdout=performance.reference,
                               labels=performance.labels)  # fmt: skip
    return MonitoredModel(
        model=m.model, version=m.version, windows_evaluated=m.windows_evaluated,
        current_window_records=m.window.records, labels_seen=m.labels_seen, live=live,
    )  # fmt: skip
