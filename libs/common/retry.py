"""Start-up retries: a dependency that is down is waited for, not crashed on.

One loop for every dependency (PostgreSQL, the Kafka broker, its admin API),
so they all back off alike: 0.2 s doubling to 5 s, one warning line per
failed try, and after the deadline a :class:`TransientError` that says what
was unreachable and where.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from libs.common.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def retry_with_backoff(
    attempt: Callable[[], Awaitable[T]],
    *,
    name: str,
    where: str,
    timeout_s: float,
    errors: tuple[type[BaseException], ...],
    cleanup: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """Await ``attempt()`` until it succeeds; retry ``errors`` with backoff until ``timeout_s``.

    ``cleanup`` runs after each failed try (close a half-opened client).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return await attempt()
        except errors as exc:
            if cleanup is not None:
                await cleanup()
            if time.monotonic() + delay > deadline:
                raise TransientError(f"{name} unreachable at {where} after {timeout_s:.0f}s: {exc}") from exc
            log.warning("%s not reachable, retrying in %.1fs", name, delay, extra={"where": where, "error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
