"""Background compaction of dataset segments (see ``domain/compaction`` for which ones).

A merged file is written first, then swapped in for its segments in one
transaction under the dataset's lock, only if those segments are still the
current ones. Existing manifests keep naming the original batch files, which
stay: no version's content or bytes change; versions written afterwards list
the merged segment instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import BatchEntry, compact, compacted_entry
from services.ingest.adapters.repository import segments
from services.ingest.domain.compaction import Segment, runs_to_compact

log = logging.getLogger(__name__)


async def candidates(db: asyncpg.Pool, small_rows: int, min_run: int) -> list[str]:
    """Datasets with at least ``min_run`` small segments."""
    rows = await db.fetch(
        "SELECT dataset FROM segments WHERE rows < $1 GROUP BY dataset HAVING count(*) >= $2", small_rows, min_run
    )
    return [r["dataset"] for r in rows]


async def compact_dataset(db: asyncpg.Pool, store: ArtifactStore, dataset: str, small_rows: int, min_run: int) -> int:
    """Merge the dataset's runs of small segments, tier after tier; how many runs were merged."""
    merged = 0
    while True:
        current = await segments(db, dataset)
        plain = [Segment(e.first_seq or e.seq, e.seq, e.rows, e.principal, e.trusted) for e in current]
        by_first = {e.first_seq or e.seq: e for e in current}
        done = 0
        for run in runs_to_compact(plain, small_rows=small_rows, min_run=min_run):
            entries = [by_first[s.first_seq] for s in run]
            data = await asyncio.to_thread(compact, store, entries)
            ref = await asyncio.to_thread(store.put, data, suffix=".parquet")
            done += await _swap(db, dataset, entries, compacted_entry(entries, ref))
        if not done:
            return merged
        merged += done


async def _swap(db: asyncpg.Pool, dataset: str, old: list[BatchEntry], new: BatchEntry) -> int:
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM datasets WHERE name = $1 FOR UPDATE", dataset)
        present = await conn.fetch(
            "SELECT sha256 FROM segments WHERE dataset = $1 AND first_seq >= $2 AND last_seq <= $3 ORDER BY first_seq",
            dataset, old[0].first_seq or old[0].seq, old[-1].seq,
        )  # fmt: skip
        if [r["sha256"] for r in present] != [e.artifact.sha256 for e in old]:
            return 0  # another replica compacted them meanwhile: its file serves, this one stays unreferenced
        await conn.execute(
            "DELETE FROM segments WHERE dataset = $1 AND first_seq >= $2 AND last_seq <= $3",
            dataset, old[0].first_seq or old[0].seq, old[-1].seq,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO segments (dataset, first_seq, last_seq, uri, sha256, size, rows, created_at, until, "
            "principal, trusted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            dataset, new.first_seq, new.seq, new.artifact.uri, new.artifact.sha256, new.artifact.size, new.rows,
            new.created_at, new.last_at, new.principal, new.trusted,
        )  # fmt: skip
    return 1


class Submissions:
    """Stored submissions as the compactor sees them: a wake-up after each, and how many came since
    the compactor last ran. The request path and the records.submitted consumer call :meth:`set`."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.since = 0

    def set(self) -> None:
        self.since += 1
        self.event.set()


async def run(
    db: asyncpg.Pool,
    store: ArtifactStore,
    *,
    interval_s: float,
    small_rows: int,
    min_run: int,
    wake: Submissions | None = None,
    quiet_s: float = 0.0,
    max_deferred: int = 1,
) -> None:
    """Compact after stored submissions and at least every ``interval_s`` seconds, until cancelled; a
    failure is logged and retried next round.

    A merge re-reads and re-encodes every row it holds: on two cores, merging beside a burst of
    large submissions took about a third of the service's CPU (bench-ingest, Arrow bodies). So a
    round waits until no submission was stored for ``quiet_s`` seconds, the way an LSM tree defers
    compaction to idle time, but never past ``max_deferred`` submissions in a row: under a stream
    that never pauses it still runs every ``max_deferred`` submissions, so a manifest lists at most
    that many segments more than a fully compacted history would."""
    wake = wake or Submissions()
    while True:
        await _quiet(wake, quiet_s, max_deferred)
        wake.event.clear()
        wake.since = 0
        try:
            for dataset in await candidates(db, small_rows, min_run):
                merged = await compact_dataset(db, store, dataset, small_rows, min_run)
                if merged:
                    log.debug("compacted %d run(s) of small segments", merged, extra={"dataset": dataset})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("compaction failed; retrying in %.0f s", interval_s)
            await asyncio.sleep(interval_s)  # not at once on the next submission's wake-up
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await wake.event.wait()


async def _quiet(wake: Submissions, quiet_s: float, max_deferred: int) -> None:
    """Return once no submission was stored for ``quiet_s`` seconds, or ``max_deferred`` were."""
    while quiet_s > 0 and wake.since < max_deferred:
        wake.event.clear()
        try:
            async with asyncio.timeout(quiet_s):
                await wake.event.wait()
        except TimeoutError:
            return
