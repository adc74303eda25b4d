"""The trainer's ``max_rows`` bounds what it reads: only the newest segments, and only the newest row
groups of a compacted one, are read, however many rows the dataset holds and however many lack a label."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import (
    BatchEntry,
    DatasetManifest,
    acceptance_time,
    batch_to_parquet,
    compact,
    compacted_entry,
)
from libs.common.events import ArtifactRef
from libs.common.schema import DatasetSchema
from services.trainer.adapters.worker import read_training_rows

SCHEMA = DatasetSchema.model_validate(
    {"features": [{"name": "x", "dtype": "numeric"}], "target": {"name": "y", "dtype": "integer"},
     "task": "classification"}
)  # fmt: skip
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class CountingStore(ArtifactStore):
    """The real local store, counting the artifacts read."""

    reads: list[str]

    def get(self, ref: ArtifactRef) -> bytes:
        self.reads.append(ref.sha256)
        return super().get(ref)


def _store(tmp_path: Path) -> CountingStore:
    store = CountingStore((tmp_path / "store").as_uri())
    store.reads = []
    return store


def _batch(store: ArtifactStore, seq: int, rows: int, *, unlabelled_every: int = 0) -> BatchEntry:
    """Batch ``seq``: rows with x = seq * 1000 + i, every ``unlabelled_every``-th without a label."""
    at = T0 + timedelta(minutes=seq)
    data: list[dict[str, Any]] = [
        {"x": float(seq * 1000 + i), "y": None if unlabelled_every and i % unlabelled_every == 0 else i % 2}
        for i in range(rows)
    ]
    ref = store.put(batch_to_parquet(SCHEMA, data, at=at), suffix=".parquet")
    return BatchEntry(seq=seq, artifact=ref, rows=rows, created_at=at)


def _manifest(batches: list[BatchEntry]) -> DatasetManifest:
    return DatasetManifest(dataset="d", version=batches[-1].seq, dataset_schema=SCHEMA, batches=batches)


def test_only_the_newest_segments_are_read_even_when_rows_lack_labels(tmp_path: Path) -> None:
    store = _store(tmp_path)
    batches = [_batch(store, seq, 100, unlabelled_every=4) for seq in range(1, 21)]  # 75 labelled rows each
    store.reads.clear()

    table, counts = read_training_rows(store, _manifest(batches), None, max_rows=150)

    assert table.num_rows == 150
    assert table.column("y").null_count == 0
    # the newest 150 labelled rows: all of batch 20's and batch 19's (75 each)
    assert {int(x) // 1000 for x in table.column("x").to_pylist()} == {19, 20}
    assert store.reads == [batches[19].artifact.sha256, batches[18].artifact.sha256]  # nothing further back
    assert [(e.seq, n) for e, n in counts] == [(19, 75), (20, 75)]


def test_a_compacted_segment_is_read_from_its_last_row_groups(tmp_path: Path) -> None:
    store = _store(tmp_path)
    small = [_batch(store, seq, 500) for seq in range(1, 41)]
    merged = compacted_entry(small, store.put(compact(store, small, group_rows=500), suffix=".parquet"))
    newest = _batch(store, 41, 100)
    assert pq.ParquetFile(pa.BufferReader(store.get(merged.artifact))).num_row_groups == 40

    table, counts = read_training_rows(store, _manifest([merged, newest]), None, max_rows=1100)

    # 100 rows of batch 41, then the last 1,000 rows of the compacted segment: its last two row groups
    expected = [float(seq * 1000 + i) for seq in (39, 40) for i in range(500)] + [41000.0 + i for i in range(100)]
    assert table.column("x").to_pylist() == expected
    assert [(e.seq, n) for e, n in counts] == [(40, 1000), (41, 100)]


def test_since_cuts_a_compacted_segment_by_row_and_without_max_rows_everything_since_is_read(tmp_path: Path) -> None:
    store = _store(tmp_path)
    small = [_batch(store, seq, 10) for seq in range(1, 11)]
    merged = compacted_entry(small, store.put(compact(store, small), suffix=".parquet"))
    later = [_batch(store, seq, 10, unlabelled_every=2) for seq in (11, 12)]

    table, counts = read_training_rows(store, _manifest([merged, *later]), T0 + timedelta(minutes=8), None)

    assert sorted({int(x) // 1000 for x in table.column("x").to_pylist()}) == [8, 9, 10, 11, 12]
    assert table.num_rows == 30 + 5 + 5  # batches 8-10 whole, and the labelled half of 11 and 12
    assert sum(n for _, n in counts) == table.num_rows


def test_rows_since_a_moment_inside_a_batchs_millisecond_agree_with_the_batch_counts(tmp_path: Path) -> None:
    """Rows carry their acceptance time to the millisecond; a drift's start has microseconds. A
    compacted segment cut by its rows' times gives exactly the rows of the batches the manifest counts
    as accepted at or after that start, whichever microsecond of a batch's millisecond it falls on."""
    store = _store(tmp_path)
    stamps = [acceptance_time(T0 + timedelta(seconds=seq, microseconds=123_456)) for seq in range(1, 5)]
    batches = []
    for seq, at in enumerate(stamps, start=1):
        ref = store.put(batch_to_parquet(SCHEMA, [{"x": float(seq), "y": 1}] * 10, at=at), suffix=".parquet")
        batches.append(BatchEntry(seq=seq, artifact=ref, rows=10, created_at=at))
    merged = compacted_entry(batches, store.put(compact(store, batches), suffix=".parquet"))
    third = stamps[2]
    for since in (third - timedelta(microseconds=1), third, third + timedelta(microseconds=1),
                  third + timedelta(microseconds=999), third + timedelta(milliseconds=1)):  # fmt: skip
        counted = sum(b.rows for b in _manifest(batches).since(since))
        table, _ = read_training_rows(store, _manifest([merged]), since, max_rows=None)
        assert table.num_rows == counted, since
        assert counted == (20 if since <= third else 10)
