"""The answers of serving's HTTP API, as its OpenAPI document describes them: the driftloop JSON API
(``/v1``) and the Open Inference Protocol (``/v2``).

The predict and infer routes answer bytes serialised with orjson, not these models (the hot path
keeps no pydantic model per request); the models document those answers, field for field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from libs.common.events import ArtifactRef, OnnxExport

# ---- /v1 ------------------------------------------------------------------------------------------------------


class Prediction(BaseModel):
    request_id: str = Field(description="Send it back with the true label (POST /v1/feedback).")
    prediction: str | int | float | bool | None = Field(description="The predicted class or value.")
    probabilities: dict[str, float] | None = Field(description="Class → probability; None for a regression.")


class PredictResponse(BaseModel):
    """The answer of ``POST /v1/models/{model}/predict``: one prediction per instance, in order."""

    model: str
    version: int = Field(description="The version that answered.")
    alias: str = Field(description="champion, or canary when the canary took the request.", examples=["champion"])
    predictions: list[Prediction]


class FeedbackProblem(BaseModel):
    field: str = Field(examples=["labels.3.request_id"])
    request_id: str
    reason: str


class FeedbackAccepted(BaseModel):
    """The answer of ``POST /v1/feedback``: the labels published for scoring, and those refused."""

    model: str
    accepted: int = Field(description="Labels published to the monitor.")
    refused: int = Field(description="Labels whose request id serving did not issue for this model, or repeated.")
    problems: list[FeedbackProblem] = Field(description="The first 20 refused labels, with why.")


class Batching(BaseModel):
    enabled: bool
    max_rows: int
    max_wait_s: float


class ServedModel(BaseModel):
    """A model as this replica serves it: the champion's version, how it runs, what it needs."""

    model: str
    version: int
    artifact: ArtifactRef
    loaded_at: str = Field(description="When this replica loaded it (ISO 8601).")
    task: str = Field(examples=["classification", "regression"])
    features: list[str] = Field(description="The input columns, in order.")
    runtime: str = Field(examples=["onnxruntime", "sklearn"])
    runtime_reason: str = Field(description="Why this runtime serves it.")
    onnx: OnnxExport | None
    memory_bytes: int | None = Field(description="What loading it added to the process, when measured.")
    batching: Batching


class CanaryServed(BaseModel):
    version: int
    share: float = Field(description="Percentage of the model's requests it answers.")


class ShadowServed(BaseModel):
    version: int


class Split(BaseModel):
    canary: CanaryServed | None
    shadow: ShadowServed | None


class ServedModelSplit(ServedModel):
    split: Split = Field(description="The canary and shadow beside the champion, each None when absent.")


# ---- /v2 (Open Inference Protocol) ---------------------------------------------------------------------------


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP64", "BYTES", "INT64", "BOOL"])
    shape: list[int] = Field(description="-1: any size.")


class MetadataParameters(BaseModel):
    content_type: str = Field(examples=["pd"])
    classes: list[str] | None = Field(description="The classes, in the order of predict_proba's columns.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(description="The runtime.", examples=["onnxruntime"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: MetadataParameters


class OutputTensor(BaseModel):
    name: str = Field(examples=["predict", "predict_proba"])
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(description="content_type, and the classes of predict_proba.")
    data: list[Any] = Field(description="The values, row-major.")


class InferParameters(BaseModel):
    request_ids: list[str] = Field(description="One per row: send it back with the true label (POST /v1/feedback).")
    runtime: str
    alias: str = Field(examples=["champion", "canary"])


class InferResponse(BaseModel):
    """The answer of ``POST /v2/models/{model}[/versions/{version}]/infer``."""

    model_name: str
    model_version: str
    id: str = Field(description="The request's id, or the first row's request id.")
    parameters: InferParameters
    outputs: list[OutputTensor]
