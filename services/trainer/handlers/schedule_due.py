"""Scheduled retraining: a clock tick fires the schedules that came due, as retrain-policy triggers.

Every replica ticks; each due schedule is claimed with ``FOR UPDATE SKIP
LOCKED`` and moved to its next time in the same transaction that queues its
job, so a due time fires once whatever the number of replicas or restarts.
The clock is injected (tests move it instead of waiting for a minute).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Counter

from libs.common.service import Runtime
from libs.common.telemetry import inject_context
from services.trainer.adapters import repository, schedules
from services.trainer.domain.schedule import decide_on_schedule, next_run
from services.trainer.handlers.planning import dataset_for, model_view
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


async def apply_settings(rt: Runtime, settings: TrainerSettings, now: datetime) -> None:
    """Create the schedules the settings name. A schedule registered through the API wins over the
    setting; one that came from the setting is replaced only when the expression changed (so a
    restart neither resets nor repeats its next run)."""
    async with rt.db.acquire() as conn, conn.transaction():
        for model, cron in settings.schedules.items():
            await schedules.put_from_settings(conn, model=model, dataset=dataset_for(settings, model), cron=cron,
                                              next_run_at=next_run(cron, now))  # fmt: skip


async def fire_due(rt: Runtime, now: datetime) -> list[tuple[str, uuid.UUID | None]]:
    """Fire every schedule due at ``now`` (one transaction each); return (model, job queued or None)."""
    fired: list[tuple[str, uuid.UUID | None]] = []
    while True:
        async with rt.db.acquire() as conn, conn.transaction():
            row = await schedules.claim_due(conn, now)
            if row is None:
                return fired
            job_id, outcome = await _fire(conn, rt, row)
            await schedules.fired(conn, row["model"], at=now, next_run_at=next_run(row["cron"], now),
                                  job_id=job_id, outcome=outcome)  # fmt: skip
        log.info("schedule of %s fired: %s", row["model"], outcome, extra={"model": row["model"]})
        fired.append((row["model"], job_id))


async def _fire(conn: asyncpg.Connection, rt: Runtime, row: asyncpg.Record) -> tuple[uuid.UUID | None, str]:
    view, current = await model_view(conn, rt.store, row["model"], row["dataset"])
    decision = decide_on_schedule(view, row["cron"], row["next_run_at"])
    if not decision.train or current is None:
        return None, decision.reason
    job_id = await repository.enqueue(
        conn, model=row["model"], dataset_name=row["dataset"], version=current.version,
        manifest_ref=current.manifest_ref, decision=decision, trigger_event_id=None, correlation_id=None,
        trace_headers=inject_context(),
    )  # fmt: skip
    return job_id, decision.reason if job_id else f"{decision.reason}: another job was queued first"


class Scheduler:
    """The clock task: every ``schedule_check_s``, fire what came due and wake the job runners."""

    def __init__(self, rt: Runtime, settings: TrainerSettings, on_queued: Callable[[], None], clock: Clock) -> None:
        self.rt, self.settings, self.on_queued, self.clock = rt, settings, on_queued, clock
        self._applied = False
        registry = rt.telemetry.registry
        self.checks = Counter("driftloop_schedule_checks_total", "Checks for due schedules.", registry=registry)
        self.fired = Counter(
            "driftloop_schedules_fired_total", "Schedules that came due, by outcome.", ["outcome"], registry=registry
        )

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("schedules not checked: %s", exc)
            await asyncio.sleep(self.settings.schedule_check_s)

    async def check(self) -> None:
        if not self._applied:  # the settings' schedules exist from the first check on
            await apply_settings(self.rt, self.settings, self.clock())
            self._applied = True
        fired = await fire_due(self.rt, self.clock())
        for _, job_id in fired:
            self.fired.labels("queued" if job_id else "skipped").inc()
        if any(job_id for _, job_id in fired):
            self.on_queued()
        self.checks.inc()
