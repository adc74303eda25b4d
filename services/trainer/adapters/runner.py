"""The job runner: claims queued jobs and runs each in a worker process of its own.

Jobs are rows, so a crash loses nothing: a job whose worker stops
heart-beating is re-queued after its lease by a watcher task that never
waits for a job, and a graceful stop hands a running job back to the queue
at once. A job cancelled in the database (drift outranks routine work) has
its worker killed at once (NOTIFY ``cancel:<id>``, and the heartbeat finds
out too), and its result is never registered: success is recorded only for
a job still ``running``. Workers are separate, pre-warmed processes (see
``processes``) so a long search never starves the Kafka consumer's
heartbeats, and a job starts without paying for imports.

Before a result is published, its comparison is checked: if the champion
changed while the job trained, the challenger is re-scored against the
current champion on the job's own holdout, so no better model is thrown away
for a stale comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram

from libs.common import outbox
from libs.common.events import ArtifactRef, Cards, ModelExported, ModelTrained, OnnxExport, Rejudgement
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from libs.common.signing import Signer
from libs.common.telemetry import inject_context
from services.trainer.adapters import governance, pipelines, repository
from services.trainer.adapters.processes import JobFailed, WorkerLost, Workers
from services.trainer.adapters.rejudge import rejudge
from services.trainer.adapters.worker import export_job, run_job
from services.trainer.domain.policy import ROUTINE_TRIGGERS
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
    def __init__(
        self, rt: Runtime, settings: TrainerSettings, replan: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        self.rt = rt
        self.settings = settings
        self.code_version = code_version(settings)
        self.workers = Workers(preload="services.trainer.adapters.worker:warm", max_jobs=settings.worker_max_jobs)
        self.replan = replan
        """Called with a model when its job ended: a kept alarm may act now."""
        # Only the trainer holds the private key: what it stores, it signs (libs/common/signing.py).
        self.signer = Signer.from_settings(settings.signing)
        if self.signer is None:
            log.warning(
                "no signing key (DRIFTLOOP_SIGNING_PRIVATE_KEY): serving and the monitor will refuse its models"
            )
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: set[uuid.UUID] = set()
        self._exports: set[asyncio.Task[None]] = set()
        """ONNX exports under way or waiting (each after its job's model.trained)."""
        self._replanned: dict[uuid.UUID, asyncio.Event] = {}
        """Per finished job: set once the policy was re-applied after it (its export waits for that)."""
        self._exporting = asyncio.Lock()
        """One export at a time: they are background work, never the critical path."""
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
        # The watcher runs on every replica: a queue-only one also re-queues abandoned jobs.
        self._tasks.append(asyncio.create_task(self._watch(), name="trainer-lease-watcher"))
        if self.settings.workers == 0:
            return  # a queue-only replica
        self.workers.warm_up()
        for i in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._loop(), name=f"trainer-runner-{i}"))
        self._tasks.append(asyncio.create_task(self._listen(), name="trainer-jobs-listen"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._exports]
        for task in tasks:
            task.cancel()
        self.workers.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._running:  # hand interrupted jobs back at once rather than after a lease
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await self.rt.db.execute(
                    "UPDATE jobs SET status = 'queued', attempts = greatest(attempts - 1, 0), worker_pid = NULL "
                    "WHERE id = ANY($1::uuid[]) AND status = 'running'",
                    list(self._running),
                )

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: uuid.UUID) -> bool:
        """Kill the worker of ``job_id`` if this replica runs it (the database already says ``cancelled``)."""
        killed = self.workers.kill(job_id)
        if killed:
            log.warning("training job cancelled: worker stopped", extra={"job_id": str(job_id)})
        return killed

    def _notified(self, payload: str) -> None:
        if payload.startswith("cancel:"):
            with contextlib.suppress(ValueError):
                self.cancel(uuid.UUID(payload.removeprefix("cancel:")))
        self._wake.set()

    async def _listen(self) -> None:
        schema = await self.rt.db.fetchval("SELECT current_schema()")
        channel = f"driftloop_jobs_{schema}"
        conn: asyncpg.Connection = await self.rt.db.acquire()
        try:
            await conn.add_listener(channel, lambda _c, _p, _ch, payload: self._notified(str(payload)))
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await conn.reset()
            await self.rt.db.release(conn)

    def watch_interval(self) -> float:
        """How often abandoned jobs are looked for: a lost job is re-queued within lease + 10 s."""
        return max(0.5, min(self.settings.job_lease_s / 3, 5.0))

    async def _watch(self) -> None:
        """Re-queue abandoned jobs and re-plan kept alarms, independently of any busy job loop."""
        while True:
            try:
                requeued = await repository.requeue_orphans(
                    self.rt.db, self.settings.job_lease_s, self.settings.max_job_attempts
                )
                if requeued:
                    log.warning("re-queued %d abandoned training jobs", requeued)
                    self._wake.set()
                self.queue_depth.set(await self.rt.db.fetchval("SELECT count(*) FROM jobs WHERE status = 'queued'"))
                if self.replan is not None:
                    for row in await repository.models_with_kept_drift(self.rt.db):
                        await self.replan(row["name"])
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("job queue unavailable: %s", exc)
            await asyncio.sleep(self.watch_interval())

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                job = await repository.claim(self.rt.db)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("job queue unavailable: %s", exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):  # not wait_for: see libs.common.tasks
                    async with asyncio.timeout(2.0):
                        await self._wake.wait()
                continue
            await self._execute(job)
            if self.replan is not None:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    await self.replan(job["model"])
            if (replanned := self._replanned.pop(job["id"], None)) is not None:
                replanned.set()  # the job's export may look at the queue now: a refresh is in it if one is due

    async def _execute(self, job: asyncpg.Record) -> None:
        job_id: uuid.UUID = job["id"]
        self._running.add(job_id)
        self.running.inc()
        started = time.monotonic()
        claimed = time.time()
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
                if job["trigger"] == "drift" and self.settings.reuse_earlier:
                    spec["earlier_champions"] = await repository.earlier_champions(
                        self.rt.db, job["model"], champion["champion_version"] if champion else None,
                        self.settings.reuse_earlier,
                    )  # fmt: skip
                # A routine job may be cancelled for drift: a spare warm worker then waits for the drift job.
                result = await self._in_worker(job_id, run_job, spec, spare=job["trigger"] in ROUTINE_TRIGGERS,
                                               holding=_sha(spec["champion_artifact"]))  # fmt: skip
                log.info("training job trained", extra={"job_id": str(job_id), "model": job["model"]})
                _bracket(result, claimed)
            except asyncio.CancelledError:
                raise
            except (JobFailed, WorkerLost) as exc:
                await self._failed(job, exc)
                return
            finally:
                heart.cancel()
                self._running.discard(job_id)
                self.running.dec()
            status = await self._complete(job, champion, result)
            if status == "succeeded":  # started in the job's span: the export and what it causes continue its trace
                self._export_later(job, result)
        self.duration.labels(job["trigger"]).observe(time.monotonic() - started)
        self.jobs_total.labels(status, job["trigger"]).inc()

    async def rejudge(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Re-score a challenger and the current champion on the challenger's holdout, in a worker process."""
        return await self._in_worker(uuid.uuid4(), rejudge, {"artifacts_root": self.settings.artifacts.root, **spec},
                                     holding=_sha(spec.get("challenger")))  # fmt: skip

    def _export_later(self, job: asyncpg.Record, result: dict[str, Any]) -> None:
        """Export the published version to ONNX in the background: the next job need not wait for it."""
        self._replanned[job["id"]] = asyncio.Event()
        task = asyncio.create_task(self._export(job, result), name=f"trainer-export-{job['id']}")
        self._exports.add(task)
        task.add_done_callback(self._exports.discard)

    async def _export(self, job: asyncpg.Record, result: dict[str, Any]) -> None:
        """ONNX export and parity of a published version, then ``model.exported`` (serving switches runtime).

        The export waits until the model has no training job queued or running (at most
        ``export_defer_s``): after a drift, refreshes follow one another, and an export beside
        them took a share of the cores they needed to land before the stream moved on; the
        version serves on its pipeline meanwhile. A version superseded by then (a newer job
        succeeded and the champion is another model) is not exported: it no longer serves.
        """
        with self.rt.telemetry.tracer.start_as_current_span(
            "onnx export", attributes={"driftloop.job_id": str(job["id"])}
        ):
            if not await self._export_due(job, result):
                return
            async with self._exporting:
                await self._export_in_worker(job, result)

    async def _export_due(self, job: asyncpg.Record, result: dict[str, Any]) -> bool:
        """Wait for the model's training queue to be idle; whether the version still needs its export."""
        deadline = time.monotonic() + self.settings.export_defer_s
        sha = result["artifact"]["sha256"]
        replanned = self._replanned.get(job["id"])
        if replanned is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.export_defer_s):
                    await replanned.wait()
        while True:
            try:
                busy, superseded = await repository.export_state(self.rt.db, job["model"], job["id"], sha)
            except (OSError, asyncpg.PostgresError):
                busy, superseded = False, False
            if not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        if superseded:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                detail = "not exported: a newer model was trained and the champion is another one before it was due"
                await repository.record_export(self.rt.db, job["id"], {"artifact": None, "parity": False,
                                                                       "detail": detail}, None)  # fmt: skip
            log.info("training job %s: export skipped, superseded", job["id"])
        return not superseded

    async def _export_in_worker(self, job: asyncpg.Record, result: dict[str, Any]) -> None:
        spec = {
            "trace": inject_context(),
            "otlp_endpoint": self.settings.telemetry.otlp_endpoint,
            "artifacts_root": self.settings.artifacts.root,
            "artifact": result["artifact"],
            "holdout": result["holdout"],
            "dataset_schema": result["dataset_schema"],
        }
        seconds = None
        try:
            # In the worker that trained the version (its pipeline is in memory); a job following
            # at once (a post-drift refresh) then needs another warm one: spare.
            answer = await self._in_worker(("export", job["id"]), export_job, spec, spare=True,
                                           holding=_sha(result["artifact"]))  # fmt: skip
            onnx, seconds = OnnxExport.model_validate(answer["onnx"]), answer["seconds"]
        except (JobFailed, WorkerLost) as exc:  # the version keeps serving on its pipeline
            onnx = OnnxExport(artifact=None, parity=False, detail=f"export did not finish: {exc}")
        onnx = self._signed_export(onnx)
        event = ModelExported(
            producer="trainer", correlation_id=job["correlation_id"], model=job["model"], job_id=str(job["id"]),
            artifact=self._signed(ArtifactRef.model_validate(result["artifact"])), onnx=onnx,
        )  # fmt: skip
        try:
            async with self.rt.db.acquire() as conn, conn.transaction():
                await repository.record_export(conn, job["id"], onnx.model_dump(mode="json"), seconds)
                await outbox.add(conn, event)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("ONNX export of job %s not recorded: %s", job["id"], exc)
            return
        log.info("training job %s exported: %s", job["id"], onnx.detail, extra={"parity": onnx.parity})

    async def _in_worker(
        self, job_id: Hashable, target: Any, spec: dict[str, Any], *, spare: bool = False, holding: str | None = None
    ) -> dict[str, Any]:
        """Run ``target(spec)`` in a warm worker, one that holds the pipeline ``holding`` (sha256) if any does
        (waiting ``holder_wait_s`` at most for it when it is busy with an export or a re-judgement)."""
        waited = await self.workers.holder_free(holding, self.settings.holder_wait_s)
        if waited > 0.01:
            log.info("waited %.2f s for the worker holding %s", waited, holding, extra={"job_id": str(job_id)})
        worker = self.workers.take(job_id, spare=spare, holding=holding)
        try:
            if isinstance(job_id, uuid.UUID) and job_id in self._running:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    await repository.set_worker(self.rt.db, job_id, worker.pid)
            log.info("worker %d started on %s", worker.pid, job_id, extra={"job_id": str(job_id)})
            # Only training jobs wear a worker out: an export or a re-judgement predicts with pipelines in memory.
            answer = await worker.run(target, {**spec, "sent_at": time.time()}, counted=target is run_job)
            worker.remember(_pipelines_used(spec, answer), pipelines.CAPACITY)
            return answer
        finally:
            self.workers.release(job_id)

    async def _failed(self, job: asyncpg.Record, exc: Exception) -> None:
        job_id = job["id"]
        status = await repository.job_status(self.rt.db, job_id)
        if status != "running":  # cancelled (or re-queued after a lost lease): not a failure of the job
            log.info("training job %s: worker stopped, job is %s", job_id, status)
            if status == "cancelled":
                self.jobs_total.labels("cancelled", job["trigger"]).inc()
            return
        retry = job["attempts"] < self.settings.max_job_attempts
        log.error("training job failed", extra={"job_id": str(job_id), "error": str(exc), "retry": retry})
        await repository.fail(self.rt.db, job_id, str(exc), retry)
        if not retry:
            self.jobs_total.labels("failed", job["trigger"]).inc()

    def _spec(self, job: asyncpg.Record, champion: asyncpg.Record | None) -> dict[str, Any]:
        s = self.settings
        quick = bool(job["quick"]) or job["trigger"] == "drift"
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
                # A job answering a drift (its first model, the refreshes while post-drift rows are few): short.
                "time_budget_s": s.drift_time_budget_s if quick else s.time_budget_s,
                # A drift job races a champion known to be bad: its one fit is cut at that budget too. A
                # refresh competes with a post-drift champion and is worth something only if better: its
                # fit is cut no sooner than a routine job's (cut under load, it stopped boosting and lost).
                "first_fit_budget_s": None if job["trigger"] == "drift" else s.time_budget_s,
                "n_jobs": s.search_jobs,
                "max_trees": s.max_trees,
                # A drift job's rows start where the monitor's window did: leave out those before the change.
                "trim_to_change": job["trigger"] == "drift",
                # Rows since a drift may still be mid-transition: the newest say best where the concept is now.
                "recency_half_life": s.recency_half_life if job["since"] else 0.0,
                # ... and all of them may not be the best window: the newest share may predict the present best.
                "recent_shares": tuple(s.recent_shares) if job["since"] else (),
                "recent_min_rows": s.recent_min_rows,
            },
            "governance": {
                "min_group_rows": s.min_group_rows,
                # Permutation importance was most of a drift job's card facts (LED, 24 features: 8 s under
                # load, the search 3 s): a job answering a drift, soon replaced, measures it on fewer rows.
                "importance_rows": min(s.importance_rows, s.quick_importance_rows) if quick else s.importance_rows,
                "importance_repeats": 1 if quick else s.importance_repeats,
                "seed": s.seed,
            },
            "job": {"id": str(job["id"]), "model": job["model"], "dataset": job["dataset"], "trigger": job["trigger"]},
        }

    async def _rejudge(
        self, job: asyncpg.Record, result: dict[str, Any], compared: int | None
    ) -> tuple[int | None, dict[str, Any] | None]:
        """Re-score against the current champion when it changed while the job trained.

        Returns the champion version the comparison now holds for and the
        re-judgement's record (None when nothing changed or it cannot be done).
        """
        last: dict[str, Any] | None = None
        for _ in range(3):  # the champion may move again while re-scoring
            current = await self.rt.db.fetchrow(
                "SELECT champion_version, champion_artifact FROM models WHERE name = $1", job["model"]
            )
            if current is None or current["champion_version"] in (None, compared) or not result.get("holdout"):
                return compared, last
            spec = {
                "artifacts_root": self.settings.artifacts.root,
                "holdout": result["holdout"],
                "challenger": result["artifact"],
                "champion": json.loads(current["champion_artifact"]),
                "dataset_schema": result["dataset_schema"],
            }
            try:
                scores = await self._in_worker(job["id"], rejudge, spec, holding=_sha(result["artifact"]))
            except (JobFailed, WorkerLost) as exc:
                log.warning("re-judgement of job %s failed: %s", job["id"], exc)
                return compared, last
            record = {
                "stale_champion_version": compared,
                "stale_champion_metrics": result["champion_metrics"],
                "champion_version": current["champion_version"],
                "champion_metrics": scores["champion_metrics"],
                "metrics": scores["metrics"],
                "fairness": scores.get("fairness"),
                "champion_fairness": scores.get("champion_fairness"),
                "comparison": scores.get("comparison"),
            }
            result["champion_metrics"] = scores["champion_metrics"]
            result["champion_fairness"] = scores.get("champion_fairness")
            result["comparison"] = scores.get("comparison")
            compared = current["champion_version"]
            log.info("re-judged job %s against champion v%s", job["id"], compared, extra=record)
            last = record
        return compared, last

    async def _complete(self, job: asyncpg.Record, champion: asyncpg.Record | None, result: dict[str, Any]) -> str:
        compared = champion["champion_version"] if champion and result["champion_metrics"] else None
        started = time.perf_counter()
        compared, rejudged = await self._rejudge(job, result, compared)
        if rejudged is not None:
            _stage(result, "rejudge", time.perf_counter() - started)
        cards = await self._cards(job, result, compared)
        event = self._trained(job, result, compared, rejudged, cards)
        async with self.rt.db.acquire() as conn, conn.transaction():
            # The baseline for "new rows since the last model": the version the job trained on.
            if not await repository.finish(conn, job["id"], result, result["dataset_rows"], job["model"]):
                log.warning("training job %s was cancelled meanwhile: its result is not registered", job["id"])
                return "cancelled"
            await outbox.add(conn, event)
        log.info(
            "training job succeeded",
            extra={"job_id": str(job["id"]), "model": job["model"], "metrics": result["metrics"]},
        )
        return "succeeded"

    async def _cards(self, job: asyncpg.Record, result: dict[str, Any], compared: int | None) -> Cards | None:
        """Store the version's model and data cards (off the loop) and note them, or why there are none, in
        ``result``."""
        started = time.perf_counter()
        cards, card_error = await asyncio.to_thread(
            governance.store_cards, self.settings.artifacts.root, result, compared
        )
        _stage(result, "cards", time.perf_counter() - started)
        result.pop("card_facts", None)  # in the cards now; the job's record keeps their refs
        result.update(cards=cards.model_dump(mode="json") if cards else None, card_error=card_error)
        if card_error:
            log.warning("training job %s: no cards: %s", job["id"], card_error)
        return cards

    def _trained(
        self, job: asyncpg.Record, result: dict[str, Any], compared: int | None, rejudged: dict[str, Any] | None,
        cards: Cards | None,
    ) -> ModelTrained:  # fmt: skip
        """The model.trained event of a finished job: its artifacts signed, the champion it was compared with."""
        return ModelTrained(
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
            champion_version=compared,
            primary_metric=result["primary_metric"],
            seed=self.settings.seed,
            code_version=self.code_version,
            training_rows=result["training_rows"],
            artifact=self._signed(ArtifactRef.model_validate(result["artifact"])),
            profile=self._signed(ArtifactRef.model_validate(result["profile"])),
            dataset_schema=DatasetSchema.model_validate(result["dataset_schema"]),
            row_sources=result.get("row_sources"),
            holdout=ArtifactRef.model_validate(result["holdout"]) if result.get("holdout") else None,
            rejudged=Rejudgement.model_validate(rejudged) if rejudged else None,
            fairness=result.get("fairness"),
            champion_fairness=result.get("champion_fairness"),
            comparison=result.get("comparison"),
            cards=cards,
            card_error=result["card_error"],
        )

    def _signed(self, ref: ArtifactRef) -> ArtifactRef:
        return self.signer.sign(ref) if self.signer is not None else ref

    def _signed_export(self, export: OnnxExport) -> OnnxExport:
        if export.artifact is None:
            return export
        return export.model_copy(update={"artifact": self._signed(export.artifact)})

    async def _heartbeat(self, job_id: uuid.UUID) -> None:
        """Renew the lease; a job no longer ``running`` in the database (cancelled, re-queued) loses its worker."""
        while True:
            await asyncio.sleep(max(0.5, min(self.settings.job_lease_s / 4, 5.0)))
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                if not await repository.heartbeat(self.rt.db, job_id):
                    self.cancel(job_id)
                    return


