"""The training job, and the ONNX export that follows it, as they run in a worker process.

They run apart from the service's event loop so the Kafka consumer keeps
heart-beating while a search takes minutes. Their input and output are plain
dicts (they cross a process boundary); all I/O is against the artifact store.

The export is a second call (``export_job``), made after ``model.trained`` is
published: a new version serves on its pipeline at once, and on onnxruntime
once parity is checked. The worker that trained the version usually makes the
export too, from the pipeline and holdout still in its memory.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import BatchEntry, DatasetManifest, counted_sources, read_rows
from libs.common.events import ArtifactRef, OnnxExport
from libs.common.frames import features_frame
from libs.common.profile import ReferenceProfile, build_profile
from libs.common.schema import DatasetSchema, DType, Task
from services.trainer.adapters import gc, governance, pipelines
from services.trainer.adapters.rejudge import holdout_parquet
from services.trainer.domain.export import export
from services.trainer.domain.fairness import FairnessReport
from services.trainer.domain.training import TrainingConfig, TrainingResult, train

_PROVIDER: Any = None
#: The pipeline this process trained last and its holdout's features, for the export that follows.
_EXPORTABLE: dict[str, tuple[Any, pd.DataFrame]] = {}


def warm() -> None:
    """Import what a job will need before the job arrives (the warm worker calls it at start).

    The ONNX exporter and runtime and the tracing SDK are imported lazily by
    the code that uses them; in a cold process they cost seconds (tens under
    load), which would otherwise sit between an alarm and the retrained model.
    """
    import onnxruntime  # noqa: F401
    from opentelemetry.sdk import trace  # noqa: F401

    from services.trainer.domain import onnx_converters

    onnx_converters.register()  # imports skl2onnx and its converters


class Stages:
    """Wall seconds per step of a job, recorded with the job so the path to a served model can be read off."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, **attributes: Any) -> Iterator[None]:
        started = time.perf_counter()
        with self.tracer.start_as_current_span(name, attributes=attributes or None):
            yield
        self.seconds[name] = round(time.perf_counter() - started, 3)

    def record(self) -> list[dict[str, Any]]:
        """In the order they ran (a list: the job's JSON record keeps it)."""
        return [{"stage": name, "seconds": seconds} for name, seconds in self.seconds.items()]


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

    received = time.time()
    tracer = _tracer(spec.get("otlp_endpoint"))
    stages = Stages(tracer)
    # From the runner handing the job over to this process taking it: ~0 when the worker was warm.
    stages.seconds["worker_wait"] = round(max(0.0, received - spec.get("sent_at", received)), 3)
    try:
        with tracer.start_as_current_span("train", context=propagate.extract(spec.get("trace", {}))) as span:
            span.set_attribute("driftloop.dataset", spec["manifest"]["uri"])
            result = _run(spec, stages)
            result["stages"] = stages.record()
            return {**result, "received_at": received, "ended_at": time.time()}
    finally:
        _PROVIDER.force_flush()


