"""Batch predictions: how a job's input is cut into chunks, and what its output holds.

A job's input is a list of Parquet segments (a dataset version's segments in
order, or one uploaded file); its rows are numbered 0…N-1 across them. Chunk
``k`` is rows ``[k·C, (k+1)·C)``, so a chunk is the same rows whichever process
computes it, and a job that stopped after chunk ``k`` resumes at ``k+1``. Only
one chunk's rows (and the segment they come from) are ever in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: The output's columns besides one probability column per class (classification).
ROW_ID = "row_id"
PREDICTION = "prediction"


@dataclass(frozen=True)
class Piece:
    """The rows ``[start, stop)`` of segment ``segment`` that a chunk takes."""

    segment: int
    start: int
    stop: int


def chunk_count(total_rows: int, chunk_rows: int) -> int:
    """Chunks of at most ``chunk_rows`` rows covering ``total_rows`` rows."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    return -(-total_rows // chunk_rows)


def chunk_pieces(segment_rows: Sequence[int], chunk: int, chunk_rows: int) -> list[Piece]:
    """The pieces of the segments holding chunk ``chunk``'s rows, in row order."""
    first, last = chunk * chunk_rows, (chunk + 1) * chunk_rows
    pieces, offset = [], 0
    for index, rows in enumerate(segment_rows):
        start, stop = max(first, offset), min(last, offset + rows)
        if start < stop:
            pieces.append(Piece(index, start - offset, stop - offset))
        offset += rows
        if offset >= last:
            break
    if not pieces:
        raise ValueError(f"chunk {chunk} is past the input's {offset} rows")
    return pieces


def probability_column(label: object) -> str:
    """The output column of the probability of class ``label``."""
    return f"proba_{label}"


def missing_features(features: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The model's features the input lacks (a batch job refuses such an input up front)."""
    present = set(columns)
    return [name for name in features if name not in present]
