"""The Open Inference Protocol (V2) endpoints, next to the driftloop JSON API.

A client of KServe or MLServer switches to driftloop by changing the URL:
health and readiness, model metadata, and ``POST /v2/models/{m}/infer`` in the
forms MLServer's scikit-learn runtime accepts (see ``domain/v2.py``).
Predictions made here go through the same micro-batcher, metrics and
prediction log as ``/v1`` ones; each row's request id (for feedback) is in
the answer's ``parameters.request_ids``. Errors use the protocol's shape,
``{"error": "..."}``, always with a 4xx status for a bad request.
"""

from __future__ import annotations

from importlib import metadata as package_metadata
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from libs.common import jsonbody
from libs.common.auth import Role, require
from libs.common.http import errors
from libs.common.service import Runtime
from services.serving.api import JSON, ROUTING_HEADER, Predictor, json_response, request_json
from services.serving.api_models import InferResponse, Live, ModelMetadata, ModelReady, Ready, ServerMetadata
from services.serving.domain import v2
from services.serving.domain.features import InvalidInstance
from services.serving.domain.models import LoadedModel, ModelTable

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "parameters": {"content_type": "pd"},
                    "inputs": [
                        {"name": "age", "shape": [2, 1], "datatype": "FP64", "data": [41.0, 29.5]},
                        {"name": "plan", "shape": [2, 1], "datatype": "BYTES", "data": ["basic", "premium"]},
                    ],
                    "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
                }
            }
        },
    }
}


def error(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def mount(app: FastAPI, rt: Runtime, table: ModelTable, predictor: Predictor) -> None:
    router = APIRouter(tags=["open inference protocol (v2)"])
    _mount_health(router, rt)
    _mount_metadata(router, table)
    _mount_infer(router, predictor)
    app.include_router(router)


def _mount_health(router: APIRouter, rt: Runtime) -> None:
    @router.get("/v2", summary="Server metadata", dependencies=[require(Role.READER)])
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name="driftloop-serving", version=_version(), extensions=[])

    @router.get("/v2/health/live", summary="Liveness")
    async def live() -> Live:
        return Live(live=True)

    @router.get(
        "/v2/health/ready", summary="Readiness: started and able to serve", response_model=Ready,
        responses={503: {"model": Ready, "description": "Not ready yet."}},
    )  # fmt: skip
    async def ready() -> Response:
        return json_response({"ready": rt.ready}, 200 if rt.ready else 503)


def _mount_metadata(router: APIRouter, table: ModelTable) -> None:
    @router.get("/v2/models/{model}", summary="Model metadata: inputs and outputs", response_model=ModelMetadata,
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def model_metadata(model: str) -> ModelMetadata | Response:
        loaded = table.get(model)
        if loaded is None:
            return _not_found(model)
        return ModelMetadata.model_validate(
            v2.metadata(model, loaded.version, loaded.schema, loaded.runtime.name, loaded.classes)
        )

    @router.get("/v2/models/{model}/ready", summary="Whether the model is loaded", response_model=ModelReady,
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def model_ready(model: str) -> ModelReady | Response:
        if table.get(model) is None:
            return _not_found(model)
        return ModelReady(name=model, ready=True)


def _mount_infer(router: APIRouter, predictor: Predictor) -> None:
    # Answered by the hot path (services/serving/hotpath.py) unless it is switched off; either way the
    # answer is bytes made by orjson, which InferResponse documents.
    @router.post(
        "/v2/models/{model}/infer", summary="Inference", response_class=JSONResponse, response_model=InferResponse,
        responses=errors(400, 404, 413, 422), openapi_extra=_INFER_BODY, dependencies=[require(Role.PREDICTOR)],
    )  # fmt: skip
    async def infer(model: str, request: Request) -> Response:
        return await _infer(predictor, model, None, request)

    @router.post(
        "/v2/models/{model}/versions/{version}/infer", summary="Inference on a given version",
        response_class=JSONResponse, response_model=InferResponse, responses=errors(400, 404, 413, 422),
        openapi_extra=_INFER_BODY, dependencies=[require(Role.PREDICTOR)],
    )  # fmt: skip
    async def infer_version(model: str, version: str, request: Request) -> Response:
        return await _infer(predictor, model, version, request)


async def _infer(predictor: Predictor, model: str, version: str | None, request: Request) -> Response:
    try:
        if BINARY_HEADER in request.headers:
            raise v2.ProtocolError(BINARY_REFUSED)
        document = await request_json(request)
        key = request.headers.get(ROUTING_HEADER)
        return Response(await answer(predictor, model, version, document, key), media_type=JSON)
    except v2.ProtocolError as exc:
        return error(exc.message, exc.status)
    except jsonbody.InvalidJSON as exc:
        return error(exc.message, 400)


BINARY_HEADER = "inference-header-content-length"
"""The header of the protocol's binary tensor extension."""
BINARY_REFUSED = "the binary tensor extension is not supported: send JSON tensors (binary_data=False)"


async def answer(predictor: Predictor, model: str, version: str | None, document: Any, key: str | None = None) -> bytes:
    """The JSON answer of ``POST /v2/models/{model}[/versions/{version}]/infer`` for the parsed body
    ``document``; every refusal is a :class:`v2.ProtocolError` (a 4xx in the protocol's shape). Without a
    version the model's split decides (``key``: the routing key); a version names the champion or the canary."""
    champion = predictor.table.get(model)  # taken once: a swap during this request does not affect it
    if champion is None:
        raise v2.ProtocolError(f"model {model!r} is not served (no champion loaded)", 404)
    if version is None:
        loaded, alias = predictor.splits.pick(model, champion, key)
    else:
        loaded, alias = _named(predictor, model, champion, version)
    decoded = v2.decode(document, loaded.schema, max_rows=predictor.max_instances)
    try:
        columns = loaded.compiled.from_columns(decoded.raw, decoded.rows)
    except InvalidInstance as exc:
        raise v2.ProtocolError(str(exc)) from None
    request_ids, inference = await predictor.predict(model, loaded, columns)
    outputs = v2.encode_outputs(inference, decoded.outputs, loaded.classes)
    return orjson.dumps(_answer(loaded, alias, decoded, request_ids, outputs))


def _named(predictor: Predictor, model: str, champion: LoadedModel, version: str) -> tuple[LoadedModel, str]:
    """The served version a ``/versions/{version}/`` path names: the champion or the canary."""
    if version == str(champion.version):
        return champion, "champion"
    split = predictor.splits.get(model)
    if split is not None and split.canary is not None and version == str(split.canary.version):
        return split.canary, "canary"
    raise v2.ProtocolError(f"model {model!r} version {version} is not served (serving version {champion.version})",
                           404)  # fmt: skip


def _answer(
    loaded: LoadedModel, alias: str, decoded: v2.InferRequest, request_ids: list[str], outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "model_name": loaded.model,
        "model_version": str(loaded.version),
        "id": decoded.id if decoded.id is not None else request_ids[0],
        "parameters": {"request_ids": request_ids, "runtime": loaded.runtime.name, "alias": alias},
        "outputs": outputs,
    }


def _not_found(model: str) -> Response:
    return error(f"model {model!r} is not served (no champion loaded)", 404)


def _version() -> str:
    try:
        return package_metadata.version("driftloop")
    except package_metadata.PackageNotFoundError:
        return "unknown"