def _run(spec: dict[str, Any], stage: Stages) -> dict[str, Any]:
    store = ArtifactStore(spec["artifacts_root"], namespace=gc.NAMESPACE)
    with stage("read"):
        manifest, frame, counts = _read(store, spec)
        schema = manifest.dataset_schema
    with stage("load champion"):
        champion = _champion(store, spec.get("champion_artifact"))
    earlier: list[tuple[int, Any]] = []
    if spec.get("earlier_champions"):
        with stage("load earlier champions"):
            earlier = _earlier(store, spec["earlier_champions"])
    config = TrainingConfig(**spec["config"])
    with stage("search and evaluate", **{"driftloop.rows": len(frame)}):
        result = train(schema, frame, config, champion, earlier)
    with stage("profile"):
        profile = _profile(schema, result, config.seed)
    with stage("governance"):
        holdout = governance.holdout_rows(schema, frame, result)
        rules = spec.get("governance", {})
        mine, theirs = governance.fairness(schema, holdout, result, champion, rules.get("min_group_rows", 20))
        facts = _card_facts(spec, manifest, frame, result, holdout, profile, mine)
    with stage("store"):
        model_ref, profile_ref, holdout_ref = _store(store, spec, result, profile, holdout)
    return {
        "params": result.params,
        "metrics": result.metrics,
        "champion_metrics": result.champion_metrics,
        "comparison": result.comparison,
        "primary_metric": result.primary_metric,
        "training_rows": result.training_rows,
        "holdout_rows": result.holdout_rows,
        "dataset_version": manifest.version,
        "dataset_rows": manifest.total_rows,
        "dataset_schema": schema.model_dump(mode="json"),
        "artifact": model_ref.model_dump(),
        "profile": profile_ref.model_dump(),
        "search": result.search,
        "reused_version": result.reused_version,
        "row_sources": [s.model_dump() for s in sources] if (sources := counted_sources(counts)) is not None else None,
        "holdout": holdout_ref.model_dump(),
        "fairness": mine.differences if mine else None,
        "champion_fairness": theirs.differences if theirs else None,
        **facts,
    }


def _read(
    store: ArtifactStore, spec: dict[str, Any]
) -> tuple[DatasetManifest, pd.DataFrame, list[tuple[BatchEntry, int]]]:
    """The job's dataset version and its training rows (a drift job's only from ``since`` on)."""
    manifest = DatasetManifest.model_validate_json(store.get(ArtifactRef.model_validate(spec["manifest"])))
    since = datetime.fromisoformat(spec["since"]) if spec.get("since") else None
    if not (manifest.since(since) if since else manifest.batches):
        raise ValueError(f"no batches of {manifest.dataset} v{manifest.version} since {since}")
    table, counts = read_training_rows(store, manifest, since, spec["config"].get("max_rows"))
    return manifest, table.to_pandas(), counts


def _card_facts(
    spec: dict[str, Any], manifest: DatasetManifest, frame: pd.DataFrame, result: TrainingResult,
    holdout: pd.DataFrame, profile: ReferenceProfile, fairness: FairnessReport | None,
) -> dict[str, Any]:  # fmt: skip
    """What the cards will say (``card_facts``), or why there will be none (``card_error``)."""
    try:  # a card that cannot be built never blocks the version: it says why instead
        return {"card_facts": governance.card_facts(manifest, frame, result, holdout, profile, fairness,
                                                    spec.get("job", {}), spec.get("governance", {}))}  # fmt: skip
    except Exception as exc:  # whatever it was: the version registers, with the reason
        return {"card_error": f"card facts failed: {type(exc).__name__}: {exc}"}


def _profile(schema: DatasetSchema, result: TrainingResult, seed: int) -> ReferenceProfile:
    """The reference profile the monitor compares live windows with: the training rows and predictions."""
    kinds: dict[str, Literal["numeric", "categorical"]] = {
        f.name: "categorical" if f.dtype is DType.CATEGORICAL else "numeric" for f in schema.features
    }
    return build_profile(
        {name: result.train_frame[name].to_numpy() for name in kinds},
        kinds,
        result.train_predictions,
        prediction_kind="categorical" if schema.task is Task.CLASSIFICATION else "numeric",
        metrics=result.metrics,
        holdout=(result.holdout_rows, result.holdout_loss_sd),
        seed=seed,
    )


def _store(
    store: ArtifactStore, spec: dict[str, Any], result: TrainingResult, profile: ReferenceProfile,
    holdout: pd.DataFrame,
) -> tuple[ArtifactRef, ArtifactRef, ArtifactRef]:  # fmt: skip
    """Store the pipeline, the profile and the holdout; keep the pipeline for the export that follows."""
    if result.reused_version is not None:  # the earlier champion's own bytes, not a re-serialisation
        model_ref = next(ArtifactRef.model_validate(e["artifact"]) for e in spec["earlier_champions"]
                         if e["version"] == result.reused_version)  # fmt: skip
    else:
        model_ref = store.put(models.dumps(result.pipeline), suffix=".skops")
    pipelines.keep(model_ref.sha256, result.pipeline)
    _EXPORTABLE.clear()
    _EXPORTABLE[model_ref.sha256] = (result.pipeline, result.holdout_frame)
    profile_ref = store.put(profile.to_bytes(), suffix=".profile.json")
    # The holdout is the newest rows: kept so a stale comparison can be re-judged on the same rows.
    holdout_ref = store.put(holdout_parquet(holdout), suffix=".holdout.parquet")
    return model_ref, profile_ref, holdout_ref


