"""Admission of large bodies in serving: a byte budget, first come first served; small ones never wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.serving.admission import Admission, ByteBudget, MemoryTrim


async def test_the_budget_admits_in_arrival_order_and_a_larger_request_alone() -> None:
    budget = ByteBudget(100)
    order: list[str] = []

    async def take(name: str, size: int, hold: asyncio.Event) -> None:
        granted = await budget.acquire(size)
        order.append(name)
        await hold.wait()
        budget.release(granted)

    holds = {name: asyncio.Event() for name in "abcd"}
    tasks = [asyncio.create_task(take("a", 60, holds["a"]))]
    await asyncio.sleep(0)
    tasks += [
        asyncio.create_task(take(n, s, holds[n]))
        for n, s in (
            (
                "b",
                60,
            ),
            ("c", 500),
            ("d", 10),
        )
    ]
    await asyncio.sleep(0.01)
    assert order == ["a"]  # d would fit, but b came first: no overtaking
    holds["a"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b"]  # c (over the whole budget) waits for b to leave, then runs alone
    holds["b"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "c"]
    assert budget.used == 100
    holds["c"].set()
    holds["d"].set()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
    assert (budget.used, budget.waiting) == (0, 0)


async def test_a_waiter_that_goes_away_gives_its_turn_to_the_next() -> None:
    budget = ByteBudget(100)
    first = await budget.acquire(100)
    gone = asyncio.create_task(budget.acquire(50))
    later = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    budget.release(first)
    assert await later == 50
    assert (budget.used, budget.waiting) == (50, 0)


def _scope(length: int | None, method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    return {"type": "http", "method": method, "path": "/v1/models/m/predict", "headers": headers}


async def test_large_bodies_share_the_budget_and_small_ones_and_probes_pass_at_once() -> None:
    inside: list[int] = []
    busiest = 0
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal busiest
        inside.append(1)
        busiest = max(busiest, len(inside))
        await release.wait()
        inside.pop()

    layer = Admission(app, ByteBudget(3 * 200_000), min_bytes=64 * 1024)

    async def nothing() -> dict[str, Any]:
        return {"type": "http.request"}

    async def ignore(message: Any) -> None:
        return None

    large = [asyncio.create_task(layer(_scope(180_000), nothing, ignore)) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert len(inside) == 3  # three 180 kB bodies fit in 600 kB; seventeen wait, unread
    small = [asyncio.create_task(layer(_scope(n), nothing, ignore)) for n in (200, None)]
    await asyncio.sleep(0.01)
    assert len(inside) == 5  # a one-row predict and a GET /healthz are not held
    release.set()
    await asyncio.gather(*large, *small)
    assert busiest == 5
    assert layer.budget.used == 0


async def test_the_heap_is_trimmed_once_a_burst_is_over_and_not_while_requests_run() -> None:
    budget = ByteBudget(100)
    trim = MemoryTrim(budget, delay_s=0.02)
    first = await budget.acquire(60)
    second = await budget.acquire(40)
    budget.release(first)
    await asyncio.sleep(0.05)
    assert trim.trims == 0  # a request still runs
    budget.release(second)
    budget.release(await budget.acquire(10))  # idle again at once: one trim for the burst
    await asyncio.sleep(0.05)
    assert trim.trims == 1
    held = await budget.acquire(10)
    await asyncio.sleep(0)
    budget.release(held)
    held = await budget.acquire(10)  # busy again when the delay ends: no trim
    await asyncio.sleep(0.05)
    assert trim.trims == 1
    budget.release(held)
