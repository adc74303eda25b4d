"""Stopping background tasks: a cancel that meets a wake-up is not lost, and a
cancelled stop does not carry on (libs/common/tasks.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from libs.common.tasks import bounded, cancel_and_wait


async def _woken_loop(wake: asyncio.Event, rounds: list[int]) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await wake.wait()
        wake.clear()
        rounds.append(1)


async def test_a_loop_woken_as_it_is_cancelled_stops() -> None:
    wake, rounds = asyncio.Event(), list[int]()
    task = asyncio.create_task(_woken_loop(wake, rounds))
    await asyncio.sleep(0.01)
    wake.set()  # completes in the same iteration as the cancel below
    stopper = asyncio.ensure_future(cancel_and_wait(task))
    done, _ = await asyncio.wait([stopper], timeout=2)
    assert done
    assert task.cancelled()


async def test_a_cancelled_stop_is_cancelled_too() -> None:
    """The caller's cancellation comes through, even while the task is still cleaning up."""

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.2)

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0.01)
    after: list[str] = []

    async def stop() -> None:
        await cancel_and_wait(task)
        after.append("went on")

    stopping = asyncio.create_task(stop())
    await asyncio.sleep(0.05)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert after == []
    assert task.done()


async def test_an_error_the_task_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)


async def test_none_is_nothing_to_stop() -> None:
    await cancel_and_wait(None)


async def test_a_step_that_hangs_is_named_and_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    """A bounded stop says where it is stuck, through tasks it awaits, then lets the caller go on."""

    async def leave_group() -> None:
        await asyncio.Event().wait()

    async def stop_clients(coordination: asyncio.Task[None]) -> None:
        await coordination

    coordination = asyncio.create_task(leave_group(), name="coordination")
    assert not await bounded(stop_clients(coordination), timeout_s=0.1, what="stopping the clients")
    message = caplog.records[-1].getMessage()
    assert "stopping the clients did not finish in 0.1s" in message
    assert "stop_clients (test_tasks.py:" in message
    assert "task coordination [leave_group (test_tasks.py:" in message
    coordination.cancel()


async def test_a_step_that_ends_is_not_bounded() -> None:
    async def quick() -> None:
        await asyncio.sleep(0)

    async def fails() -> None:
        raise RuntimeError("boom")

    assert await bounded(quick(), timeout_s=5, what="quick")
    with pytest.raises(RuntimeError, match="boom"):
        await bounded(fails(), timeout_s=5, what="fails")
