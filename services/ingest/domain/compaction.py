"""Which segments to compact: runs of small consecutive batches from one sender.

Many small submissions would make every manifest list many small files, so a
version would cost more to write and read as history grows. Merging a run of
consecutive small segments into one file keeps the list short; merging only
consecutive segments (in sequence order) keeps every row where it was, so the
concatenation of a manifest's segments is unchanged. Only segments from the
same principal with the same trust are merged: a segment's provenance stays
one sender, which the trainer's trust rule counts rows by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    first_seq: int
    last_seq: int
    rows: int
    principal: str | None
    trusted: bool | None


def runs_to_compact(segments: Sequence[Segment], *, small_rows: int, min_run: int) -> list[list[Segment]]:
    """Runs of at least ``min_run`` consecutive segments under ``small_rows`` rows each, one sender per run
    (``segments`` in sequence order)."""
    runs: list[list[Segment]] = []
    current: list[Segment] = []
    for segment in segments:
        joins = (
            segment.rows < small_rows
            and bool(current)
            and (segment.principal, segment.trusted) == (current[-1].principal, current[-1].trusted)
            and segment.first_seq == current[-1].last_seq + 1
        )
        if not joins:
            if len(current) >= min_run:
                runs.append(current)
            current = [segment] if segment.rows < small_rows else []
        else:
            current.append(segment)
    if len(current) >= min_run:
        runs.append(current)
    return runs
