"""The trainer service: retrain policy, durable jobs, worker processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from libs.common import topics
from libs.common.events import (
    BatchCompleted,
    DataArrived,
    DriftDetected,
    ModelExported,
    ModelPromoted,
    ModelRejudged,
    ModelTrained,
    RejudgementRequested,
    TrainingRequested,
)
from libs.common.kafka import Route, subscribe
from libs.common.service import Runtime, ServiceSpec, build
from libs.common.telemetry import Telemetry
from services.trainer import api, api_batch, api_schedules
from services.trainer.adapters import gc
from services.trainer.adapters.batch_runner import BatchRunner
from services.trainer.adapters.registry import Registry
from services.trainer.adapters.runner import JobRunner
from services.trainer.handlers import (
    data_arrived,
    drift_detected,
    model_promoted,
    planning,
    rejudgement_requested,
    training_requested,
)
from services.trainer.handlers.schedule_due import Clock, Scheduler, utc_now
from services.trainer.settings import TrainerSettings

GROUP = "trainer"


def spec(settings: TrainerSettings, clock: Clock = utc_now) -> ServiceSpec:
    """The trainer; ``clock`` tells scheduled retraining the time (tests move it instead of waiting)."""
    runners: list[JobRunner] = []
    batch: list[tuple[BatchRunner, Registry]] = []

    def wake() -> None:
        for runner in runners:
            runner.wake()

    def register(rt: Runtime) -> None:
        async def replan(model: str) -> None:
            await planning.replan(rt, settings, model, wake)

        runner = JobRunner(rt, settings, replan=replan)
        runners.append(runner)
        batch.append((BatchRunner(rt, settings), Registry(rt, settings)))
        routes = {
            topics.DATA_ARRIVED: Route(data_arrived.handler(rt, settings, wake), (DataArrived,)),
            topics.DRIFT_DETECTED: Route(drift_detected.handler(rt, settings, wake), (DriftDetected,)),
            topics.TRAINING_REQUESTED: Route(training_requested.handler(rt, settings, wake), (TrainingRequested,)),
            topics.REJUDGEMENT_REQUESTED: Route(
                rejudgement_requested.handler(rt, runner.rejudge), (RejudgementRequested,)
            ),
            topics.MODEL_PROMOTED: Route(model_promoted.handler(rt, settings), (ModelPromoted,)),
        }
        subscribe(rt.broker, routes, group=GROUP, settings=settings.kafka, telemetry=rt.telemetry)

    async def on_start(rt: Runtime) -> None:
        for runner in runners:
            runner.start()
        for batch_runner, _ in batch:
            batch_runner.start()
        rt.spawn(Scheduler(rt, settings, wake, clock).run(), "scheduler")

    async def on_stop(rt: Runtime) -> None:
        for runner in runners:
            await runner.stop()
        runners.clear()
        for batch_runner, registry in batch:
            await batch_runner.stop()
            await registry.close()
        batch.clear()

    return ServiceSpec(
        name="trainer",
        artifacts=gc.ARTIFACTS,
        retention=gc.RULES,
        publishes=(ModelTrained, ModelExported, ModelRejudged, BatchCompleted),
        migrations=Path(__file__).parent / "migrations",
        register=register,
        routes=lambda app, rt: _routes(app, rt, settings, wake, clock, *batch[-1]),
        on_start=on_start,
        on_stop=on_stop,
        description="Decides when to retrain, runs durable training jobs in worker processes, emits model.trained; "
        "runs scheduled retrains and batch prediction jobs (batch.completed).",
    )


def _routes(
    app: FastAPI, rt: Runtime, settings: TrainerSettings, wake: Callable[[], None], clock: Clock,
    batch_runner: BatchRunner, registry: Registry,
) -> None:  # fmt: skip
    api.mount(app, rt, settings, wake)
    api_schedules.mount(app, rt, settings, clock)
    api_batch.mount(app, rt, settings, batch_runner, registry)


def create_app(
    settings: TrainerSettings, telemetry: Telemetry | None = None, *, clock: Clock = utc_now
) -> tuple[FastAPI, Runtime]:
    return build(spec(settings, clock), settings, telemetry)