def _sha(artifact: dict[str, Any] | None) -> str | None:
    return str(artifact["sha256"]) if artifact else None


def _pipelines_used(spec: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    """The sha256 of the pipelines a worker loaded or trained for ``spec`` (what ``pipelines`` keeps), in that
    order: a training job's champion and earlier champions then its model, an export's model, a re-judgement's
    challenger and champion."""
    refs = [spec.get("champion_artifact"), *(e.get("artifact") for e in spec.get("earlier_champions") or []),
            spec.get("artifact"), spec.get("challenger"), spec.get("champion"), answer.get("artifact")]  # fmt: skip
    return [sha for ref in refs if isinstance(ref, dict) and (sha := _sha(ref))]


def _stage(result: dict[str, Any], name: str, seconds: float) -> None:
    result.setdefault("stages", []).append({"stage": name, "seconds": round(max(0.0, seconds), 3)})


def _bracket(result: dict[str, Any], claimed: float) -> None:
    """Add the runner's side to the worker's stages: from the claim to handing the job over, and the answer back.

    (The worker's own ``worker_wait`` is the time between the hand-over and the worker taking the job.)
    """
    received, ended = result.pop("received_at", None), result.pop("ended_at", None)
    if received is None or ended is None:
        return
    stages = result.get("stages", [])
    waited = sum(s["seconds"] for s in stages if s["stage"] == "worker_wait")
    result["stages"] = [{"stage": "hand-over", "seconds": round(max(0.0, received - claimed - waited), 3)}, *stages]
    _stage(result, "hand-back", time.time() - ended)
