"""The job runner: claims queued jobs and runs them in worker processes.

Jobs are rows, so a crash loses nothing: a job whose worker stops
heart-beating is re-queued after its lease, and a graceful stop hands a
running job back to the queue at once. Workers are separate processes
(spawned, not forked: the service's threads and sockets must not be copied)
so a long search never starves the Kafka consumer's heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import subprocess
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram

from libs.common import outbox
from libs.common.events import ArtifactRef, ModelTrained, OnnxExport
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from libs.common.telemetry import inject_context
from services.trainer.adapters import repository
from services.trainer.adapters.worker import run_job
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


def code_version(settings: TrainerSettings) -> str:
    """The configured code version, else the git commit, else the package version."""
    if settings.code_version:
        return settings.code_version
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True, cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
        if commit:
            return f"git:{commit}"
    try:
        return f"driftloop=={version('driftloop')}"
    except PackageNotFoundError:
        return "unknown"


class JobRunner:
    def __init__(self, rt: Runtime, settings: TrainerSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.code_version = code_version(settings)
        self.executor = ProcessPoolExecutor(max(1, settings.workers), mp_context=multiprocessing.get_context("spawn"))
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: set[uuid.UUID] = set()
        registry = rt.telemetry.registry
        self.jobs_total = Counter(
            "driftloop_training_jobs_total", "Training jobs finished.", ["status", "trigger"], registry=registry
        )
        self.duration = Histogram(
            "driftloop_training_job_duration_seconds", "Training job wall time.", ["trigger"], registry=registry,
            buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
        )  # fmt: skip
        self.queue_depth = Gauge("driftloop_training_queue_depth", "Queued training jobs.", registry=registry)
        self.running = Gauge("driftloop_training_jobs_running", "Jobs running now.", registry=registry)

    def start(self) -> None:
        if self.settings.workers == 0:
            return  # a queue-only replica
        for i in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._loop(), name=f"trainer-runner-{i}"))
        self._tasks.append(asyncio.create_task(self._listen(), name="trainer-jobs-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._running:  # hand interrupted jobs back at once rather than after a lease
            await self.rt.db.execute(
                "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0) "
                "WHERE id = ANY($1::uuid[]) AND status = 'running'",
                list(self._running),
            )
        for process in list(getattr(self.executor, "_processes", {}).values()):
            process.terminate()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        schema = await self.rt.db.fetchval("SELECT current_schema()")
        channel = f"driftloop_jobs_{schema}"
        conn: asyncpg.Connection = await self.rt.db.acquire()
        try:
            await conn.add_listener(channel, lambda *_: self._wake.set())
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await conn.reset()
            await self.rt.db.release(conn)

    async def _loop(self) -> None:
        last_sweep = 0.0
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - last_sweep > self.settings.job_lease_s / 3:
                    last_sweep = time.monotonic()
                    requeued = await repository.requeue_orphans(
                        self.rt.db, self.settings.job_lease_s, self.settings.max_job_attempts
                    )
                    if requeued:
                        log.warning("re-queued %d orphaned training jobs", requeued)
                    self.queue_depth.set(await self.rt.db.fetchval("SELECT count(*) FROM jobs WHERE status = 'queued'"))
                job = await repository.claim(self.rt.db)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("job queue unavailable: %s", exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 2.0)
                continue
            await self._execute(job)

    async def _execute(self, job: asyncpg.Record) -> None:
        job_id: uuid.UUID = job["id"]
        self._running.add(job_id)
        self.running.inc()
        started = time.monotonic()
        parent = propagate.extract(json.loads(job["trace_headers"]))
        attributes = {
            "driftloop.model": job["model"],
            "driftloop.job_id": str(job_id),
            "driftloop.trigger": job["trigger"],
        }
        links = [
            trace.Link(ctx)
            for headers in json.loads(job["link_headers"])
            if (ctx := trace.get_current_span(propagate.extract(headers)).get_span_context()).is_valid
        ]
        with self.rt.telemetry.tracer.start_as_current_span(
            "training job", context=parent, attributes=attributes, links=links
        ):
            heart = asyncio.create_task(self._heartbeat(job_id))
            try:
                champion = await self.rt.db.fetchrow(
                    "SELECT champion_version, champion_artifact FROM models WHERE name = $1", job["model"]
                )
                spec = self._spec(job, champion)
                log.info("training job started", extra={"job_id": str(job_id), "model": job["model"]})
                result = await asyncio.get_running_loop().run_in_executor(self.executor, run_job, spec)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                retry = job["attempts"] < self.settings.max_job_attempts
                log.error("training job failed", extra={"job_id": str(job_id), "error": repr(exc), "retry": retry})
                await repository.fail(self.rt.db, job_id, f"{type(exc).__name__}: {exc}", retry)
                if not retry:
                    self.jobs_total.labels("failed", job["trigger"]).inc()
                return
            finally:
                heart.cancel()
                self._running.discard(job_id)
                self.running.dec()
            await self._complete(job, champion, result)
        self.duration.labels(job["trigger"]).observe(time.monotonic() - started)
        self.jobs_total.labels("succeeded", job["trigger"]).inc()

    def _spec(self, job: asyncpg.Record, champion: asyncpg.Record | None) -> dict[str, Any]:
        s = self.settings
        return {
            "trace": inject_context(),  # the worker process continues this job's trace
            "otlp_endpoint": s.telemetry.otlp_endpoint,
            "artifacts_root": s.artifacts.root,
            "manifest": json.loads(job["manifest"]),
            "since": job["since"].isoformat() if job["since"] else None,
            "champion_artifact": json.loads(champion["champion_artifact"])
            if champion and champion["champion_artifact"]
            else None,
            "config": {
                "seed": s.seed,
                "n_iter": s.search_iterations,
                "cv_folds": s.cv_folds,
                "holdout_fraction": s.holdout_fraction,
                "max_rows": s.max_training_rows,
                "time_budget_s": s.time_budget_s,
                "n_jobs": s.search_jobs,
                "max_trees": s.max_trees,
            },
        }

    async def _complete(self, job: asyncpg.Record, champion: asyncpg.Record | None, result: dict[str, Any]) -> None:
        event = ModelTrained(
            producer="trainer",
            correlation_id=job["correlation_id"],
            model=job["model"],
            dataset=job["dataset"],
            dataset_version=result["dataset_version"],
            job_id=str(job["id"]),
            trigger=job["trigger"],
            trigger_event_id=job["trigger_event_id"],
            params=result["params"],
            metrics=result["metrics"],
            champion_metrics=result["champion_metrics"],
            champion_version=champion["champion_version"] if champion and result["champion_metrics"] else None,
            primary_metric=result["primary_metric"],
            seed=self.settings.seed,
            code_version=self.code_version,
            training_rows=result["training_rows"],
            artifact=ArtifactRef.model_validate(result["artifact"]),
            profile=ArtifactRef.model_validate(result["profile"]),
            onnx=OnnxExport.model_validate(result["onnx"]) if result.get("onnx") else None,
            dataset_schema=DatasetSchema.model_validate(result["dataset_schema"]),
            row_sources=result.get("row_sources"),
        )
        async with self.rt.db.acquire() as conn, conn.transaction():
            # The baseline for "new rows since the last model": the version the job trained on.
            await repository.finish(conn, job["id"], result, result["dataset_rows"], job["model"])
            await outbox.add(conn, event)
        log.info(
            "training job succeeded",
            extra={"job_id": str(job["id"]), "model": job["model"], "metrics": result["metrics"]},
        )

    async def _heartbeat(self, job_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.settings.job_lease_s / 4))
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await repository.heartbeat(self.rt.db, job_id)
