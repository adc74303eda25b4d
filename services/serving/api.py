"""HTTP API of serving: predictions, feedback labels, the models being served.

The predict path is kept lean: the body is parsed with orjson straight into
columns (no pydantic model and no DataFrame per request), checked by the
version's compiled schema, inferred through the version's micro-batcher
(on the event loop for small batches, so no thread hop), answered with
orjson, and handed to the prediction log, which builds its records later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from libs.common import idempotency, jsonbody
from libs.common.auth import Principal, Role, require
from libs.common.errors import NotFound, ValidationFailed
from libs.common.events import Label, LabelsArrived
from libs.common.http import NO_BODY, errors, json_body
from libs.common.idempotency import IdempotencyKey, RecentKeys, fingerprint
from libs.common.ratelimit import RateLimit
from libs.common.request_ids import RequestIds, screen
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from libs.common.validation import InvalidValue, coerce
from services.serving.adapters.prediction_log import PredictionLog
from services.serving.adapters.shadow import ShadowCopies
from services.serving.api_models import (
    Batching,
    CanaryServed,
    FeedbackAccepted,
    FeedbackProblem,
    PredictResponse,
    ServedModel,
    ServedModelSplit,
    ShadowServed,
    Split,
)
from services.serving.domain.features import Columns, InvalidInstance
from services.serving.domain.feedback import check_attributes
from services.serving.domain.models import Inference, LoadedModel, ModelTable
from services.serving.domain.predictions import Served, plain_list, probability_dicts
from services.serving.domain.routing import Splits
from services.serving.settings import ServingSettings


class PredictRequest(BaseModel):
    """The body of ``POST /v1/models/{m}/predict`` (documentation only: it is parsed with orjson)."""

    instances: list[dict[str, Any]] = Field(min_length=1, description="Feature rows as column → value.")


class LabelIn(BaseModel):
    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")
    label: str | int | float | bool = Field(description="The true value; checked against the model's target column.")
    attributes: dict[str, str | int | float | bool | None] | None = Field(
        default=None, max_length=32,
        description="Values of the schema's declared sensitive columns, typically attributes that are not model "
        "inputs (e.g. sex), for the monitor's live group metrics; never given to the model.",
        examples=[{"sex": "f"}],
    )  # fmt: skip


class FeedbackRequest(BaseModel):
    model: str
    labels: list[LabelIn] = Field(min_length=1, max_length=10_000)


@dataclass
class Predictor:
    """Inference, metrics, trace attributes and the prediction log: what every predict route shares,
    whether FastAPI or the hot path (``services/serving/hotpath.py``) answers it."""

    latency: Histogram
    predictions: Counter
    plog: PredictionLog
    ids: RequestIds
    """Mints the request ids (tagged for the model, so feedback can prove serving issued them)."""
    table: ModelTable
    max_instances: int
    splits: Splits[LoadedModel] = field(default_factory=Splits)
    """The canary and shadow of each model (``services/serving/domain/routing.py``)."""
    shadows: ShadowCopies | None = None
    _children: dict[tuple[str, int], tuple[Histogram, Counter]] = field(default_factory=dict)

    def serving(self, model: str) -> LoadedModel:
        loaded = self.table.get(model)
        if loaded is None:
            raise NotFound(f"model {model!r} is not served (no champion loaded)", model=model)
        return loaded

    def route(self, model: str, key: str | None) -> tuple[LoadedModel, str]:
        """The version that answers (champion, or the canary for its share) and its alias."""
        return self.splits.pick(model, self.serving(model), key)

    async def answer_v1(self, model: str, document: Any, key: str | None = None) -> bytes:
        """The JSON answer of ``POST /v1/models/{model}/predict`` for the parsed body ``document``; ``key``
        is the ``X-Routing-Key`` header (or the body's ``routing_key``) that keeps a caller on one version."""
        instances = parse_instances(document, self.max_instances)
        if key is None and isinstance(routing := document.get("routing_key"), str | int):
            key = str(routing)
        loaded, alias = self.route(model, key)  # taken once: a swap during this request does not affect it
        try:
            columns = loaded.compiled.from_instances(instances)
        except InvalidInstance as exc:
            raise ValidationFailed(str(exc), row=exc.index, field=exc.field) from None
        request_ids, inference = await self.predict(model, loaded, columns)
        labels = plain_list(inference.labels)
        probabilities = probability_dicts(inference.probabilities, loaded.classes, columns.rows)
        results = [
            {"request_id": i, "prediction": label, "probabilities": p}
            for i, label, p in zip(request_ids, labels, probabilities, strict=True)
        ]
        return orjson.dumps({"model": model, "version": loaded.version, "alias": alias, "predictions": results})

    async def predict(self, model: str, loaded: LoadedModel, columns: Columns) -> tuple[list[str], Inference]:
        started = time.perf_counter()
        inference = await loaded.batcher.submit(columns)
        latency, predictions = self._metrics(model, loaded.version)
        latency.observe(time.perf_counter() - started)
        request_ids = self.ids.mint_many(model, columns.rows)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("driftloop.model", model)
            span.set_attribute("driftloop.model.version", loaded.version)
            span.set_attribute("driftloop.request_ids", request_ids)
        served = Served(request_ids, columns, inference, loaded.classes, loaded.compiled.features, datetime.now(UTC))
        self.plog.add(model, loaded.version, served, span.get_span_context())
        predictions.inc(columns.rows)
        if self.shadows is not None and (split := self.splits.get(model)) is not None and split.shadow is not None:
            self.shadows.copy(model, split.shadow, loaded, columns, request_ids)
        return request_ids, inference

    def _metrics(self, model: str, version: int) -> tuple[Histogram, Counter]:
        # A label lookup takes a lock and hashes its values: done once per version, not per request.
        key = (model, version)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = (self.latency.labels(model), self.predictions.labels(model, str(version)))
        return found


JSON = "application/json"
ROUTING_HEADER = "x-routing-key"
"""A caller's routing key (customer, session): the same key always reaches the same version of a split."""


def json_response(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type=JSON)


def mount(
    app: FastAPI, rt: Runtime, settings: ServingSettings, table: ModelTable, plog: PredictionLog, ids: RequestIds,
    splits: Splits[LoadedModel] | None = None,
) -> Predictor:  # fmt: skip
    predictor = _predictor(rt, settings, table, plog, ids, splits or Splits())
    router = APIRouter(tags=["predictions"])
    _mount_predict(router, predictor)
    _mount_feedback(router, rt, settings, predictor)
    _mount_models(router, predictor)
    app.include_router(router)
    return predictor


def _predictor(
    rt: Runtime, settings: ServingSettings, table: ModelTable, plog: PredictionLog, ids: RequestIds,
    splits: Splits[LoadedModel],
) -> Predictor:  # fmt: skip
    """The predictor every predict route shares, with its metrics registered."""
    registry = rt.telemetry.registry
    latency = Histogram(
        "driftloop_prediction_latency_seconds", "Model inference time per request (with its micro-batch wait).",
        ["model"], registry=registry, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    )  # fmt: skip
    predictions = Counter("driftloop_predictions_total", "Predictions served.", ["model", "version"], registry=registry)
    shadow_copies = Counter(
        "driftloop_shadow_predictions_total", "Rows copied to a shadow version, by outcome (logged, dropped, failed).",
        ["model", "outcome"], registry=registry,
    )  # fmt: skip
    return Predictor(latency, predictions, plog, ids, table, settings.max_instances, splits,
                     ShadowCopies(plog, shadow_copies))  # fmt: skip


def _mount_predict(router: APIRouter, predictor: Predictor) -> None:
    # Answered by the hot path (services/serving/hotpath.py) unless it is switched off; either way the
    # answer is bytes made by orjson, which PredictResponse documents.
    @router.post(
        "/v1/models/{model}/predict", summary="Predict for a batch of instances", response_class=JSONResponse,
        response_model=PredictResponse, responses=errors(400, 404, 413, 422),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": PredictRequest.model_json_schema()}}}},
        dependencies=[require(Role.PREDICTOR)],
    )  # fmt: skip
    async def predict(model: str, request: Request) -> Response:
        key = request.headers.get(ROUTING_HEADER)
        return Response(await predictor.answer_v1(model, await request_json(request), key), media_type=JSON)


def _mount_feedback(router: APIRouter, rt: Runtime, settings: ServingSettings, predictor: Predictor) -> None:
    refused = Counter(
        "driftloop_feedback_refused_total", "Feedback labels refused at the API (never scored), by reason.",
        ["model", "reason"], registry=rt.telemetry.registry,
    )  # fmt: skip
    limit = RateLimit("feedback", settings.feedback_rate_per_s, settings.feedback_burst,
                      shared=lambda: rt.auth.db, installation=settings.kafka.topic_prefix)  # fmt: skip
    answered = RecentKeys()

    @router.post(
        "/v1/feedback", status_code=202, responses=errors(404, 409, 422, 429),
        summary="True labels for earlier predictions",
    )  # fmt: skip
    async def feedback(
        body: FeedbackRequest, principal: Annotated[Principal, require(Role.PRODUCER)], key: IdempotencyKey = None
    ) -> FeedbackAccepted:
        """Labels are accepted only for request ids this service issued for ``model``; the others are
        refused (listed in the answer, counted in ``driftloop_feedback_refused_total``) and never scored."""
        await limit.charge(principal.name, len(body.labels))
        _check_labels(predictor.serving(body.model).schema, body.labels)
        request = fingerprint(principal.name, body.model_dump_json())
        if key is not None and (earlier := answered.check(key, request)) is not None:
            return FeedbackAccepted.model_validate(earlier)  # published already
        accepted, rejected = screen(predictor.ids, body.model, [item.request_id for item in body.labels])
        for _, reason in rejected:
            refused.labels(body.model, reason).inc()
        problems = [
            FeedbackProblem(field=f"labels.{i}.request_id", request_id=body.labels[i].request_id,
                            reason=_REFUSALS[why])
            for i, why in rejected[:20]
        ]  # fmt: skip
        if not accepted:
            raise ValidationFailed(
                f"none of the {len(body.labels)} labels answers a prediction served for {body.model!r}: "
                f"{problems[0].field}: {problems[0].reason}",
                problems=[p.model_dump() for p in problems],
            )
        event = _labels_arrived(predictor.ids, body, principal, accepted, key)
        await rt.publisher.publish_event(event)  # acknowledged by the broker before we answer
        answer = FeedbackAccepted(model=body.model, accepted=len(accepted), refused=len(rejected), problems=problems)
        if key is not None:
            answered.add(key, request, answer.model_dump())
        return answer


def _check_labels(schema: DatasetSchema, labels: list[LabelIn]) -> None:
    """Refuse the request for one label the target column cannot hold, or one attribute the schema does
    not declare sensitive: never the batch downstream."""
    for index, item in enumerate(labels):
        try:
            coerce(schema.target, item.label, from_text=False)
        except InvalidValue as exc:
            raise ValidationFailed(f"labels.{index}.label: {exc}", row=index, field="label") from exc
        check_attributes(schema, index, item.attributes)


def _labels_arrived(
    ids: RequestIds, body: FeedbackRequest, principal: Principal, accepted: list[int], key: str | None
) -> LabelsArrived:
    """The event of the accepted labels, attested under the request-id secret (the monitor checks it)."""
    event = LabelsArrived(
        producer="serving", model=body.model, principal=principal.name, trusted=principal.trusted,
        labels=[Label(request_id=body.labels[i].request_id, label=body.labels[i].label,
                      attributes=body.labels[i].attributes) for i in accepted],
    )  # fmt: skip
    labelled = event.attested_labels()  # the attributes too: no one moves a label to another group
    update: dict[str, Any] = {"attestation": ids.attest(body.model, principal.name, principal.trusted, labelled)}
    if key is not None:  # a retried key publishes the same event id: the monitor counts it once
        update["event_id"] = idempotency.event_id("serving.feedback", key)
    return event.model_copy(update=update)


def _mount_models(router: APIRouter, predictor: Predictor) -> None:
    @router.get("/v1/models", summary="Models served by this replica", dependencies=[require(Role.READER)])
    async def list_models() -> list[ServedModel]:
        return [_describe(m) for m in sorted(predictor.table.all(), key=lambda m: m.model)]

    @router.get("/v1/models/{model}", summary="The version served for a model, with its canary and shadow",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def show_model(model: str) -> ServedModelSplit:
        served = _describe(predictor.serving(model))
        return ServedModelSplit(**dict(served), split=_split(predictor.splits, model))


_REFUSALS = {
    "unknown": "not a request id serving issued for this model",
    "duplicate": "the same request id appears earlier in this request",
}


async def request_json(request: Request) -> Any:
    """The JSON body: the document the input guard already checked, else parsed (strictly) here."""
    document = json_body(request.scope)
    if document is NO_BODY:
        body = await request.body()
        if not body.strip():
            raise jsonbody.InvalidJSON("request body is empty or not valid JSON")
        document = await jsonbody.loads_off_loop(body, allow_nan=True)
    return document


def parse_instances(payload: Any, limit: int) -> list[Any]:
    """The ``instances`` of a predict body, with the errors pydantic would have given."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise ValidationFailed("instances: Field required", field="instances")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise ValidationFailed("instances: Input should be a valid list", field="instances")
    if not instances:
        raise ValidationFailed("instances: List should have at least 1 item, not 0", field="instances")
    if len(instances) > limit:
        raise ValidationFailed(f"{len(instances)} instances in one request; the limit is {limit}")
    return instances


def _split(splits: Splits[LoadedModel], model: str) -> Split:
    """The model's canary (version, share in percent) and shadow (version), each None when absent."""
    split = splits.get(model)
    canary = split.canary if split is not None else None
    shadow = split.shadow if split is not None else None
    return Split(
        canary=CanaryServed(version=canary.version, share=split.share) if canary is not None and split else None,
        shadow=ShadowServed(version=shadow.version) if shadow is not None else None,
    )


def _describe(m: LoadedModel) -> ServedModel:
    return ServedModel(
        model=m.model,
        version=m.version,
        artifact=m.artifact,
        loaded_at=m.loaded_at.isoformat(),
        task=m.schema.task.value,
        features=[f.name for f in m.schema.features],
        runtime=m.runtime.name,
        runtime_reason=m.choice.reason,
        onnx=m.onnx,
        memory_bytes=m.memory_bytes,
        batching=Batching(enabled=m.batching.enabled, max_rows=m.batching.max_rows,
                          max_wait_s=m.batching.max_wait_s),
    )  # fmt: skip
