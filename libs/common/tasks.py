"""Background tasks that stop when told to, on Python 3.11.

``asyncio.wait_for`` on Python 3.11 loses a cancellation that arrives in the same
loop iteration in which the awaited thing completes: it returns the result as if
nothing happened (CPython gh-86296, fixed in 3.12 by building ``wait_for`` on
``asyncio.timeout``). A loop such as::

    while True:
        await asyncio.wait_for(wake.wait(), 1.0)   # woken by a NOTIFY, a commit ...
        ...

then lives on after ``task.cancel()`` whenever the wake-up and the cancel meet,
and a stop that awaits the task never returns. That was the intermittent hang of
service shutdowns (the outbox relay, woken by a commit as the service stopped).
So driftloop never uses ``asyncio.wait_for`` (ruff bans it: TID251); bounds are
``async with asyncio.timeout(s):``, and tasks are stopped with :func:`cancel_and_wait`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended.

    The task's own ``CancelledError`` is consumed; a cancellation of the caller is
    not (``contextlib.suppress(CancelledError)`` around ``await task`` would swallow
    both, and a stop that was itself being cancelled would carry on). An exception
    the task ended with is raised here.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


def where(task: asyncio.Task[Any]) -> str:
    """Where ``task`` is suspended, outermost first: ``stop (lifecycle.py:83) → close (group_coordinator.py:364)``.

    ``Task.get_stack`` shows a suspended task's outermost frame only; this follows
    the chain of awaited coroutines, so a stop that hangs says which step hangs.
    """
    steps: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(steps) < 64:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            steps.append(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        if awaited is not None and not hasattr(awaited, "cr_frame") and not hasattr(awaited, "gi_frame"):
            # ``await future`` leaves the future's C iterator here; the future is what it refers to
            awaited = next((r for r in gc.get_referents(awaited) if isinstance(r, asyncio.Future)), awaited)
        if isinstance(awaited, asyncio.Task):
            steps.append(f"task {awaited.get_name()} [{where(awaited)}]")
            break
        if isinstance(awaited, asyncio.Future):
            steps.append("a future")
            break
    return " → ".join(steps) or "not suspended"


async def bounded(coro: Coroutine[Any, Any, None], *, timeout_s: float, what: str) -> bool:
    """Run ``coro`` for at most ``timeout_s``; when it takes longer, log where it was stuck,
    cancel it and return False (the caller goes on)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait([task], timeout=timeout_s)
    if done:
        task.result()
        return True
    log.error("%s did not finish in %gs; stuck at: %s", what, timeout_s, where(task))
    task.cancel()
    return False


async def shielded(cleanup: Coroutine[Any, Any, T]) -> T:
    """Await a third-party ``cleanup`` in a task of its own: a cancel of the caller is raised
    here at once, while the cleanup runs to its end.

    For cleanups that swallow a cancellation. aiokafka's ``AIOKafkaClient.close()`` (behind
    every admin client's ``close()`` and consumer's and producer's ``stop()``) awaits its
    metadata task inside ``suppress(CancelledError)``: a task cancelled during it carried on
    as if nothing happened. The broker watch closes an admin client every few seconds, so a
    service stopping at that moment waited for it for ever.
    """
    return await asyncio.shield(cleanup)
