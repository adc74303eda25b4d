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


async def run(
    db: asyncpg.Pool,
    store: ArtifactStore,
    *,
    interval_s: float,
    small_rows: int,
    min_run: int,
    wake: asyncio.Event | None = None,
) -> None:
    """Compact when ``wake`` is set (after each stored submission) and at least every ``interval_s``
    seconds, until cancelled; a failure is logged and retried next round.

    Compacting soon after a submission keeps the number of segments, hence the size of the next
    manifest, from piling up between rounds."""
    wake = wake or asyncio.Event()
    while True:
        wake.clear()
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
                await wake.wait()
