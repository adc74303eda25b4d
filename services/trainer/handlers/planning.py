"""Deciding and queueing jobs: shared by the topic handlers and the HTTP API."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest
from libs.common.events import ArtifactRef
from libs.common.telemetry import inject_context
from services.trainer.adapters import repository
from services.trainer.domain.policy import Decision, ModelView, PolicyConfig, decide_on_data, decide_on_request
from services.trainer.settings import TrainerSettings


def policy_config(settings: TrainerSettings) -> PolicyConfig:
    return PolicyConfig(
        min_rows_first_model=settings.min_rows_first_model,
        min_new_rows=settings.min_new_rows,
        drift_min_rows=settings.drift_min_rows,
        cooldown=timedelta(seconds=settings.drift_cooldown_s),
    )


def models_for(settings: TrainerSettings, dataset: str) -> list[str]:
    """Models that learn from ``dataset`` by configuration (itself when none is configured)."""
    return [m for m, d in settings.models.items() if d == dataset] or [dataset]


def dataset_for(settings: TrainerSettings, model: str) -> str:
    return settings.models.get(model, model)


async def current_manifest(
    conn: asyncpg.Connection, store: ArtifactStore, dataset: str
) -> tuple[DatasetManifest, ArtifactRef] | None:
    row = await repository.dataset(conn, dataset)
    if row is None:
        return None
    ref = ArtifactRef.model_validate_json(row["manifest"])
    return DatasetManifest.model_validate_json(store.get(ref)), ref


async def model_view(
    conn: asyncpg.Connection, store: ArtifactStore, model: str, dataset: str
) -> tuple[ModelView, tuple[DatasetManifest, ArtifactRef] | None]:
    await repository.ensure_model(conn, model, dataset)
    current = await current_manifest(conn, store, dataset)
    return await repository.view(conn, model, current[0] if current else None), current


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
    """Apply the retrain policy to ``model`` and queue a job if it says so."""
    view, current = await model_view(conn, store, model, dataset)
    decision = decide_on_request(view) if requested else decide_on_data(view, policy_config(settings))
    if requested and decision.train and reason:
        decision = Decision(True, reason, decision.trigger)
    if not decision.train or current is None:
        return decision, None
    manifest, ref = current
    job_id = await repository.enqueue(
        conn,
        model=model,
        dataset_name=dataset,
        manifest=manifest,
        manifest_ref=ref,
        decision=decision,
        trigger_event_id=trigger_event_id,
        correlation_id=correlation_id,
        trace_headers=inject_context(),
    )
    return decision, job_id
