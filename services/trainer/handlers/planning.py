"""Deciding and queueing jobs: shared by the topic handlers and the HTTP API."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest
from libs.common.events import ArtifactRef
from libs.common.service import Runtime
from libs.common.telemetry import inject_context
from services.trainer.adapters import repository
from services.trainer.domain.policy import (
    ROUTINE_TRIGGERS,
    Decision,
    ModelView,
    PolicyConfig,
    decide_on_data,
    decide_on_request,
)
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


def policy_config(settings: TrainerSettings) -> PolicyConfig:
    return PolicyConfig(
        min_rows_first_model=settings.min_rows_first_model,
        min_new_rows=settings.min_new_rows,
        drift_min_rows=settings.drift_min_rows,
        cooldown=timedelta(seconds=settings.drift_cooldown_s),
        refresh_growth=settings.refresh_growth,
    )


def models_for(settings: TrainerSettings, dataset: str) -> list[str]:
    """Models that learn from ``dataset`` by configuration (itself when none is configured)."""
    return [m for m, d in settings.models.items() if d == dataset] or [dataset]


def dataset_for(settings: TrainerSettings, model: str) -> str:
    return settings.models.get(model, model)


async def current_rows(conn: asyncpg.Connection, store: ArtifactStore, dataset: str) -> repository.DatasetRows | None:
    """The latest version's counts; its manifest is read only if the trainer missed some versions' events."""
    row = await repository.dataset(conn, dataset)
    if row is None:
        return None
    ref = ArtifactRef.model_validate_json(row["manifest"])
    rows = repository.DatasetRows(dataset, row["version"], row["total_rows"], ref)
    if await repository.counted_versions(conn, dataset, row["version"]) < row["version"]:
        rows = replace(rows, manifest=DatasetManifest.model_validate_json(store.get(ref)))
    return rows


async def model_view(
    conn: asyncpg.Connection, store: ArtifactStore, model: str, dataset: str
) -> tuple[ModelView, repository.DatasetRows | None]:
    await repository.ensure_model(conn, model, dataset)
    current = await current_rows(conn, store, dataset)
    return await repository.view(conn, model, current), current


async def plan(
    conn: asyncpg.Connection,
    store: ArtifactStore,
    settings: TrainerSettings,
    *,
    model: str,
    dataset: str,
    trigger_event_id: uuid.UUID | None = None,
    correlation_id: str | None = None,
    requested: bool = False,
    reason: str | None = None,
) -> tuple[Decision, uuid.UUID | None]:
    """Apply the retrain policy to ``model``: cancel what drift outranks, queue a job if it says so."""
    view, current = await model_view(conn, store, model, dataset)
    if requested:
        decision = decide_on_request(view)
    else:
        decision = decide_on_data(view, policy_config(settings), datetime.now(UTC))
    if requested and decision.train and reason:
        decision = Decision(True, reason, decision.trigger, decision.since)
    if decision.clear_drift:
        await repository.clear_drift(conn, model)
    if decision.cancel_routine:
        cancelled = await repository.cancel_routine(
            conn, model, f"cancelled: drift outranks routine work ({decision.reason})", ROUTINE_TRIGGERS
        )
        log.warning("cancelled routine job(s) of %s for drift: %s", model, [str(c) for c in cancelled])
    if not decision.train or current is None:
        return decision, None
    job_id = await repository.enqueue(
        conn,
        model=model,
        dataset_name=dataset,
        version=current.version,
        manifest_ref=current.manifest_ref,
        decision=decision,
        trigger_event_id=trigger_event_id,
        correlation_id=correlation_id,
        trace_headers=inject_context(),
    )
    return decision, job_id


async def replan(rt: Runtime, settings: TrainerSettings, model: str, on_queued: Callable[[], None]) -> None:
    """Re-apply the policy to ``model`` (a job ended, or a kept alarm's cool-down may be over)."""
    async with rt.db.acquire() as conn, conn.transaction():
        row = await repository.model_row(conn, model)
        if row is None:
            return
        decision, job_id = await plan(conn, rt.store, settings, model=model, dataset=row["dataset"])
    if job_id is not None:
        log.info("retrain policy after a job or cool-down: %s", decision.reason, extra={"model": model})
        on_queued()
