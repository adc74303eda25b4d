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
from typing import Any


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