def read_training_rows(
    store: ArtifactStore, manifest: DatasetManifest, since: datetime | None, max_rows: int | None
) -> tuple[pa.Table, list[tuple[BatchEntry, int]]]:
    """The rows a job learns from: the labelled ones accepted since ``since``, only the newest ``max_rows``
    when training keeps no more (segments and row groups further back are never read)."""
    target = manifest.dataset_schema.target.name
    return read_rows(store, manifest.batches, since=since, max_rows=max_rows, labelled=target)


def _champion(store: ArtifactStore, artifact: dict[str, Any] | None) -> Any:
    """The champion's pipeline (kept in this process's memory: see ``pipelines``)."""
    return pipelines.load(store, ArtifactRef.model_validate(artifact)) if artifact else None


def _earlier(store: ArtifactStore, entries: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """(version, pipeline) of the earlier champions a drift job scores. One that no longer loads (its
    file gone, its signature refused) is left out: it is an option to weigh, and the drift job must land."""
    loaded = []
    for entry in entries:
        try:
            loaded.append((entry["version"], _champion(store, entry["artifact"])))
        except Exception as exc:  # whatever it was: the job goes on without that version
            logging.getLogger(__name__).warning("earlier champion v%s left out: %s", entry["version"], exc)
    return loaded


def export_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Export a trained version to ONNX and check parity on its holdout; return the export and its seconds."""
    from opentelemetry import propagate

    started = time.perf_counter()
    tracer = _tracer(spec.get("otlp_endpoint"))
    try:
        with tracer.start_as_current_span("onnx export and parity", context=propagate.extract(spec.get("trace", {}))):
            store = ArtifactStore(spec["artifacts_root"], namespace=gc.NAMESPACE)
            schema = DatasetSchema.model_validate(spec["dataset_schema"])
            artifact = ArtifactRef.model_validate(spec["artifact"])
            kept = _EXPORTABLE.pop(artifact.sha256) if artifact.sha256 in _EXPORTABLE else None
            pipeline, holdout = kept or _exportable(store, schema, artifact, spec)
            exported = export(schema, pipeline, holdout)
            onnx_ref = store.put(exported.onnx, suffix=".onnx") if exported.onnx is not None else None
            onnx = OnnxExport(artifact=onnx_ref, parity=exported.parity, detail=exported.detail)
        return {"onnx": onnx.model_dump(mode="json"), "seconds": round(time.perf_counter() - started, 3)}
    finally:
        _PROVIDER.force_flush()


def _exportable(
    store: ArtifactStore, schema: DatasetSchema, artifact: ArtifactRef, spec: dict[str, Any]
) -> tuple[Any, pd.DataFrame]:
    """The pipeline and its holdout's features from the store (another process trained it)."""
    holdout = pq.read_table(io.BytesIO(store.get(ArtifactRef.model_validate(spec["holdout"])))).to_pandas()
    return pipelines.load(store, artifact), features_frame(schema, holdout)


def export_onnx(store: ArtifactStore, schema: DatasetSchema, result: TrainingResult) -> OnnxExport:
    """The ONNX model, content-addressed like the pipeline, and its parity on the holdout.

    Kept even when parity failed (to look into why); serving runs it only when parity held.
    """
    exported = export(schema, result.pipeline, result.holdout_frame)
    artifact = store.put(exported.onnx, suffix=".onnx") if exported.onnx is not None else None
    return OnnxExport(artifact=artifact, parity=exported.parity, detail=exported.detail)
