"""Scheduled retraining on the real stack: a due schedule queues a job once, across restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli.churn_stream import ChurnStream
from libs.common.artifacts import ArtifactStore
from libs.common.auth import Role
from services.trainer.app import create_app
from tests.conftest import Isolation, bearer, serve
from tests.factories import data_arrived
from tests.helpers import wait_until
from tests.integration.test_trainer import _known_rows, jobs, publish, settings

pytestmark = pytest.mark.integration


class Clock:
    """A clock the test moves: the schedule comes due without waiting for it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_due_schedule_retrains_once_and_survives_a_restart(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    arrived = data_arrived(store, "churn", [ChurnStream(seed=3).batch(700)])
    clock = Clock(datetime(2026, 11, 23, 2, 59, 50, tzinfo=UTC))
    # Too few rows for a first model by the data policy: only the schedule can start this job.
    config = settings(isolated, min_rows_first_model=10**6, schedules={"churn": "0 3 * * *"}, schedule_check_s=0.05,
                      batch_workers=0)  # fmt: skip
    app, _ = create_app(config, clock=clock)
    async with serve(app) as client:
        await publish(isolated, arrived[0])
        await wait_until(lambda: _known_rows(client, 700), message="the trainer to see the data")
        schedule = (await client.get("/v1/schedules/churn")).json()
        assert (schedule["cron"], schedule["source"]) == ("0 3 * * *", "setting")
        assert schedule["next_run_at"] == "2026-11-23T03:00:00+00:00"
        assert await jobs(client) == []  # not due yet

        clock.now = datetime(2026, 11, 23, 3, 0, 1, tzinfo=UTC)
        job = await wait_until(lambda: _one_job(client), timeout=60, message="the scheduled job")
        assert job["trigger"] == "schedule"
        assert job["reason"] == "schedule '0 3 * * *' due at 2026-11-23T03:00:00+00:00"
        fired = (await client.get("/v1/schedules/churn")).json()
        assert fired["last_job_id"] == job["id"]
        assert fired["next_run_at"] == "2026-11-24T03:00:00+00:00"
        assert fired["last_run_at"] == "2026-11-23T03:00:01+00:00"
        await wait_until(lambda: _status(client, job["id"], "succeeded"), timeout=120, message="the job to succeed")

    # A restart at the same moment neither fires the schedule again nor resets it (a queue-only replica:
    # a job it queued would show in the list all the same, and it starts no worker process to import).
    clock.now += timedelta(seconds=5)
    again, _ = create_app(config.model_copy(update={"workers": 0}), clock=clock)
    async with serve(again) as client:
        await wait_until(lambda: _checks(again) >= 3, message="the restarted scheduler to check a few times")
        assert len(await jobs(client)) == 1
        assert (await client.get("/v1/schedules/churn")).json()["next_run_at"] == "2026-11-24T03:00:00+00:00"


async def test_schedules_through_the_api(isolated: Isolation) -> None:
    clock = Clock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    config = settings(isolated, schedules={"churn": "@daily"}, schedule_check_s=0.05, workers=0, batch_workers=0)
    app, _ = create_app(config, clock=clock)  # no job runs here: no worker process to start
    async with serve(app) as client:
        put = await client.put("/v1/schedules/churn", json={"cron": "*/30 * * * 1-5"})
        assert put.status_code == 200, put.text
        assert put.json()["source"] == "api"
        assert put.json()["updated_by"] == "test-admin"
        assert put.json()["next_run_at"] == "2026-11-23T12:30:00+00:00"
        listed = (await client.get("/v1/schedules")).json()
        assert [(s["model"], s["cron"]) for s in listed] == [("churn", "*/30 * * * 1-5")]

        for cron, says in [("61 * * * *", "Bad minute"), ("0 3 * *", "4 fields"), ("@fortnightly", "1 fields")]:
            bad = await client.put("/v1/schedules/churn", json={"cron": cron})
            assert bad.status_code == 422, bad.text
            body = bad.json()
            assert body["error"] == "validation_failed"
            assert body["details"]["problems"][0]["field"] == "cron"
            assert says in body["message"]
        assert (await client.get("/v1/schedules/churn")).json()["cron"] == "*/30 * * * 1-5"  # nothing changed

        reader = await bearer(app, Role.READER, principal="viewer")
        assert (await client.put("/v1/schedules/churn", json={"cron": "@daily"}, headers=reader)).status_code == 403
        assert (await client.delete("/v1/schedules/churn")).status_code == 204
        missing = await client.get("/v1/schedules/churn")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


async def _one_job(client: Any) -> dict[str, Any] | None:
    listed = await jobs(client)
    return listed[0] if len(listed) == 1 else None


async def _status(client: Any, job_id: str, status: str) -> bool:
    return bool((await client.get(f"/v1/training-jobs/{job_id}")).json()["status"] == status)


def _checks(app: Any) -> float:
    """How often the app's scheduler looked for due schedules."""
    return app.state.runtime.telemetry.registry.get_sample_value("driftloop_schedule_checks_total") or 0.0
