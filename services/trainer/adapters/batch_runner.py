"""The batch runner: claims queued batch prediction jobs and runs them chunk by chunk in worker processes.

Like training jobs, batch jobs are rows leased by a heartbeat: a job whose
runner stops renewing it is re-queued by a watcher on any replica, and a
graceful stop hands running jobs back at once. Each finished chunk is a
Parquet artifact recorded in ``batch_chunks`` before the next one starts, so a
job taken up again (after a crash of its worker, of the trainer, or a lost
lease) predicts only the chunks not recorded yet. Batch workers are their own
pool, apart from the training workers, so a long batch job never delays a
drift retrain; they run nicer than the trainer (``batch_nice``) and never in serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter

from libs.common import outbox
from libs.common.errors import ArtifactError
from libs.common.events import ArtifactRef, BatchCompleted
from libs.common.service import Runtime
from libs.common.signing import Signer, Verifier
from services.trainer.adapters import batch_jobs
from services.trainer.adapters.batch_worker import assemble, predict_chunk
from services.trainer.adapters.processes import JobFailed, WorkerLost, Workers
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


def verifier(settings: TrainerSettings, signer: Signer | None, rt: Runtime) -> Verifier:
    """The keys serving accepts (``DRIFTLOOP_SIGNING_PUBLIC_KEYS``) and the trainer's own public key."""
    checker = Verifier.from_settings(settings.signing, rt.telemetry.registry)
    if signer is not None:
        checker.keys[signer.key_id] = signer.private.public_key()
    return checker


