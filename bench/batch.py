"""Batch prediction throughput: the worker's own code path (predict_chunk, then assemble) over
a dataset of churn rows, one process and one OpenMP thread, as a batch worker runs it.

    .venv/bin/python -m bench.batch [--rows 500000] [--chunk-rows 50000]

Prints rows/s of the chunks (read + predict + write each chunk's Parquet) and of the whole job
(chunks + assembling the one output file). Not included: the runner's database round trip per
chunk (one statement) and the hand-over over the worker's pipe.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cli.churn_stream import ChurnStream
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import batch_to_parquet
from services.trainer.adapters.batch_worker import assemble, predict_chunk
from services.trainer.domain.batch import chunk_count
from tests.factories import CHURN, trained_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--segment-rows", type=int, default=100_000, help="Rows per dataset segment (file).")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="driftloop-bench-batch-")).as_uri()
    store = ArtifactStore(root)
    model = trained_model(store, rows=5000)
    stream = ChurnStream(seed=3)
    segments = []
    for start in range(0, args.rows, args.segment_rows):
        n = min(args.segment_rows, args.rows - start)
        ref = store.put(batch_to_parquet(CHURN, stream.batch(n)), suffix=".parquet")
        segments.append({"artifact": ref.model_dump(mode="json"), "rows": n})
    spec = {"artifacts_root": root, "schema": CHURN.model_dump(mode="json"), "nice": 0, "segments": segments,
            "artifact": model.artifact.model_dump(mode="json"), "chunk_rows": args.chunk_rows}  # fmt: skip
    predict_chunk({**spec, "chunk": 0})  # the model loaded and the first segment read, as in a warm worker
    started = time.perf_counter()
    chunks = [predict_chunk({**spec, "chunk": k})["artifact"] for k in range(chunk_count(args.rows, args.chunk_rows))]
    predicted = time.perf_counter() - started
    output = assemble({"artifacts_root": root, "chunks": chunks})
    total = time.perf_counter() - started
    print(json.dumps({
        "rows": args.rows, "chunk_rows": args.chunk_rows, "chunks": len(chunks),
        "chunks_seconds": round(predicted, 2), "chunks_rows_per_s": round(args.rows / predicted),
        "job_seconds": round(total, 2), "job_rows_per_s": round(args.rows / total),
        "output_bytes": output["artifact"]["size"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
