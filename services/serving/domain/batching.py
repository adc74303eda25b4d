"""Adaptive micro-batching: concurrent requests for one model version share one inference call.

One inference call on a batch of 64 rows costs little more than on one row,
while HTTP, JSON and validation cost the same per request wherever they run.
So under load, requests that arrive together are gathered and inferred at once.

The wait is adaptive, never a fixed delay: the gatherer yields to the event
loop and flushes as soon as a round of the loop brings no new request (so a
lone request waits one loop turn, tens of microseconds), when ``max_rows`` are
pending, or when ``max_wait_s`` has passed, whichever comes first. A request
never waits behind a batch for more than that bound plus one inference call,
and each caller gets back exactly its own rows.

A batcher belongs to one loaded version: a request taken by v1 is inferred by
v1 even while v2 is swapped in, so a hot swap never mixes versions in a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


class Batch(Protocol):
    @property
    def rows(self) -> int: ...


class Sliceable(Protocol):
    def slice(self, start: int, stop: int) -> Any: ...


B = TypeVar("B", bound=Batch)
T = TypeVar("T", bound=Sliceable)


class MicroBatcher(Generic[B, T]):
    """Gathers batches submitted concurrently into one call of ``infer``."""

    def __init__(
        self,
        infer: Callable[[B], T],
        concat: Callable[[list[B]], B],
        *,
        inline_rows: int,
        max_rows: int = 256,
        max_wait_s: float = 0.001,
        enabled: bool = True,
        on_call: Callable[[int, int], None] | None = None,
    ) -> None:
        self._infer = infer
        self._concat = concat
        self.inline_rows = inline_rows
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.enabled = enabled
        self._pending: list[tuple[B, asyncio.Future[T]]] = []
        self._pending_rows = 0
        self._gatherer: asyncio.Task[None] | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._on_call = on_call
        """Told (requests, rows) of every inference call: fewer calls than requests means batching worked."""

    async def submit(self, batch: B) -> T:
        """The inference of ``batch``, possibly computed together with other callers' batches."""
        if not self.enabled or batch.rows >= self.max_rows:
            return await self._run(batch)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, future))
        self._pending_rows += batch.rows
        if self._pending_rows >= self.max_rows:  # full: infer now, without waiting for the gatherer
            flush = asyncio.create_task(self._flush(self._take()))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        elif self._gatherer is None:
            self._gatherer = asyncio.create_task(self._gather())
        return await future

    async def _run(self, batch: B, requests: int = 1) -> T:
        if self._on_call is not None:
            self._on_call(requests, batch.rows)
        if batch.rows <= self.inline_rows:
            return self._infer(batch)  # no thread hop: cheaper than the hop itself
        return await asyncio.to_thread(self._infer, batch)

    async def _gather(self) -> None:
        me = asyncio.current_task()
        deadline = time.perf_counter() + self.max_wait_s
        seen = -1
        try:
            # Keep yielding while requests keep arriving, within the bounds. A full batch
            # is taken by submit() meanwhile, which retires this gatherer (_gatherer is no longer it).
            while self._gatherer is me and len(self._pending) != seen and time.perf_counter() < deadline:
                seen = len(self._pending)
                await asyncio.sleep(0)
        except asyncio.CancelledError:  # shutting down: nobody is left waiting on this batch
            if self._gatherer is me:
                for _, future in self._take():
                    future.cancel()
            raise
        if self._gatherer is me:
            await self._flush(self._take())

    def _take(self) -> list[tuple[B, asyncio.Future[T]]]:
        pending, self._pending, self._pending_rows, self._gatherer = self._pending, [], 0, None
        return pending

    async def _flush(self, pending: list[tuple[B, asyncio.Future[T]]]) -> None:
        live = [(b, f) for b, f in pending if not f.done()]  # a caller that gave up is skipped
        if not live:
            return
        try:
            result = await self._run(self._concat([b for b, _ in live]), len(live))
        except Exception as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for batch, future in live:
            if not future.done():
                future.set_result(result.slice(start, start + batch.rows))
            start += batch.rows
