"""HTTP API of the monitor: the current drift report of each model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from libs.common.auth import Role, require
from libs.common.errors import NotFound
from libs.common.service import Runtime
from services.monitor.adapters import repository
from services.monitor.adapters.state import Monitors
from services.monitor.domain.monitor import ModelMonitor


def mount(app: FastAPI, rt: Runtime, monitors: Monitors) -> None:
    router = APIRouter(prefix="/v1/models", tags=["drift"])

    @router.get("", summary="Models being monitored", dependencies=[require(Role.READER)])
    async def list_models() -> list[dict[str, Any]]:
        return [_summary(m) for m in sorted(monitors.all(), key=lambda m: m.model)]

    @router.get("/{model}/drift", summary="The latest drift report of a model, with its recent alarms",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def drift(model: str) -> dict[str, Any]:
        monitor = await monitors.load(rt.db, model, fresh=True)
        if monitor is None:
            raise NotFound(f"model {model!r} is not monitored (no champion promoted yet)", model=model)
        return {
            **_summary(monitor),
            "report": monitor.last_report.to_dict() if monitor.last_report else None,
            "alarms": await repository.recent_alarms(rt.db, model),
        }

    app.include_router(router)


def _summary(m: ModelMonitor) -> dict[str, Any]:
    performance = m.performance()
    return {
        "model": m.model,
        "version": m.version,
        "windows_evaluated": m.windows_evaluated,
        "current_window_records": m.window.records,
        "labels_seen": m.labels_seen,
        "live": None if performance is None else {"metric": performance.metric, "value": performance.live,
                                                  "holdout": performance.reference, "labels": performance.labels},
    }  # fmt: skip
