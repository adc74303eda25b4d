"""The one retry loop: how many tries, which errors end it at once, the deadline, the waits."""

from __future__ import annotations

import time

import pytest

from libs.common.errors import NotFound, TransientError
from libs.common.retry import Backoff, GaveUp, permanent, retry, retry_with_backoff

FAST = Backoff(0.001, 0.004)


def test_backoff_doubles_up_to_its_bound() -> None:
    delays = Backoff(0.2, 1.0).delays()
    assert [next(delays) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


async def test_a_call_that_recovers_returns_and_each_retry_is_reported() -> None:
    seen: list[tuple[int, float]] = []

    async def flaky(attempt: int) -> str:
        if attempt < 3:
            raise OSError(f"down {attempt}")
        return f"up at {attempt}"

    answer = await retry(flaky, backoff=FAST, attempts=5, on_retry=lambda exc, a, d: seen.append((a, d)))
    assert answer == "up at 3"
    assert seen == [(1, 0.001), (2, 0.002)]


async def test_it_gives_up_after_the_attempts_with_the_last_error() -> None:
    async def down(attempt: int) -> None:
        raise OSError(f"down {attempt}")

    with pytest.raises(GaveUp) as caught:
        await retry(down, backoff=FAST, attempts=3)
    assert caught.value.attempts == 3
    assert str(caught.value.error) == "down 3"


async def test_a_permanent_error_is_not_retried() -> None:
    calls = 0

    async def missing(attempt: int) -> None:
        nonlocal calls
        calls += 1
        raise NotFound("no such model")

    with pytest.raises(GaveUp) as caught:
        await retry(missing, backoff=FAST, attempts=4, give_up=permanent)
    assert (calls, caught.value.attempts) == (1, 1)
    assert permanent(NotFound("x"))
    assert not permanent(TransientError("x"))
    assert not permanent(OSError())


async def test_errors_it_is_not_told_to_retry_propagate_at_once() -> None:
    async def broken(attempt: int) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await retry(broken, backoff=FAST, errors=(OSError,), attempts=4)


async def test_start_up_retries_until_the_deadline_then_says_what_was_unreachable() -> None:
    cleaned = 0

    async def connect() -> None:
        raise ConnectionRefusedError("refused")

    async def cleanup() -> None:
        nonlocal cleaned
        cleaned += 1

    started = time.monotonic()
    with pytest.raises(TransientError, match=r"database unreachable at db:5432 after 0s: refused"):
        await retry_with_backoff(connect, name="database", where="db:5432", timeout_s=0.5, errors=(OSError,),
                                 cleanup=cleanup)  # fmt: skip
    # 0.2 + 0.4 would pass the 0.5 s deadline: two tries, one wait, each failed try cleaned up
    assert cleaned == 2
    assert time.monotonic() - started >= 0.2
