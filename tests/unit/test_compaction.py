"""Which segments ingest's compactor merges."""

from __future__ import annotations

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
    assert runs_to_compact([merged, seg(5), seg(6)], small_rows=1000, min_run=3) == [[merged, seg(5), seg(6)]]
