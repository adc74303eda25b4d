"""Retries: the one loop every "try again later" in driftloop goes through.

:func:`retry` awaits a call until it succeeds, waiting a bounded exponential
:class:`Backoff` between tries, and gives up (:class:`GaveUp`, carrying the
last error and the number of tries) on an error that retrying cannot fix,
after a number of tries, or when the next wait would pass a deadline. The
callers choose the policy, not the loop:

- start-up (:func:`retry_with_backoff`): PostgreSQL, the Kafka broker and its
  admin API are waited for until a deadline, 0.2 s doubling to 5 s, one warning
  line a try, then a :class:`TransientError` saying what was unreachable where;
- consumers (``libs.common.kafka``): a handler is retried ``max_attempts``
  times unless its error is permanent, then its message is dead-lettered;
- clients (serving's registry bootstrap, the demo's ingest stream): forever,
  or a few tries that send the same Idempotency-Key.

Cancellation is never retried (``CancelledError`` is not an ``Exception``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from libs.common.errors import DriftloopError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounded exponential backoff: wait ``first_s`` after the first failed try, then twice as long after
    each further one, never longer than ``max_s`` (so a long outage is polled, not waited out)."""

    first_s: float = 0.2
    max_s: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


class GaveUp(Exception):
    """A call retried in vain: ``error`` is its last failure, after ``attempts`` tries."""

    def __init__(self, error: Exception, attempts: int) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {error!r}")
        self.error = error
        self.attempts = attempts


def permanent(error: Exception) -> bool:
    """Whether retrying cannot help: a :class:`DriftloopError` that says it is not retryable
    (a malformed event, a missing model). Any other error may be transient."""
    return isinstance(error, DriftloopError) and not error.retryable


def _never(error: Exception) -> bool:
    return False


async def retry(
    call: Callable[[int], Awaitable[T]],
    *,
    backoff: Backoff,
    errors: tuple[type[Exception], ...] = (Exception,),
    attempts: int | None = None,
    deadline: float | None = None,
    give_up: Callable[[Exception], bool] = _never,
    on_retry: Callable[[Exception, int, float], object] | None = None,
) -> T:
    """``await call(attempt)`` (``attempt`` counts from 1) until it returns, retrying ``errors``.

    Gives up with :class:`GaveUp` when ``give_up(error)`` says so, after ``attempts`` tries, or when
    the next wait would end after ``deadline`` (a :func:`time.monotonic` instant); with neither bound
    it retries forever. ``on_retry(error, attempt, delay)`` runs before each wait (a log line, a
    metric). Errors not in ``errors`` propagate at once."""
    delays = backoff.delays()
    attempt = 1
    while True:
        try:
            return await call(attempt)
        except errors as exc:
            delay = next(delays)
            if (
                give_up(exc)
                or (attempts is not None and attempt >= attempts)
                or (deadline is not None and time.monotonic() + delay > deadline)
            ):
                raise GaveUp(exc, attempt) from exc
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1


async def retry_with_backoff(
    attempt: Callable[[], Awaitable[T]],
    *,
    name: str,
    where: str,
    timeout_s: float,
    errors: tuple[type[Exception], ...],
    cleanup: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """Start-up: await ``attempt()`` until it succeeds; retry ``errors`` with backoff until ``timeout_s``.

    ``cleanup`` runs after each failed try (close a half-opened client).
    """

    async def once(_: int) -> T:
        try:
            return await attempt()
        except errors:
            if cleanup is not None:
                await cleanup()
            raise

    def warn(exc: Exception, _: int, delay: float) -> None:
        log.warning("%s not reachable, retrying in %.1fs", name, delay, extra={"where": where, "error": str(exc)})

    try:
        return await retry(once, backoff=Backoff(0.2, 5.0), errors=errors, deadline=time.monotonic() + timeout_s,
                           on_retry=warn)  # fmt: skip
    except GaveUp as gave_up:
        raise TransientError(
            f"{name} unreachable at {where} after {timeout_s:.0f}s: {gave_up.error}"
        ) from gave_up.error
