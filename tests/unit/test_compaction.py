"""Which segments ingest's compactor merges."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import INGESTED_AT, BatchEntry, batch_to_parquet, compact, compacted_entry
from libs.common.schema import DatasetSchema
from services.ingest.domain.compaction import Segment, runs_to_compact


def seg(seq: int, rows: int = 10, who: str | None = "a", trusted: bool | None = True) -> Segment:
    return Segment(seq, seq, rows, who, trusted)


def test_runs_of_small_consecutive_segments_from_one_sender() -> None:
    segments = [seg(1, 5000), seg(2), seg(3), seg(4), seg(5, who="b"), seg(6, who="b"), seg(7), seg(8), seg(9)]
    runs = runs_to_compact(segments, small_rows=1000, min_run=3)
    assert [[s.first_seq for s in run] for run in runs] == [[2, 3, 4], [7, 8, 9]]


def test_short_runs_and_trust_changes_are_left_alone() -> None:
    segments = [seg(1), seg(2), seg(3, trusted=False), seg(4, trusted=False), seg(5, 2000), seg(6)]
    assert runs_to_compact(segments, small_rows=1000, min_run=3) == []
    merged = Segment(1, 4, 40, "a", True)
    assert runs_to_compact([merged, seg(5), seg(6)], small_rows=1000, min_run=3) == []  # of a higher tier
    assert runs_to_compact([merged, seg(5), seg(6), seg(7)], small_rows=1000, min_run=3) == [[seg(5), seg(6), seg(7)]]


def test_merges_are_tiered_so_a_large_segment_is_not_rewritten_for_each_small_batch() -> None:
    big = Segment(1, 64, 6400, "a", True)  # tier 4 in base 8
    fresh = [seg(s, 100) for s in range(65, 73)]  # eight batches of tier 2
    runs = runs_to_compact([big, *fresh], small_rows=50_000, min_run=8)
    assert runs == [fresh]  # the big one is left alone
    assert runs_to_compact([big, *fresh[:7]], small_rows=50_000, min_run=8) == []


def test_segment_count_stays_logarithmic_over_many_submissions() -> None:
    segments: list[Segment] = []
    rewritten = 0
    for seq in range(1, 1001):
        segments.append(seg(seq, 100))
        while runs := runs_to_compact(segments, small_rows=10**9, min_run=8):
            for run in runs:
                rewritten += sum(s.rows for s in run)
                at = segments.index(run[0])
                merged = Segment(run[0].first_seq, run[-1].last_seq, sum(s.rows for s in run), "a", True)
                segments[at : at + len(run)] = [merged]
        assert len(segments) <= 8 * 5
    assert [s.first_seq for s in segments[1:]] == [s.last_seq + 1 for s in segments[:-1]]
    assert sum(s.rows for s in segments) == 100_000
    assert rewritten <= 100_000 * 4  # each row rewritten about log8(1000) times, not once per submission


def test_mixed_batch_sizes_keep_the_segment_count_bounded() -> None:
    rng = random.Random(3)
    segments: list[Segment] = []
    total = 0
    for seq in range(1, 1501):
        rows = rng.randint(10, 1000)
        total += rows
        segments.append(seg(seq, rows))
        while runs := runs_to_compact(segments, small_rows=10**9, min_run=8):
            for run in runs:
                at = segments.index(run[0])
                segments[at : at + len(run)] = [
                    Segment(run[0].first_seq, run[-1].last_seq, sum(s.rows for s in run), "a", True)
                ]
        assert len(segments) < 2 * 8 * 6
    assert sum(s.rows for s in segments) == total


def test_merging_merged_segments_keeps_the_rows_in_order_in_bounded_row_groups(tmp_path: Path) -> None:
    schema = DatasetSchema.model_validate(
        {"features": [{"name": "x", "dtype": "numeric"}], "target": {"name": "y", "dtype": "categorical"},
         "task": "classification"}
    )  # fmt: skip
    store = ArtifactStore((tmp_path / "store").as_uri())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    batches = []
    for s in range(1, 7):
        rows = [{"x": float(s * 100 + i), "y": "a"} for i in range(s)]
        ref = store.put(batch_to_parquet(schema, rows, at=t0 + timedelta(minutes=s)), suffix=".parquet")
        batches.append(BatchEntry(seq=s, artifact=ref, rows=s, created_at=t0 + timedelta(minutes=s)))
    low = compacted_entry(batches[:3], store.put(compact(store, batches[:3], group_rows=4), suffix=".parquet"))
    high = compacted_entry(batches[3:], store.put(compact(store, batches[3:], group_rows=4), suffix=".parquet"))
    both = compacted_entry([low, high], store.put(compact(store, [low, high], group_rows=4), suffix=".parquet"))

    file = pq.ParquetFile(pa.BufferReader(store.get(both.artifact)))
    assert [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)] == [4, 4, 4, 4, 4, 1]
    assert file.read().column("x").to_pylist() == [float(s * 100 + i) for s in range(1, 7) for i in range(s)]
    assert (both.first_seq, both.seq, both.rows) == (1, 6, 21)
    # each row group covers one stretch of ingestion time, so a reader can skip groups by statistics
    stamps = [file.read_row_group(g).column(INGESTED_AT).to_pylist() for g in range(file.num_row_groups)]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(stamps))
