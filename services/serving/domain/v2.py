"""The Open Inference Protocol (V2), as KServe and MLServer speak it: requests to columns, answers to outputs.

Two request forms are accepted, the two MLServer's scikit-learn runtime takes:

- one input per feature, named as the feature, shape ``[N]`` or ``[N, 1]``
  (MLServer's pandas codec, what a client sends with
  ``"parameters": {"content_type": "pd"}``); categorical features as
  ``BYTES``, numeric ones as ``FP*``/``INT*``/``UINT*``, boolean ones as ``BOOL``;
- one input of shape ``[N, F]`` holding the F features of each row in schema
  order (the row-major numpy form), whatever its name.

``outputs`` chooses ``predict`` (labels, ``[N, 1]``) and/or ``predict_proba``
(``[N, n_classes]``, classes in the order ``GET /v2/models/{m}`` lists); none
means ``predict``, as in MLServer. A request the protocol cannot accept raises
:class:`ProtocolError`, which the API answers as ``{"error": "..."}`` with a
4xx status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from libs.common.schema import DatasetSchema, DType, FeatureSpec, Task
from services.serving.domain.features import ABSENT
from services.serving.domain.models import Inference

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
INTEGERS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOATS = frozenset({"FP16", "FP32", "FP64"})
DATATYPES = INTEGERS | FLOATS | {"BOOL", "BYTES"}
_ACCEPTED = {
    DType.NUMERIC: INTEGERS | FLOATS,
    DType.INTEGER: INTEGERS | FLOATS,
    DType.BOOLEAN: frozenset({"BOOL"}),
    DType.CATEGORICAL: frozenset({"BYTES"}),
}
_DECLARED = {DType.NUMERIC: "FP64", DType.INTEGER: "INT64", DType.BOOLEAN: "BOOL", DType.CATEGORICAL: "BYTES"}


class ProtocolError(Exception):
    """A request the protocol refuses; ``status`` is the HTTP status (always 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 request: per-feature raw values, the row count and the outputs asked for."""

    id: str | None
    raw: dict[str, list[Any]]
    rows: int
    outputs: list[str]


def decode(payload: Any, schema: DatasetSchema, *, max_rows: int) -> InferRequest:
    """The raw columns of a V2 inference request (values are checked by the compiled schema afterwards)."""
    if not isinstance(payload, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    tensors = [_tensor(item, index) for index, item in enumerate(inputs)]
    names = [t.name for t in tensors]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ProtocolError(f"input {repeated[0]!r} appears more than once")
    features = {f.name: f for f in schema.features}
    unknown = [t.name for t in tensors if t.name not in features]
    if len(tensors) == 1 and unknown and len(tensors[0].shape) == 2:
        raw, rows = _row_major(tensors[0], schema)
    elif unknown:
        raise ProtocolError(
            f"unknown input {unknown[0]!r}: inputs are named after the model's features "
            f"({', '.join(features)}), or one [N, {len(features)}] input holds whole rows in that order"
        )
    else:
        raw, rows = _columnar(tensors, features)
    if rows == 0:
        raise ProtocolError("the request holds no rows")
    if rows > max_rows:
        raise ProtocolError(f"{rows} rows in one request; the limit is {max_rows}", status=413)
    request_id = payload.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        raw=raw,
        rows=rows,
        outputs=_outputs(payload.get("outputs"), schema),
    )


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


def _tensor(item: Any, index: int) -> _Tensor:
    if not isinstance(item, dict):
        raise ProtocolError(f"input {index} must be an object with name, shape, datatype and data")
    name, shape, datatype, data = (item.get(k) for k in ("name", "shape", "datatype", "data"))
    label = repr(name) if isinstance(name, str) else str(index)
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"input {index} has no name")
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"input {label}: shape must be a list of non-negative integers, got {shape!r}")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {label}: unknown datatype {datatype!r} (one of {', '.join(sorted(DATATYPES))})")
    if data is None:
        raise ProtocolError(f"input {label} has no data")
    flat = _flatten(data if isinstance(data, list) else [data])
    expected = math.prod(shape)
    if len(flat) != expected:
        raise ProtocolError(f"input {label}: shape {shape} holds {expected} values but data has {len(flat)}")
    return _Tensor(name, shape, datatype, flat)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(type(v) is list for v in data):
        return data
    flat: list[Any] = []
    for value in data:
        if type(value) is list:
            flat.extend(_flatten(value))
        else:
            flat.append(value)
    return flat


def _columnar(tensors: list[_Tensor], features: dict[str, FeatureSpec]) -> tuple[dict[str, list[Any]], int]:
    rows: int | None = None
    raw: dict[str, list[Any]] = {}
    for t in tensors:
        spec = features[t.name]
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise ProtocolError(f"input {t.name!r}: shape {t.shape}; a feature's input is [N] or [N, 1]")
        if t.datatype not in _ACCEPTED[spec.dtype]:
            raise ProtocolError(
                f"input {t.name!r} has datatype {t.datatype}, but feature {t.name!r} is {spec.dtype.value} "
                f"and takes {' or '.join(sorted(_ACCEPTED[spec.dtype]))}"
            )
        if rows is not None and t.shape[0] != rows:
            raise ProtocolError(f"inputs disagree on the number of rows: {t.name!r} has {t.shape[0]}, others {rows}")
        rows = t.shape[0]
        raw[t.name] = t.data
    assert rows is not None
    missing = [name for name, spec in features.items() if name not in raw and not spec.nullable]
    if missing:
        raise ProtocolError(f"missing input for feature {missing[0]!r} (every non-nullable feature needs one)")
    for name in features:
        raw.setdefault(name, [ABSENT] * rows)
    return raw, rows


def _row_major(t: _Tensor, schema: DatasetSchema) -> tuple[dict[str, list[Any]], int]:
    width = len(schema.features)
    if t.shape[1] != width:
        raise ProtocolError(
            f"input {t.name!r}: shape {t.shape}; whole rows need shape [N, {width}] "
            f"(features in order: {', '.join(f.name for f in schema.features)})"
        )
    return {f.name: t.data[j::width] for j, f in enumerate(schema.features)}, t.shape[0]


def _outputs(requested: Any, schema: DatasetSchema) -> list[str]:
    if requested is None or requested == []:
        return [PREDICT]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ProtocolError("'outputs' must be a list of objects with a name")
    names = [o.get("name") for o in requested]
    for name in names:
        if name not in (PREDICT, PREDICT_PROBA):
            raise ProtocolError(f"unknown output {name!r}; this model answers {PREDICT!r} and {PREDICT_PROBA!r}")
    if PREDICT_PROBA in names and schema.task is not Task.CLASSIFICATION:
        raise ProtocolError(f"a {schema.task.value} model has no {PREDICT_PROBA!r} output")
    return [str(n) for n in names]


def encode_outputs(inference: Inference, outputs: list[str], classes: list[str] | None) -> list[dict[str, Any]]:
    """The response tensors, shaped and typed as MLServer's numpy codec answers them."""
    encoded = []
    for name in outputs:
        if name == PREDICT:
            labels = inference.labels
            encoded.append(
                {
                    "name": PREDICT,
                    "shape": [len(labels), 1],
                    "datatype": datatype_of(labels),
                    "parameters": {"content_type": "np"},
                    "data": labels.tolist(),
                }
            )
        else:
            matrix = inference.probabilities
            if matrix is None:
                raise ProtocolError(f"this model has no {PREDICT_PROBA!r} output")
            encoded.append(
                {
                    "name": PREDICT_PROBA,
                    "shape": list(matrix.shape),
                    "datatype": "FP64",
                    "parameters": {"content_type": "np", "classes": classes},
                    "data": matrix.reshape(-1).tolist(),
                }
            )
    return encoded


def datatype_of(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def metadata(
    model: str, version: int, schema: DatasetSchema, runtime: str, classes: list[str] | None
) -> dict[str, Any]:
    """``GET /v2/models/{m}``: the inputs a client sends and the outputs it may ask for."""
    classification = schema.task is Task.CLASSIFICATION
    outputs: list[dict[str, Any]] = [
        {"name": PREDICT, "datatype": _DECLARED[schema.target.dtype] if classification else "FP64", "shape": [-1, 1]}
    ]
    if classification:
        width = len(classes) if classes else -1
        outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, width]})
    return {
        "name": model,
        "versions": [str(version)],
        "platform": runtime,
        "inputs": [{"name": f.name, "datatype": _DECLARED[f.dtype], "shape": [-1, 1]} for f in schema.features],
        "outputs": outputs,
        "parameters": {"content_type": "pd", "classes": classes},
    }
