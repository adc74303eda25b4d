"""The two ways a version runs: onnxruntime (when the trainer's parity check held) or scikit-learn.

Both take a validated batch of columns and answer labels and class
probabilities from one inference call. onnxruntime gets the columns as they
are (one [N, 1] tensor per feature, typed as the session's inputs declare);
scikit-learn gets the DataFrame its pipeline was fitted on, built from the
same columns by the trainer's own frame function.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from libs.common.frames import MISSING_CATEGORY, features_frame
from libs.common.schema import DatasetSchema, DType, Task
from services.serving.domain.features import Columns
from services.serving.domain.models import Inference

_ONNX_FLOATS = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class SklearnRuntime:
    """The fitted scikit-learn pipeline, for versions without a faithful ONNX export."""

    name = "sklearn"
    inline_rows = 0  # milliseconds per call even for one row: never on the event loop

    def __init__(self, pipeline: Any, schema: DatasetSchema) -> None:
        self.pipeline = pipeline
        self.schema = schema
        classes = getattr(pipeline, "classes_", None)
        self.classes = [str(c) for c in classes] if classes is not None else None
        self._proba = schema.task is Task.CLASSIFICATION and hasattr(pipeline, "predict_proba")

    def infer(self, columns: Columns) -> Inference:
        import pandas as pd  # here: a replica serving only onnxruntime versions starts without it

        frame = features_frame(self.schema, pd.DataFrame(columns.arrays))
        if not self._proba:
            return Inference(np.asarray(self.pipeline.predict(frame)), None)
        # One pass through the pipeline: labels are the argmax of the probabilities, as predict() does.
        probabilities = np.asarray(self.pipeline.predict_proba(frame), dtype=np.float64)
        labels = np.asarray(self.pipeline.classes_)[probabilities.argmax(axis=1)]
        return Inference(labels, probabilities)


class OnnxRuntime:
    """An onnxruntime session over the version's ONNX export."""

    name = "onnxruntime"
    inline_rows = 1024
    """A 1,000-instance request is inferred on the event loop (about 1.5-3 ms of onnxruntime, which holds
    the loop but not the GIL): the hop to a worker thread and back is two wake-ups, each waiting for a
    core; in a dev run on the shared machine it added 0.3 ms at best and 4-13 ms at the median."""

    def __init__(self, model_bytes: bytes, schema: DatasetSchema, *, threads: int = 1) -> None:
        import onnxruntime as ort  # imported here: only versions with an export need it loaded

        options = ort.SessionOptions()
        # Two cores serve HTTP, JSON and inference: one thread per call, no spinning between calls.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.schema = schema
        kinds = {f.name: f.dtype for f in schema.features}
        self._inputs: list[tuple[str, Any]] = []
        for node in self.session.get_inputs():
            if node.name not in kinds:
                raise ValueError(f"ONNX input {node.name!r} is not a feature of the schema")
            if kinds[node.name] is DType.CATEGORICAL:
                if node.type != "tensor(string)":
                    raise ValueError(f"ONNX input {node.name!r} is {node.type}, expected tensor(string)")
                self._inputs.append((node.name, None))
            elif node.type in _ONNX_FLOATS:
                self._inputs.append((node.name, _ONNX_FLOATS[node.type]))
            else:
                raise ValueError(f"ONNX input {node.name!r} is {node.type}, expected tensor(float) or tensor(double)")
        outputs = [o.name for o in self.session.get_outputs()]
        classification = schema.task is Task.CLASSIFICATION
        self._outputs = ["label", "probabilities"] if classification else ["variable"]
        absent = [o for o in self._outputs if o not in outputs]
        if absent:
            raise ValueError(f"ONNX outputs {outputs} lack {absent}")
        meta = self.session.get_modelmeta().custom_metadata_map
        self.missing_category = meta.get("missing_category", MISSING_CATEGORY)
        self.classes = [str(c) for c in json.loads(meta["classes"])] if "classes" in meta else None
        if classification and self.classes is None:
            raise ValueError("the ONNX export does not record its class order (metadata 'classes')")

    def feeds(self, columns: Columns) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, dtype in self._inputs:
            column = columns.arrays[name]
            if dtype is None:
                missing = np.array([v is None for v in column], dtype=bool)
                if missing.any():
                    column = column.copy()
                    column[missing] = self.missing_category
                feeds[name] = column.reshape(-1, 1)
            else:
                feeds[name] = column.astype(dtype, copy=False).reshape(-1, 1)
        return feeds

    def infer(self, columns: Columns) -> Inference:
        answer = self.session.run(self._outputs, self.feeds(columns))
        if len(answer) == 1:
            return Inference(np.asarray(answer[0]).reshape(-1), None)
        labels, probabilities = answer
        return Inference(np.asarray(labels).reshape(-1), np.asarray(probabilities, dtype=np.float64))