class BatchRunner:
    def __init__(self, rt: Runtime, settings: TrainerSettings) -> None:
        self.rt, self.settings = rt, settings
        self.signer = Signer.from_settings(settings.signing)
        self.verifier = verifier(settings, self.signer, rt)
        self.workers = Workers(preload="services.trainer.adapters.batch_worker:warm", max_idle=1)
        """A spare waits beside a running job: if its worker dies, the job resumes at once in a warm process."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: set[uuid.UUID] = set()
        registry = rt.telemetry.registry
        self.jobs_total = Counter("driftloop_batch_jobs_total", "Batch jobs ended.", ["status"], registry=registry)
        self.rows_total = Counter("driftloop_batch_rows_total", "Rows predicted by batch jobs.", registry=registry)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._watch(), name="trainer-batch-watcher"))
        if self.settings.batch_workers == 0:
            return
        self.workers.warm_up()
        for i in range(self.settings.batch_workers):
            self._tasks.append(asyncio.create_task(self._loop(), name=f"trainer-batch-{i}"))
        self._tasks.append(asyncio.create_task(self._listen(), name="trainer-batch-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.workers.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._running:  # hand interrupted jobs back at once rather than after a lease
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await batch_jobs.hand_back(self.rt.db, list(self._running))

    def wake(self) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        schema = await self.rt.db.fetchval("SELECT current_schema()")
        conn: asyncpg.Connection = await self.rt.db.acquire()
        try:
            await conn.add_listener(f"driftloop_batch_{schema}", lambda *args: self._notified(args[-1]))
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await conn.reset()
            await self.rt.db.release(conn)

    def _notified(self, payload: str) -> None:
        """A job was queued (wake a runner) or cancelled (kill its worker if it runs here)."""
        if payload.startswith("cancel:"):
            with contextlib.suppress(ValueError):
                self.cancel(uuid.UUID(payload.removeprefix("cancel:")))
            return
        self._wake.set()

    def cancel(self, job_id: uuid.UUID) -> bool:
        """Kill the worker of ``job_id`` if this replica runs it (the database already says ``cancelled``;
        the heartbeat would find it within a quarter of the lease otherwise)."""
        if job_id not in self._running:
            return False
        self.workers.kill(job_id)
        log.warning("batch job %s cancelled: worker stopped", job_id)
        return True

    async def _watch(self) -> None:
        """Re-queue jobs whose runner went silent; a job lost too often fails, with its event."""
        while True:
            try:
                lost = await batch_jobs.requeue_orphans(
                    self.rt.db, self.settings.job_lease_s, self.settings.max_job_attempts
                )
                for row in lost:
                    if row["status"] == "failed":
                        await self._publish_failed(row)
                if lost:
                    log.warning("re-queued or failed %d abandoned batch jobs", len(lost))
                    self._wake.set()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("batch queue unavailable: %s", exc)
            await asyncio.sleep(max(0.5, min(self.settings.job_lease_s / 3, 5.0)))

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                job = await batch_jobs.claim(self.rt.db)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("batch queue unavailable: %s", exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):  # not wait_for: see libs.common.tasks
                    async with asyncio.timeout(2.0):
                        await self._wake.wait()
                continue
            await self._execute(job)

    async def _execute(self, job: asyncpg.Record) -> None:
        job_id: uuid.UUID = job["id"]
        self._running.add(job_id)
        heart = asyncio.create_task(self._heartbeat(job_id))
        try:
            with self.rt.telemetry.tracer.start_as_current_span(
                "batch job", attributes={"driftloop.model": job["model"], "driftloop.job_id": str(job_id)}
            ):
                await self._run(job)
        except (JobFailed, WorkerLost, ArtifactError) as exc:
            await self._failed(job, exc)
        except (OSError, asyncpg.PostgresError) as exc:  # the lease runs out; the watcher re-queues it
            log.warning("batch job %s interrupted: %s", job_id, exc)
        finally:
            heart.cancel()
            self._running.discard(job_id)
            self.workers.release(job_id)

    async def _run(self, job: asyncpg.Record) -> None:
        job_id: uuid.UUID = job["id"]
        artifact = ArtifactRef.model_validate_json(job["artifact"])
        self.verifier.verify(artifact, "model")  # as serving does, before a byte of it is read
        spec = self._spec(job, artifact)
        done = await batch_jobs.done_chunks(self.rt.db, job_id)
        log.info("batch job %s: %d of %d chunks to predict", job_id, job["chunks"] - len(done), job["chunks"])
        worker = self.workers.take(job_id, spare=True)
        await batch_jobs.set_worker(self.rt.db, job_id, worker.pid)
        for seq in range(job["chunks"]):
            if seq in done:
                continue
            answer = await worker.run(predict_chunk, {**spec, "chunk": seq})
            if not await batch_jobs.chunk_done(self.rt.db, job_id, seq, answer["rows"], answer["artifact"]):
                log.warning("batch job %s no longer ours (cancelled or lease lost), stopped at chunk %d", job_id, seq)
                return
            self.rows_total.inc(answer["rows"])
            done[seq] = ArtifactRef.model_validate(answer["artifact"])
        chunks = [done[seq].model_dump(mode="json") for seq in range(job["chunks"])]
        assembled = await worker.run(assemble, {"artifacts_root": self.settings.artifacts.root, "chunks": chunks})
        await self._succeeded(job, self._signed(ArtifactRef.model_validate(assembled["artifact"])), assembled["rows"])

    def _spec(self, job: asyncpg.Record, artifact: ArtifactRef) -> dict[str, Any]:
        source = json.loads(job["input"])
        return {
            "artifacts_root": self.settings.artifacts.root,
            "schema": json.loads(job["dataset_schema"]),
            "artifact": artifact.model_dump(mode="json"),
            "segments": source["segments"],
            "chunk_rows": job["chunk_rows"],
            "id_column": source.get("id_column"),
            "nice": self.settings.batch_nice,
        }

    def _signed(self, ref: ArtifactRef) -> ArtifactRef:
        return self.signer.sign(ref) if self.signer is not None else ref

    async def _succeeded(self, job: asyncpg.Record, output: ArtifactRef, rows: int) -> None:
        async with self.rt.db.acquire() as conn, conn.transaction():
            row = await batch_jobs.succeed(conn, job["id"], output.model_dump(mode="json"))
            if row is None:
                return
            await outbox.add(conn, batch_event(row, "succeeded", rows, output=output))
        self.jobs_total.labels("succeeded").inc()
        log.info("batch job %s succeeded: %d rows", job["id"], rows, extra={"model": job["model"]})

    async def _failed(self, job: asyncpg.Record, exc: Exception) -> None:
        retry = job["attempts"] < self.settings.max_job_attempts and not isinstance(exc, ArtifactError)
        async with self.rt.db.acquire() as conn, conn.transaction():
            row = await batch_jobs.fail(conn, job["id"], str(exc), retry=retry)
            if row is None:  # cancelled (its worker was killed for it) or re-queued after a lost lease
                log.info("batch job %s stopped: no longer running here (%s)", job["id"], exc)
            elif not retry:
                await outbox.add(conn, batch_event(row, "failed", 0, error=str(exc)))
                self.jobs_total.labels("failed").inc()
        if row is not None:
            log.warning("batch job %s failed (%s): %s", job["id"], "will retry" if retry else "for good", exc)
        self._wake.set()

    async def _publish_failed(self, row: asyncpg.Record) -> None:
        async with self.rt.db.acquire() as conn, conn.transaction():
            await outbox.add(conn, batch_event(row, "failed", 0, error=row["error"]))
        self.jobs_total.labels("failed").inc()

    async def _heartbeat(self, job_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(max(0.2, min(self.settings.job_lease_s / 4, 5.0)))
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                if not await batch_jobs.heartbeat(self.rt.db, job_id):
                    self.workers.kill(job_id)
                    return


def batch_event(
    row: asyncpg.Record, status: str, rows: int, *, output: ArtifactRef | None = None, error: str | None = None
) -> BatchCompleted:
    """The ``batch.completed`` of a job that ended (``row``: its batch_jobs row)."""
    source = json.loads(row["input"])
    started = row["started_at"] or row["created_at"]
    return BatchCompleted(
        producer="trainer", correlation_id=row["correlation_id"], job_id=str(row["id"]), model=row["model"],
        version=row["version"], status=status, rows=rows, dataset=source.get("dataset"),
        dataset_version=source.get("dataset_version"),
        upload=ArtifactRef.model_validate(source["upload"]) if source.get("upload") else None, output=output,
        error=error, seconds=max(0.0, ((row["finished_at"] or datetime.now(UTC)) - started).total_seconds()),
    )  # fmt: skip
