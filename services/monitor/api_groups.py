"""HTTP API of the live group metrics: per sensitive feature, the figures per group over the latest
labelled predictions of a version, and the fairness differences the trainer's holdout has too."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, Query
from pydantic import BaseModel, Field

from libs.common.auth import Role, require
from libs.common.errors import NotFound
from libs.common.http import errors
from libs.common.service import Runtime
from services.monitor.adapters.group_gauges import GroupGauges
from services.monitor.adapters.group_metrics import compute
from services.monitor.adapters.state import Monitors
from services.monitor.domain.groups import GroupFigures, LiveGroups
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.settings import MonitorSettings


class GroupRow(BaseModel):
    group: str = Field(description="The sensitive value; `(missing)` for a null, `(unknown)` when the value "
                       "never reached the monitor (an attribute not sent with the label).")  # fmt: skip
    count: int = Field(description="Labelled predictions of this group in the window.")
    compared: bool = Field(description="Whether the group enters the differences: known and at least "
                           "min_group_rows labelled predictions.")  # fmt: skip
    metrics: dict[str, float | None] = Field(
        description="classification: accuracy, error_rate, selection_rate, true_positive_rate, "
        "false_positive_rate (for the positive class); regression: mae, rmse. None where undefined.",
        examples=[{"accuracy": 0.8, "error_rate": 0.2, "selection_rate": 0.4}],
    )


class SensitiveFeature(BaseModel):
    feature: str
    source: Literal["input", "attribute"] = Field(
        description="input: the value is logged with the prediction; attribute: it comes with the label "
        "(`attributes` on POST /v1/feedback)."
    )
    unknown: int = Field(description="Labelled predictions whose value never reached the monitor.")
    differences: dict[str, float] = Field(
        description="The largest gap between compared groups per metric: demographic_parity_difference, "
        "equalized_odds_difference, accuracy_difference (classification) or mae_difference (regression).",
    )
    groups: list[GroupRow] = Field(description="Largest group first.")


class GroupMetrics(BaseModel):
    model: str
    version: int = Field(description="The version whose served, labelled predictions are grouped.")
    champion: int = Field(description="The version monitored as champion.")
    task: str
    labels: int = Field(description="Labelled predictions in the window (the newest, at most `window`).")
    window: int
    min_group_rows: int
    positive_class: str | None = Field(description="The class whose prediction counts as selected (binary).")
    sensitive: list[str] = Field(description="The sensitive features the dataset declares (none: nothing to group).")
    differences: dict[str, float] = Field(
        description="Flat `<metric>:<feature>` differences, named as in model.trained's `fairness` (holdout).",
        examples=[{"demographic_parity_difference:sex": 0.12}],
    )
    features: list[SensitiveFeature]


def mount(app: FastAPI, rt: Runtime, monitors: Monitors, settings: MonitorSettings, gauges: GroupGauges) -> None:
    router = APIRouter(prefix="/v1/models", tags=["fairness"])

    @router.get("/{model}/groups", summary="Live group metrics per declared sensitive feature, from labels",
                dependencies=[require(Role.READER)], responses=errors(404))  # fmt: skip
    async def groups(
        model: str,
        version: Annotated[int | None, Query(ge=1, description="A served version (default: the champion).")] = None,
        window: Annotated[int | None, Query(ge=10, le=100_000, description="Latest labelled predictions "
                                            "to group (default DRIFTLOOP_MONITOR_GROUP_WINDOW).")] = None,
    ) -> GroupMetrics:  # fmt: skip
        monitor = await monitors.load(rt.db, model, fresh=True)
        if monitor is None:
            raise NotFound(f"model {model!r} is not monitored (no champion promoted yet)", model=model)
        window = window or settings.group_window
        live = await compute(rt, monitor, settings, version or monitor.version, window)
        if live.version == monitor.version:
            gauges.record(model, live)
        return _answer(model, monitor, live, window, settings.min_group_rows)

    app.include_router(router)


def _answer(model: str, monitor: ModelMonitor, live: LiveGroups, window: int, min_group_rows: int) -> GroupMetrics:
    return GroupMetrics(
        model=model, version=live.version, champion=monitor.version, task=monitor.schema.task.value,
        labels=live.labels, window=window, min_group_rows=min_group_rows, positive_class=live.positive_class,
        sensitive=list(monitor.schema.sensitive), differences=live.differences,
        features=[SensitiveFeature(feature=f.feature, source=f.source, unknown=f.unknown,
                                   differences=f.differences, groups=[_row(g) for g in f.groups])
                  for f in live.features],
    )  # fmt: skip


def _row(g: GroupFigures) -> GroupRow:
    return GroupRow(group=g.group, count=g.count, compared=g.compared, metrics=g.metrics)
