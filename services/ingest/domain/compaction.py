"""Which segments to compact: runs of small consecutive batches from one sender, tier by tier.

Many small submissions would make every manifest list many small files, so a
version would cost more to write and read as history grows. Merging a run of
consecutive small segments into one file keeps the list short; merging only
consecutive segments (in sequence order) keeps every row where it was, so the
concatenation of a manifest's segments is unchanged. Only segments from the
same principal with the same trust are merged: a segment's provenance stays
one sender, which the trainer's trust rule counts rows by.

Merges are tiered, as in a log-structured merge tree: a segment's tier is the
number of digits of its row count in base ``min_run``, and the compactor
merges runs of at least ``min_run`` segments of one tier, the lowest tier
that has such a run first. ``min_run`` batches of one tier make one segment of a higher tier,
so a row is rewritten about log_min_run(rows) times in all, the number of
small segments stays about ``min_run`` per tier, and a large segment is not
re-read and rewritten each time a few small batches arrive after it (which
made the cost of a submission grow with the dataset's history).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    first_seq: int
    last_seq: int
    rows: int
    principal: str | None
    trusted: bool | None


def tier(rows: int, fanout: int) -> int:
    """The number of digits of ``rows`` in base ``fanout``, less one (0 for fewer than ``fanout`` rows)."""
    level = 0
    while rows >= fanout:
        rows //= fanout
        level += 1
    return level


def runs_to_compact(segments: Sequence[Segment], *, small_rows: int, min_run: int) -> list[list[Segment]]:
    """Runs of at least ``min_run`` consecutive small segments (under ``small_rows`` rows) of one tier,
    one sender per run, at the lowest tier that has one (``segments`` in sequence order).

    Batches of mixed sizes may leave no tier with a run of its own: then, once more consecutive
    small segments of one sender are waiting than ``min_run`` per tier present among them (and
    one tier more), the ``min_run`` neighbours holding the
    fewest rows among them are merged (so their count stays bounded, and the large ones are
    left alone as long as smaller neighbours exist)."""

    def small(s: Segment) -> bool:
        return s.rows < small_rows

    for top in sorted({tier(s.rows, min_run) for s in segments if small(s)}):
        runs = _runs(segments, functools.partial(_of_tier, top, small_rows, min_run), min_run)
        if runs:
            return runs
    for run in _runs(segments, small, 2 * min_run):
        if len(run) < min_run * (len({tier(s.rows, min_run) for s in run}) + 1):
            continue  # no more than a tiered history holds: each tier will fill up in turn
        start = min(range(len(run) - min_run + 1), key=lambda i: sum(s.rows for s in run[i : i + min_run]))
        return [run[start : start + min_run]]
    return []


def _of_tier(top: int, small_rows: int, fanout: int, segment: Segment) -> bool:
    return segment.rows < small_rows and tier(segment.rows, fanout) == top


def _runs(segments: Sequence[Segment], fits: Callable[[Segment], bool], min_run: int) -> list[list[Segment]]:
    runs: list[list[Segment]] = []
    current: list[Segment] = []
    for segment in segments:
        joins = (
            fits(segment)
            and bool(current)
            and (segment.principal, segment.trusted) == (current[-1].principal, current[-1].trusted)
            and segment.first_seq == current[-1].last_seq + 1
        )
        if not joins:
            if len(current) >= min_run:
                runs.append(current)
            current = [segment] if fits(segment) else []
        else:
            current.append(segment)
    if len(current) >= min_run:
        runs.append(current)
    return runs
