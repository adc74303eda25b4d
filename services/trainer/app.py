"""The trainer service: retrain policy, durable jobs, worker processes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from libs.common import topics
from libs.common.events import DataArrived, DriftDetected, ModelPromoted, ModelTrained, TrainingRequested
from libs.common.kafka import Route, subscribe
from libs.common.service import Runtime, ServiceSpec, build
from libs.common.telemetry import Telemetry
from services.trainer import api
from services.trainer.adapters.runner import JobRunner
from services.trainer.handlers import data_arrived, drift_detected, model_promoted, training_requested
from services.trainer.settings import TrainerSettings

GROUP = "trainer"


def spec(settings: TrainerSettings) -> ServiceSpec:
    runners: list[JobRunner] = []

    def wake() -> None:
        for runner in runners:
            runner.wake()

    def register(rt: Runtime) -> None:
        routes = {
            topics.DATA_ARRIVED: Route(data_arrived.handler(rt, settings, wake), (DataArrived,)),
            topics.DRIFT_DETECTED: Route(drift_detected.handler(rt, settings, wake), (DriftDetected,)),
            topics.TRAINING_REQUESTED: Route(training_requested.handler(rt, settings, wake), (TrainingRequested,)),
            topics.MODEL_PROMOTED: Route(model_promoted.handler(rt, settings), (ModelPromoted,)),
        }
        subscribe(rt.broker, routes, group=GROUP, settings=settings.kafka, telemetry=rt.telemetry)

    async def on_start(rt: Runtime) -> None:
        runner = JobRunner(rt, settings)
        runner.start()
        runners.append(runner)

    async def on_stop(rt: Runtime) -> None:
        for runner in runners:
            await runner.stop()
        runners.clear()

    return ServiceSpec(
        name="trainer",
        publishes=(ModelTrained,),
        migrations=Path(__file__).parent / "migrations",
        register=register,
        routes=lambda app, rt: api.mount(app, rt, settings, wake),
        on_start=on_start,
        on_stop=on_stop,
        description="Decides when to retrain, runs durable training jobs in worker processes, emits model.trained.",
    )


def create_app(settings: TrainerSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    return build(spec(settings), settings, telemetry)
