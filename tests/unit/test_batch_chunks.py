"""Batch predictions: chunks of an input split into segments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.trainer.domain.batch import Piece, chunk_count, chunk_pieces


def test_chunks_cross_segment_boundaries_in_row_order() -> None:
    segments = [5, 3, 0, 7]
    assert chunk_count(15, 4) == 4
    assert chunk_pieces(segments, 0, 4) == [Piece(0, 0, 4)]
    assert chunk_pieces(segments, 1, 4) == [Piece(0, 4, 5), Piece(1, 0, 3)]
    assert chunk_pieces(segments, 2, 4) == [Piece(3, 0, 4)]
    assert chunk_pieces(segments, 3, 4) == [Piece(3, 4, 7)]
    with pytest.raises(ValueError, match="past the input"):
        chunk_pieces(segments, 4, 4)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(1, 40))
def test_chunks_cover_every_row_once(segments: list[int], chunk_rows: int) -> None:
    total = sum(segments)
    rows = []
    for chunk in range(chunk_count(total, chunk_rows)):
        pieces = chunk_pieces(segments, chunk, chunk_rows)
        taken = [sum(segments[: p.segment]) + r for p in pieces for r in range(p.start, p.stop)]
        assert 0 < len(taken) <= chunk_rows
        rows.extend(taken)
    assert rows == list(range(total))
