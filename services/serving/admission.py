"""Admission of large request bodies: a few at a time, the rest wait before their body is read.

Under 200 concurrent predicts of 1,000 instances each, serving read, parsed and held all 200
bodies at once: every one of them queued work on the event loop, so ``/healthz`` waited
seconds behind them, and the Python objects of 200 parsed bodies grew the process by
hundreds of MiB that the allocator kept afterwards (issue 11). Two cores answer no faster
with 200 requests in hand than with a handful, so the bodies of large requests (those over
``min_bytes``) share a budget of ``capacity`` bytes by their declared length; a request
over the budget waits, unread (uvicorn stops reading a connection whose body is not
consumed), and is admitted first come, first served. Small requests, such as single-row
predicts and every probe, are never held: micro-batching gathers those.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections import deque
from collections.abc import Callable

from prometheus_client import Gauge
from starlette.types import ASGIApp, Receive, Scope, Send


class ByteBudget:
    """At most ``capacity`` bytes admitted at once, first come, first served; a request larger
    than the whole budget is admitted alone. ``on_idle`` runs whenever the last admitted
    request leaves and none waits."""

    def __init__(self, capacity: int, on_idle: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.used = 0
        self.on_idle = on_idle
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, size: int) -> int:
        """Wait until ``size`` bytes fit; the amount to give back to :meth:`release`."""
        size = min(size, self.capacity)
        if not self._waiting and self.used + size <= self.capacity:
            self.used += size
            return size
        turn = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._waiting.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(size)  # admitted just as the caller went away
            else:
                self._waiting.remove(entry)
                self._admit()
            raise
        return size

    def release(self, size: int) -> None:
        self.used -= size
        self._admit()
        if self.used == 0 and self.on_idle is not None:
            self.on_idle()

    def _admit(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            size, turn = self._waiting.popleft()
            self.used += size
            turn.set_result(None)


class MemoryTrim:
    """Hands the C heap's free memory back to the system once a burst of large requests is over.

    The bodies, parsed documents and answers of large requests are freed when they are done,
    but glibc keeps the freed pages in its arenas (one per thread that allocated), so the
    process stayed at its peak after a flood. ``malloc_trim`` returns them; it runs in a
    thread, ``delay_s`` after the budget went idle, and only if it is still idle then."""

    def __init__(self, budget: ByteBudget, delay_s: float = 1.0) -> None:
        self.budget = budget
        self.delay_s = delay_s
        self.trims = 0
        self._pending: asyncio.TimerHandle | None = None
        self._trim = _malloc_trim()
        budget.on_idle = self.soon

    def soon(self) -> None:
        if self._trim is None or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        if self.budget.used == 0 and not self.budget.waiting and self._trim is not None:
            self.trims += 1
            asyncio.get_running_loop().run_in_executor(None, self._trim, 0)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Admission:
    """The ASGI layer holding large request bodies to the :class:`ByteBudget`."""

    def __init__(self, app: ASGIApp, budget: ByteBudget, *, min_bytes: int, waiting: Gauge | None = None) -> None:
        self.app = app
        self.budget = budget
        self.min_bytes = min_bytes
        self.waiting = waiting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = _declared_length(scope) if scope["type"] == "http" else None
        if size is None or size < self.min_bytes:
            await self.app(scope, receive, send)
            return
        if self.waiting is not None:
            self.waiting.inc()
        try:
            granted = await self.budget.acquire(size)
        finally:
            if self.waiting is not None:
                self.waiting.dec()
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(granted)


def _declared_length(scope: Scope) -> int | None:
    """The request's body size: its Content-Length, or for a chunked body a size that counts as large."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return 1 << 62  # unknown until read: held like the largest body (admitted alone)
    return None
