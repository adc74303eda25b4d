"""The trainer service: retrain policy, durable jobs, worker processes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from libs.common import topics
from libs.common.events import (
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
from services.trainer import api
from services.trainer.adapters.runner import JobRunner
from services.trainer.handlers import (
    data_arrived,
    drift_detected,
    model_promoted,
    planning,
    rejudgement_requested,
    training_requested,
)
from services.trainer.settings import TrainerSettings

GROUP = "trainer"


def spec(settings: TrainerSettings) -> ServiceSpec:
    runners: list[JobRunner] = []

    def wake() -> None:
        for runner in runners:
            runner.wake()

    def register(rt: Runtime) -> None:
        async def replan(model: str) -> None:
            await planning.replan(rt, settings, model, wake)

        runner = JobRunner(rt, settings, replan=replan)
        runners.append(runner)
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

    async def on_stop(rt: Runtime) -> None:
        for runner in runners:
            await runner.stop()
        runners.clear()

    return ServiceSpec(
        name="trainer",
        publishes=(ModelTrained, ModelExported, ModelRejudged),
        migrations=Path(__file__).parent / "migrations",
        register=register,
        routes=lambda app, rt: api.mount(app, rt, settings, wake),
        on_start=on_start,
        on_stop=on_stop,
        description="Decides when to retrain, runs durable training jobs in worker processes, emits model.trained.",
    )


def create_app(settings: TrainerSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    return build(spec(settings), settings, telemetry)
