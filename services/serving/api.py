"""HTTP API of serving: predictions, feedback labels, the models being served."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from libs.common.errors import NotFound, ValidationFailed
from libs.common.events import Label, LabelsArrived, PredictionRecord
from libs.common.frames import features_frame
from libs.common.schema import Task
from libs.common.service import Runtime
from libs.common.validation import validate_row
from services.serving.adapters.prediction_log import PredictionLog
from services.serving.domain.models import LoadedModel, ModelTable
from services.serving.settings import ServingSettings


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1, description="Feature rows as column → value.")


class LabelIn(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    label: Any


class FeedbackRequest(BaseModel):
    model: str
    labels: list[LabelIn] = Field(min_length=1, max_length=10_000)


def mount(app: FastAPI, rt: Runtime, settings: ServingSettings, table: ModelTable, plog: PredictionLog) -> None:
    router = APIRouter(tags=["predictions"])
    registry = rt.telemetry.registry
    latency = Histogram(
        "driftloop_prediction_latency_seconds", "Model inference time per request.", ["model"], registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    )  # fmt: skip
    predictions = Counter("driftloop_predictions_total", "Predictions served.", ["model", "version"], registry=registry)

    def serving(model: str) -> LoadedModel:
        loaded = table.get(model)
        if loaded is None:
            raise NotFound(f"model {model!r} is not served (no champion loaded)", model=model)
        return loaded

    @router.post("/v1/models/{model}/predict", summary="Predict for a batch of instances")
    async def predict(model: str, body: PredictRequest) -> dict[str, Any]:
        loaded = serving(model)  # taken once: a swap during this request does not affect it
        if len(body.instances) > settings.max_instances:
            raise ValidationFailed(
                f"{len(body.instances)} instances in one request; the limit is {settings.max_instances}"
            )
        rows = []
        for index, instance in enumerate(body.instances):
            row, problems = validate_row(loaded.schema, instance, from_text=False, require_target=False)
            if problems:
                field, problem = problems[0]
                raise ValidationFailed(f"instance {index}: {field}: {problem}", row=index, field=field)
            rows.append(row)
        started = time.perf_counter()
        frame = features_frame(loaded.schema, rows)
        if len(rows) > 64:  # larger batches off the event loop
            outputs, probabilities = await asyncio.to_thread(_infer, loaded, frame)
        else:
            outputs, probabilities = _infer(loaded, frame)
        latency.labels(model).observe(time.perf_counter() - started)
        results = []
        records = []
        for i, row in enumerate(rows):
            request_id = uuid.uuid4().hex
            prediction = _plain(outputs[i])
            probs = probabilities[i] if probabilities is not None else None
            results.append({"request_id": request_id, "prediction": prediction, "probabilities": probs})
            records.append(
                PredictionRecord(request_id=request_id, features=row, prediction=prediction, probabilities=probs)
            )
        span = trace.get_current_span()
        span.set_attribute("driftloop.model", model)
        span.set_attribute("driftloop.model.version", loaded.version)
        span.set_attribute("driftloop.request_ids", [r["request_id"] for r in results])
        plog.add(model, loaded.version, records, span.get_span_context())
        predictions.labels(model, str(loaded.version)).inc(len(rows))
        return {"model": model, "version": loaded.version, "predictions": results}

    @router.post("/v1/feedback", status_code=202, summary="True labels for earlier predictions")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        serving(body.model)
        event = LabelsArrived(
            producer="serving", model=body.model,
            labels=[Label(request_id=item.request_id, label=item.label) for item in body.labels],
        )  # fmt: skip
        await rt.publisher.publish_event(event)  # acknowledged by the broker before we answer
        return {"model": body.model, "accepted": len(body.labels)}

    @router.get("/v1/models", summary="Models served by this replica")
    async def list_models() -> list[dict[str, Any]]:
        return [_describe(m) for m in sorted(table.all(), key=lambda m: m.model)]

    @router.get("/v1/models/{model}", summary="The version served for a model")
    async def show_model(model: str) -> dict[str, Any]:
        return _describe(serving(model))

    app.include_router(router)


def _infer(loaded: LoadedModel, frame: Any) -> tuple[np.ndarray, list[dict[str, float]] | None]:
    outputs = loaded.pipeline.predict(frame)
    if loaded.schema.task is not Task.CLASSIFICATION or not hasattr(loaded.pipeline, "predict_proba"):
        return outputs, None
    classes = loaded.classes or []
    matrix = loaded.pipeline.predict_proba(frame)
    return outputs, [{c: round(float(p), 6) for c, p in zip(classes, row, strict=True)} for row in matrix]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _describe(m: LoadedModel) -> dict[str, Any]:
    return {
        "model": m.model,
        "version": m.version,
        "artifact": m.artifact.model_dump(),
        "loaded_at": m.loaded_at.isoformat(),
        "task": m.schema.task.value,
        "features": [f.name for f in m.schema.features],
    }
