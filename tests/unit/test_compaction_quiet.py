"""The compactor's wait for a quiet moment (services/ingest/adapters/compaction._quiet)."""

from __future__ import annotations

import asyncio
import time

from services.ingest.adapters.compaction import Submissions, _quiet


async def test_it_returns_once_no_submission_came_for_the_quiet_time() -> None:
    wake = Submissions()
    wake.set()
    started = time.monotonic()
    await _quiet(wake, 0.2, max_deferred=100)
    assert 0.2 <= time.monotonic() - started < 1.0


async def test_a_stream_without_pauses_defers_it_max_deferred_submissions_at_most() -> None:
    wake = Submissions()

    async def stream() -> None:
        while True:
            wake.set()
            await asyncio.sleep(0.02)  # far under the quiet time: never a pause

    producer = asyncio.create_task(stream())
    try:
        async with asyncio.timeout(10):
            await _quiet(wake, 0.5, max_deferred=10)
        assert wake.since == 10
    finally:
        producer.cancel()


async def test_no_quiet_time_means_at_once() -> None:
    wake = Submissions()
    started = time.monotonic()
    await _quiet(wake, 0.0, max_deferred=10)
    assert time.monotonic() - started < 0.05
