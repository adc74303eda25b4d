"""A fitted pipeline as ONNX, and the parity check that decides whether it may serve.

The graph follows the contract serving relies on:

* one input per schema feature, named as the feature, shape ``[None, 1]``:
  numeric, integer and boolean features as ``tensor(float)``, categorical
  ones as ``tensor(string)`` with a missing value fed as ``MISSING_CATEGORY``
  (a string tensor cannot hold NaN) and a missing number as NaN;
* classification outputs ``label`` (in the type of ``pipeline.classes_``) and
  ``probabilities`` ``[N, n_classes]`` in ``classes_`` order (no ZipMap);
  regression outputs ``variable`` ``[N, 1]``;
* the class order, as strings, in the metadata property ``classes`` (JSON).

Parity is checked on the holdout through onnxruntime: labels equal and every
probability within ``TOLERANCE`` (a regression output within ``TOLERANCE``
relative to its size, since float32 sums of hundreds of trees cannot be closer
on large targets). Whatever goes wrong — a step skl2onnx cannot convert, a
runtime error, a parity miss — the answer is ``parity=False`` with the reason;
an export never fails a training job, and serving then runs the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from libs.common.frames import MISSING_CATEGORY
from libs.common.schema import DatasetSchema, DType, Task

#: Largest |Δ| between scikit-learn and onnxruntime allowed on the holdout.
TOLERANCE = 1e-4
#: Output names of the contract.
CLASSIFIER_OUTPUTS = ["label", "probabilities"]
REGRESSOR_OUTPUTS = ["variable"]


@dataclass(frozen=True)
class Exported:
    """The ONNX bytes (None if conversion failed), whether parity held, and what was checked or why not."""

    onnx: bytes | None
    parity: bool
    detail: str


def export(schema: DatasetSchema, pipeline: Any, holdout: pd.DataFrame) -> Exported:
    """Convert ``pipeline`` and check it against scikit-learn on ``holdout`` (features as the pipeline takes them)."""
    try:
        onnx_bytes = convert(schema, pipeline)
    except Exception as exc:  # any converter failure means "serve the pipeline", never a failed job
        return Exported(None, False, f"not convertible: {type(exc).__name__}: {_first_line(exc)}")
    try:
        parity, detail = check_parity(schema, pipeline, onnx_bytes, holdout)
    except Exception as exc:  # a model onnxruntime refuses or fails on is a parity failure
        return Exported(onnx_bytes, False, f"onnxruntime failed: {type(exc).__name__}: {_first_line(exc)}")
    return Exported(onnx_bytes, parity, detail)


def convert(schema: DatasetSchema, pipeline: Any) -> bytes:
    """The pipeline as an ONNX model following the graph contract."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    from services.trainer.domain import onnx_converters

    onnx_converters.register()
    inputs = [
        (f.name, StringTensorType([None, 1]) if f.dtype is DType.CATEGORICAL else FloatTensorType([None, 1]))
        for f in schema.features
    ]
    model = pipeline.steps[-1][1]
    options = {id(model): {"zipmap": False}} if schema.task is Task.CLASSIFICATION else None
    onx = to_onnx(pipeline, initial_types=inputs, options=options)
    outputs = [o.name for o in onx.graph.output]
    expected = CLASSIFIER_OUTPUTS if schema.task is Task.CLASSIFICATION else REGRESSOR_OUTPUTS
    if outputs != expected:
        raise ValueError(f"outputs {outputs}, the contract wants {expected}")
    if schema.task is Task.CLASSIFICATION:
        entry = onx.metadata_props.add()
        entry.key, entry.value = "classes", json.dumps([str(c) for c in pipeline.classes_])
    entry = onx.metadata_props.add()
    entry.key, entry.value = "missing_category", MISSING_CATEGORY
    return bytes(onx.SerializeToString())


def feeds(schema: DatasetSchema, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The ONNX inputs for ``frame`` (features as ``features_frame`` gives them), per the contract."""
    out: dict[str, np.ndarray] = {}
    for f in schema.features:
        column = frame[f.name]
        if f.dtype is DType.CATEGORICAL:
            values = column.where(column.notna(), MISSING_CATEGORY).astype(str).to_numpy(dtype=object)
        else:
            values = column.to_numpy(dtype=np.float32)
        out[f.name] = values.reshape(-1, 1)
    return out


def check_parity(schema: DatasetSchema, pipeline: Any, onnx_bytes: bytes, holdout: pd.DataFrame) -> tuple[bool, str]:
    """Run both on ``holdout``: (parity held, what was measured)."""
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    results = session.run(None, feeds(schema, holdout))
    with threadpool_limits(1, user_api="openmp"):  # OpenMP threads waiting on busy cores (see training.py)
        return _compare(schema, pipeline, holdout, results)


def _compare(schema: DatasetSchema, pipeline: Any, holdout: pd.DataFrame, results: list[Any]) -> tuple[bool, str]:
    n = len(holdout)
    if schema.task is Task.REGRESSION:
        expected = np.asarray(pipeline.predict(holdout), dtype=float)
        got = np.asarray(results[0], dtype=float).ravel()
        worst = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))
        held = bool(worst <= TOLERANCE)
        return held, f"outputs within {worst:.1e} (relative) on {n} holdout rows" + ("" if held else " > 1e-4")
    labels = np.asarray(results[0]).ravel()
    expected_labels = np.asarray(pipeline.predict(holdout)).ravel()
    equal = int(np.sum(labels == expected_labels))
    worst = float(np.max(np.abs(np.asarray(results[1], dtype=float) - pipeline.predict_proba(holdout))))
    if equal != n:
        return False, f"labels differ on {n - equal} of {n} holdout rows, max |Δp| {worst:.1e}"
    if worst > TOLERANCE:
        return False, f"labels equal on {n} holdout rows, but max |Δp| {worst:.1e} > {TOLERANCE:.0e}"
    return True, f"labels equal on {n} holdout rows, max |Δp| {worst:.1e}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "no message"
