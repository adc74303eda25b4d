"""The training job as it runs in a worker process.

It runs apart from the service's event loop so the Kafka consumer keeps
heart-beating while a search takes minutes. Its input and output are plain
dicts (they cross a process boundary); all I/O is against the artifact store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest, read_batches, row_sources
from libs.common.events import ArtifactRef, OnnxExport
from libs.common.profile import build_profile
from libs.common.schema import DatasetSchema, DType, Task
from services.trainer.adapters.rejudge import holdout_parquet
from services.trainer.domain.export import export
from services.trainer.domain.training import TrainingConfig, TrainingResult, train

_PROVIDER: Any = None


def _tracer(endpoint: str | None) -> Any:
    """A tracer for this worker process (one provider per process, exporting over OTLP when configured)."""
    global _PROVIDER
    from opentelemetry import trace

    if _PROVIDER is None:
        from libs.common.settings import TelemetrySettings
        from libs.common.telemetry import setup_telemetry

        _PROVIDER = setup_telemetry("trainer-worker", TelemetrySettings(otlp_endpoint=endpoint)).tracer_provider
    return trace.get_tracer("driftloop.trainer.worker", tracer_provider=_PROVIDER)


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one job in the trace of the job that queued it; return what ``model.trained`` needs."""
    from opentelemetry import propagate

    tracer = _tracer(spec.get("otlp_endpoint"))
    try:
        with tracer.start_as_current_span("train", context=propagate.extract(spec.get("trace", {}))) as span:
            span.set_attribute("driftloop.dataset", spec["manifest"]["uri"])
            return _run(spec, tracer)
    finally:
        _PROVIDER.force_flush()


def _run(spec: dict[str, Any], tracer: Any) -> dict[str, Any]:
    store = ArtifactStore(spec["artifacts_root"])
    manifest = DatasetManifest.model_validate_json(store.get(ArtifactRef.model_validate(spec["manifest"])))
    since = datetime.fromisoformat(spec["since"]) if spec.get("since") else None
    batches = manifest.since(since) if since else manifest.batches
    if not batches:
        raise ValueError(f"no batches of {manifest.dataset} v{manifest.version} since {since}")
    frame = read_batches(store, batches).to_pandas()
    schema = manifest.dataset_schema
    champion = None
    if spec.get("champion_artifact"):
        champion = models.load(store, ArtifactRef.model_validate(spec["champion_artifact"]))
    config = TrainingConfig(**spec["config"])
    with tracer.start_as_current_span("search and evaluate", attributes={"driftloop.rows": len(frame)}):
        result = train(schema, frame, config, champion)
    kinds: dict[str, Literal["numeric", "categorical"]] = {
        f.name: "categorical" if f.dtype is DType.CATEGORICAL else "numeric" for f in schema.features
    }
    profile = build_profile(
        {name: result.train_frame[name].to_numpy() for name in kinds},
        kinds,
        result.train_predictions,
        prediction_kind="categorical" if schema.task is Task.CLASSIFICATION else "numeric",
        metrics=result.metrics,
        seed=config.seed,
    )
    model_ref = store.put(models.dumps(result.pipeline), suffix=".skops")
    profile_ref = store.put(profile.to_bytes(), suffix=".profile.json")
    with tracer.start_as_current_span("onnx export and parity"):
        onnx = export_onnx(store, schema, result)
    # The holdout is the newest rows: kept so a stale comparison can be re-judged on the same rows.
    holdout = frame.dropna(subset=[schema.target.name]).tail(result.holdout_rows)
    holdout_ref = store.put(holdout_parquet(holdout), suffix=".holdout.parquet")
    return {
        "params": result.params,
        "metrics": result.metrics,
        "champion_metrics": result.champion_metrics,
        "primary_metric": result.primary_metric,
        "training_rows": result.training_rows,
        "holdout_rows": result.holdout_rows,
        "dataset_version": manifest.version,
        "dataset_rows": manifest.total_rows,
        "dataset_schema": schema.model_dump(mode="json"),
        "artifact": model_ref.model_dump(),
        "profile": profile_ref.model_dump(),
        "onnx": onnx.model_dump(mode="json"),
        "search": result.search,
        "row_sources": [s.model_dump() for s in sources] if (sources := row_sources(batches)) is not None else None,
        "holdout": holdout_ref.model_dump(),
    }


def export_onnx(store: ArtifactStore, schema: DatasetSchema, result: TrainingResult) -> OnnxExport:
    """The ONNX model, content-addressed like the pipeline, and its parity on the holdout.

    Kept even when parity failed (to look into why); serving runs it only when parity held.
    """
    exported = export(schema, result.pipeline, result.holdout_frame)
    artifact = store.put(exported.onnx, suffix=".onnx") if exported.onnx is not None else None
    return OnnxExport(artifact=artifact, parity=exported.parity, detail=exported.detail)
