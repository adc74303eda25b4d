"""The trainer service: retrain policy, durable jobs, worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    workers = _Workers(settings, clock)
    return ServiceSpec(
        name="trainer",
        artifacts=gc.ARTIFACTS,
        retention=gc.RULES,
        publishes=(ModelTrained, ModelExported, ModelRejudged, BatchCompleted),
        migrations=Path(__file__).parent / "migrations",
        register=workers.register,
        routes=workers.routes,
        on_start=workers.start,
        on_stop=workers.stop,
        description="Decides when to retrain, runs durable training jobs in worker processes, emits model.trained; "
        "runs scheduled retrains and batch prediction jobs (batch.completed).",
    )


@dataclass
class _Workers:
    """The trainer's job runners and batch runners: built with the runtime, started and stopped with the service."""

    settings: TrainerSettings
    clock: Clock
    runners: list[JobRunner] = field(default_factory=list)
    batch: list[tuple[BatchRunner, Registry]] = field(default_factory=list)

    def wake(self) -> None:
        for runner in self.runners:
            runner.wake()

    def register(self, rt: Runtime) -> None:
        settings, wake = self.settings, self.wake

        async def replan(model: str) -> None:
            await planning.replan(rt, settings, model, wake)

        runner = JobRunner(rt, settings, replan=replan)
        self.runners.append(runner)
        self.batch.append((BatchRunner(rt, settings), Registry(rt, settings)))
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

    def routes(self, app: FastAPI, rt: Runtime) -> None:
        batch_runner, registry = self.batch[-1]
        api.mount(app, rt, self.settings, self.wake)
        api_schedules.mount(app, rt, self.settings, self.clock)
        api_batch.mount(app, rt, self.settings, batch_runner, registry)

    async def start(self, rt: Runtime) -> None:
        for runner in self.runners:
            runner.start()
        for batch_runner, _ in self.batch:
            batch_runner.start()
        rt.spawn(Scheduler(rt, self.settings, self.wake, self.clock).run(), "scheduler")

    async def stop(self, rt: Runtime) -> None:
        for runner in self.runners:
            await runner.stop()
        self.runners.clear()
        for batch_runner, registry in self.batch:
            await batch_runner.stop()
            await registry.close()
        self.batch.clear()


def create_app(
    settings: TrainerSettings, telemetry: Telemetry | None = None, *, clock: Clock = utc_now
) -> tuple[FastAPI, Runtime]:
    return build(spec(settings, clock), settings, telemetry)
