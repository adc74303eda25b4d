"""Real artifacts for tests: dataset versions written as ingest writes them, and
models trained and profiled as the trainer does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from cli.churn_stream import SCHEMA, ChurnStream
from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import BatchEntry, DatasetManifest, batch_to_parquet
from libs.common.events import AliasMove, ArtifactRef, DataArrived, ModelPromoted, OnnxExport
from libs.common.profile import build_profile
from libs.common.schema import DatasetSchema, DType
from services.trainer.adapters.worker import export_onnx
from services.trainer.domain.training import TrainingConfig, train
from tests.keys import signed

CHURN = DatasetSchema.model_validate(SCHEMA)


def data_arrived(
    store: ArtifactStore, dataset: str, batches: list[list[dict[str, Any]]], schema: DatasetSchema = CHURN
) -> list[DataArrived]:
    """One data.arrived per batch, with real Parquet batches and manifests in ``store``."""
    entries: list[BatchEntry] = []
    events = []
    total = 0
    for seq, rows in enumerate(batches, start=1):
        now = datetime.now(UTC)
        ref = store.put(batch_to_parquet(schema, rows, now), suffix=".parquet")
        entries.append(BatchEntry(seq=seq, artifact=ref, rows=len(rows), created_at=now))
        total += len(rows)
        manifest = DatasetManifest(dataset=dataset, version=seq, dataset_schema=schema, batches=list(entries))
        manifest_ref = store.put(manifest.model_dump_json().encode(), suffix=".manifest.json")
        events.append(DataArrived(
            producer="test", dataset=dataset, version=seq, batch=ref, manifest=manifest_ref, rows_accepted=len(rows),
            rows_rejected=0, total_rows=total, dataset_schema=schema,
        ))  # fmt: skip
    return events


@dataclass
class TrainedModel:
    artifact: ArtifactRef
    profile: ArtifactRef
    metrics: dict[str, float]
    pipeline: Any
    onnx: OnnxExport | None = None


def trained_model(
    store: ArtifactStore, *, seed: int = 7, rows: int = 2000, drifted: bool = False, onnx: bool = False
) -> TrainedModel:
    """A model trained as the trainer does (and exported to ONNX as it does, with ``onnx``)."""
    frame = pd.DataFrame(ChurnStream(seed=seed, drifted=drifted).batch(rows))
    config = TrainingConfig(seed=seed, n_iter=1, time_budget_s=600, n_jobs=1)  # one fit, the same every run
    result = train(CHURN, frame, config)
    kinds: dict[str, Any] = {
        f.name: "categorical" if f.dtype is DType.CATEGORICAL else "numeric" for f in CHURN.features
    }
    profile = build_profile({k: result.train_frame[k].to_numpy() for k in kinds}, kinds, result.train_predictions,
                            prediction_kind="categorical", metrics=result.metrics)  # fmt: skip
    return TrainedModel(
        artifact=signed(store.put(models.dumps(result.pipeline), suffix=".skops")),
        profile=signed(store.put(profile.to_bytes(), suffix=".profile.json")),
        metrics=result.metrics,
        pipeline=result.pipeline,
        onnx=_signed_export(export_onnx(store, CHURN, result)) if onnx else None,
    )


def _signed_export(export: OnnxExport) -> OnnxExport:
    return export.model_copy(update={"artifact": signed(export.artifact)}) if export.artifact else export


def promoted(model: str, version: int, trained: TrainedModel, previous: int | None = None) -> ModelPromoted:
    return ModelPromoted(
        producer="test", model=model, version=version, dataset=model,
        move=AliasMove(alias="champion", from_version=previous, to_version=version),
        artifact=trained.artifact, profile=trained.profile, dataset_schema=CHURN, metrics=trained.metrics,
        reason="test", actor="test",
    )  # fmt: skip
