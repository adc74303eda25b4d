"""The trainer's runner on the real stack: drift cancels routine work, crashed workers, abandoned jobs."""

from __future__ import annotations

import os
import re
import signal
import uuid
from typing import Any

import pytest

from cli.churn_stream import ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest
from libs.common.events import DataArrived, DriftDetected, ModelTrained, parse_event
from services.trainer.app import create_app
from tests.conftest import Isolation, serve
from tests.factories import data_arrived, promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_trainer import jobs, publish, settings
from tests.workload import process_gone, spawned_workers

pytestmark = pytest.mark.integration

#: A routine job on this many rows runs long enough to be interfered with; the drift job's 600 rows do not.
BIG = 60_000


def _slow_then_small(store: ArtifactStore) -> tuple[list[DataArrived], Any]:
    """A big first batch (a long routine job) and a small one after it (the post-drift rows)."""
    stream = ChurnStream(seed=9)
    arrived = data_arrived(store, "churn", [stream.batch(BIG), stream.batch(600)])
    manifest = DatasetManifest.model_validate_json(store.get(arrived[1].manifest))
    return arrived, manifest.batches[1].created_at


async def _running(client: Any) -> dict[str, Any] | None:
    return next((j for j in await jobs(client, status="running") if j["worker_pid"]), None)


async def test_drift_cancels_the_running_routine_job_whose_result_is_never_registered(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    champion = trained_model(store, seed=5, rows=800)
    arrived, post_drift = _slow_then_small(store)
    app, runtime = create_app(settings(isolated, drift_min_rows=500, max_training_rows=BIG))
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, champion), arrived[0])
        routine = await wait_until(lambda: _running(client), timeout=90, message="the routine job's worker")
        assert routine["trigger"] == "new_data"
        await publish(isolated, arrived[1])

        async def all_rows() -> bool:
            state = (await client.get("/v1/models/churn")).json()
            return bool(state["total_rows"] == BIG + 600 and state["champion_version"] == 1)

        await wait_until(all_rows, message="the trainer to see the post-drift rows")
        drift = DriftDetected(producer="monitor", model="churn", version=1, dataset="churn", kinds=["performance"],
                              window_size=500, window_started_at=post_drift, summary="live accuracy fell")  # fmt: skip
        await publish(isolated, drift)

        async def cancelled() -> dict[str, Any] | None:
            job = (await client.get(f"/v1/training-jobs/{routine['id']}")).json()
            return job if job["status"] == "cancelled" else None

        job = await wait_until(cancelled, timeout=30, message="the routine job to be cancelled")
        assert "drift outranks routine work" in job["cancel_reason"]
        assert job["metrics"] is None
        await wait_until(lambda: process_gone(routine["worker_pid"]), timeout=10, message="the worker to be gone")

        async def drift_done() -> dict[str, Any] | None:
            found = [j for j in await jobs(client) if j["trigger"] == "drift"]
            assert all(j["status"] != "failed" for j in found), found
            return next((j for j in found if j["status"] == "succeeded"), None)

        done = await wait_until(drift_done, timeout=120, message="the drift job")
        assert done["since"] == post_drift.isoformat()
        # Even a result arriving in the race window is refused: success is recorded only for a running job.
        async with runtime.db.acquire() as conn, conn.transaction():
            from services.trainer.adapters import repository

            assert not await repository.finish(conn, uuid.UUID(routine["id"]), {"x": 1}, BIG, "churn")
        assert (await client.get(f"/v1/training-jobs/{routine['id']}")).json()["status"] == "cancelled"
    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_TRAINED), expect=1)
    trained = [parse_event(r.value) for r in records]
    assert all(isinstance(e, ModelTrained) for e in trained)
    assert [e.job_id for e in trained if isinstance(e, ModelTrained)] == [done["id"]]  # never the cancelled job
    event = trained[0]
    assert isinstance(event, ModelTrained)
    assert event.training_rows == 480  # 600 post-drift rows, the newest 20% held out


async def test_a_crashed_worker_costs_one_attempt_and_abandoned_jobs_are_requeued_while_busy(
    isolated: Isolation,
) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    arrived, _ = _slow_then_small(store)
    lease = 3.0
    app, runtime = create_app(settings(isolated, max_training_rows=BIG, job_lease_s=lease))
    async with serve(app) as client:
        await publish(isolated, arrived[0])
        first = await wait_until(lambda: _running(client), timeout=90, message="the job's worker")
        os.kill(first["worker_pid"], signal.SIGKILL)  # a crash (out of memory, a segfault)

        async def second_attempt() -> dict[str, Any] | None:
            job = await _running(client)
            return job if job and job["attempts"] == 2 and job["worker_pid"] != first["worker_pid"] else None

        retry = await wait_until(second_attempt, timeout=60, message="a new worker for the second attempt")
        assert retry["id"] == first["id"]
        # The killed worker's end is seen on the pipe either way round: reading (no answer) or writing (broken pipe).
        lost = rf"^worker {first['worker_pid']} ended (without an answer|before answering)"
        assert re.search(lost, retry["error"] or ""), retry["error"]
        assert not process_gone(retry["worker_pid"])
        # The only job loop is busy; the watcher still re-queues a job abandoned by a lost replica.
        orphan = uuid.uuid4()
        await runtime.db.execute(
            "INSERT INTO jobs (id, model, dataset, dataset_version, manifest, trigger, reason, status, attempts, "
            "started_at, heartbeat_at) SELECT $2, 'other', dataset, dataset_version, manifest, 'request', 'orphaned', "
            "'running', 1, now() - interval '1 hour', now() - interval '1 hour' FROM jobs WHERE id = $1",
            uuid.UUID(first["id"]), orphan,
        )  # fmt: skip

        async def requeued() -> bool:
            return bool(await runtime.db.fetchval("SELECT status = 'queued' FROM jobs WHERE id = $1", orphan))

        await wait_until(requeued, timeout=lease + 10, message="the abandoned job to be re-queued within lease + 10 s")
        assert (await _running(client) or {}).get("id") == first["id"]  # the busy loop never paused for it
    # A stopped trainer leaves no worker behind (the running one, nor a warm spare).
    await wait_until(lambda: not spawned_workers(), timeout=10, message="every worker process to be gone")
