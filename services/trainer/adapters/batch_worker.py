"""Batch predictions as they run in a worker process: one chunk per call, then the assembly.

The worker gets plain dicts (they cross a process boundary) and does all its
I/O against the artifact store. It keeps the model it loaded last and the
input segment it read last: consecutive chunks of a job mostly come from the
same segment, and a job's model is the same for all of its chunks. So a
worker holds at most one model, one input segment and one chunk.

The model is the version's skops pipeline, read through the store (digest
checked) and ``libs.common.models.load`` (exact type allowlist); the runner
has checked its signature before handing the job over, as serving does.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef
from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema, Task
from services.trainer.adapters import gc
from services.trainer.domain.batch import PREDICTION, ROW_ID, chunk_pieces, probability_column

_MODEL: dict[str, Any] = {}
_SEGMENT: dict[str, pa.Table] = {}


_NICED: list[int] = []


def warm() -> None:
    """Import what a chunk needs before the first job arrives."""
    import sklearn.ensemble  # noqa: F401


def _lower_priority(increment: int) -> None:
    """Once per process: run ``increment`` nicer than the trainer, so that on a shared host a batch
    job yields the CPU to online work (serving, the trainer's consumers)."""
    if not _NICED:
        os.nice(increment)
        _NICED.append(increment)


def predict_chunk(spec: dict[str, Any]) -> dict[str, Any]:
    """Predict chunk ``spec["chunk"]`` of the job's input; store it as Parquet; return its ref and rows."""
    _lower_priority(spec.get("nice", 0))
    store = ArtifactStore(spec["artifacts_root"], namespace=gc.NAMESPACE)
    schema = DatasetSchema.model_validate(spec["schema"])
    pipeline = _model(store, ArtifactRef.model_validate(spec["artifact"]))
    segments = [(ArtifactRef.model_validate(s["artifact"]), int(s["rows"])) for s in spec["segments"]]
    pieces = chunk_pieces([rows for _, rows in segments], spec["chunk"], spec["chunk_rows"])
    table = pa.concat_tables(
        [_segment(store, segments[p.segment][0]).slice(p.start, p.stop - p.start) for p in pieces],
        promote_options="default",
    )
    first = spec["chunk"] * spec["chunk_rows"]
    id_column = spec.get("id_column")
    ids = table.column(id_column) if id_column else pa.array(np.arange(first, first + table.num_rows), pa.int64())
    # One OpenMP thread: on busy cores, OpenMP threads waiting for each other made a 5,000-row chunk
    # take 2 s instead of 0.1 s (as in training.py). Parallelism comes from batch_workers instead.
    with threadpool_limits(1, user_api="openmp"):
        output = _predict(pipeline, schema, table, ids)
    sink = io.BytesIO()
    pq.write_table(output, sink, compression="zstd")
    ref = store.put(sink.getvalue(), suffix=".predictions.parquet")
    return {"artifact": ref.model_dump(mode="json"), "rows": table.num_rows}


def _predict(pipeline: Any, schema: DatasetSchema, table: pa.Table, ids: pa.ChunkedArray | pa.Array) -> pa.Table:
    """row_id, prediction, and one probability column per class (classification), as the pipeline answers."""
    names = [f.name for f in schema.features if f.name in table.column_names]
    frame = features_frame(schema, table.select(names).to_pandas())
    columns: dict[str, Any] = {ROW_ID: ids}
    if schema.task is Task.CLASSIFICATION and hasattr(pipeline, "predict_proba"):
        # One pass through the pipeline: labels are the argmax of the probabilities, as predict() does.
        probabilities = np.asarray(pipeline.predict_proba(frame), dtype=np.float64)
        classes = np.asarray(pipeline.classes_)
        columns[PREDICTION] = pa.array(classes[probabilities.argmax(axis=1)].tolist())
        for i, label in enumerate(classes):
            columns[probability_column(label)] = pa.array(probabilities[:, i])
    else:
        columns[PREDICTION] = pa.array(np.asarray(pipeline.predict(frame), dtype=np.float64))
    return pa.table(columns)


def assemble(spec: dict[str, Any]) -> dict[str, Any]:
    """The chunks' predictions, in order, as one Parquet artifact (one row group per chunk)."""
    store = ArtifactStore(spec["artifacts_root"], namespace=gc.NAMESPACE)
    sink = io.BytesIO()
    writer: pq.ParquetWriter | None = None
    rows = 0
    for chunk in spec["chunks"]:
        table = pq.read_table(pa.BufferReader(store.get(ArtifactRef.model_validate(chunk))))
        if writer is None:
            writer = pq.ParquetWriter(sink, table.schema, compression="zstd")
        writer.write_table(table.cast(writer.schema), row_group_size=max(table.num_rows, 1))
        rows += table.num_rows
    if writer is None:
        raise ValueError("a batch job with no chunks")
    writer.close()
    ref = store.put(sink.getvalue(), suffix=".predictions.parquet")
    return {"artifact": ref.model_dump(mode="json"), "rows": rows}


def _model(store: ArtifactStore, ref: ArtifactRef) -> Any:
    if ref.sha256 not in _MODEL:
        _MODEL.clear()
        _MODEL[ref.sha256] = models.load(store, ref)
    return _MODEL[ref.sha256]


def _segment(store: ArtifactStore, ref: ArtifactRef) -> pa.Table:
    if ref.sha256 not in _SEGMENT:
        _SEGMENT.clear()
        _SEGMENT[ref.sha256] = pq.read_table(pa.BufferReader(store.get(ref)))
    return _SEGMENT[ref.sha256]
