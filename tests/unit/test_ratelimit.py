"""Token buckets per principal: the burst passes, then the rate holds, and the wait is exact."""

from __future__ import annotations

import pytest

from libs.common.errors import TooManyRequests
from libs.common.ratelimit import RateLimit, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_burst_passes_then_callers_wait_for_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=100, clock=clock)
    assert buckets.take("mallory", 100) == 0.0
    assert buckets.take("mallory", 5) == pytest.approx(0.5)  # 5 tokens at 10/s
    clock.now += 0.5
    assert buckets.take("mallory", 5) == 0.0
    assert buckets.take("mallory", 1) == pytest.approx(0.1)


def test_principals_do_not_share_a_bucket() -> None:
    buckets = TokenBuckets(rate=1, burst=10, clock=Clock())
    assert buckets.take("mallory", 10) == 0.0
    assert buckets.take("mallory") > 0
    assert buckets.take("upstream", 10) == 0.0


def test_a_bucket_never_fills_beyond_the_burst() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=20, clock=clock)
    assert buckets.take("a", 20) == 0.0
    clock.now += 3600
    assert buckets.take("a", 20) == 0.0
    assert buckets.take("a", 1) == pytest.approx(0.1)


def test_a_request_larger_than_the_burst_needs_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=100, burst=1000, clock=clock)
    assert buckets.take("a", 5000) == 0.0  # full bucket: let through, 4000 tokens in debt
    assert buckets.take("a", 1) == pytest.approx(40.01)  # the debt is paid at the rate first
    clock.now += 40.02
    assert buckets.take("a", 1) == 0.0
    assert buckets.take("a", 5000) == pytest.approx(9.99)  # needs the full burst again


def test_the_long_run_rate_holds_for_a_flood() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=50, burst=200, clock=clock)
    accepted = 0
    for _ in range(10_000):  # 10,000 labels offered one per millisecond for 10 s
        clock.now += 0.001
        if buckets.take("mallory") == 0.0:
            accepted += 1
    assert accepted == pytest.approx(200 + 50 * 10, abs=2)


def test_rate_and_burst_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBuckets(rate=0, burst=10)


async def test_a_principal_over_its_rate_gets_429_with_retry_after() -> None:
    clock = Clock()
    limit = RateLimit("feedback", rate=10, burst=50, clock=clock)
    await limit.charge("mallory", 50)
    with pytest.raises(TooManyRequests) as caught:
        await limit.charge("mallory", 25)
    error = caught.value
    assert error.status_code == 429
    assert error.headers == {"Retry-After": "3"}  # 2.5 s, rounded up
    assert error.to_dict()["error"] == "rate_limited"
    assert error.to_dict()["details"] == {"retry_after_s": 2.5, "principal": "mallory"}
    assert "mallory is over its feedback rate (10/s, burst 50)" in error.message
    await limit.charge("upstream", 50)  # another principal is not affected
