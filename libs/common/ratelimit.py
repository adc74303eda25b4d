"""Token buckets per principal: how much one caller may push into the loop.

Feedback and records feed the live metric and the training data; a caller who
can post without limit can move both (issue 10: 12,900 forged labels, 2,000
flipped rows). Each principal gets a bucket of ``burst`` tokens refilled at
``rate`` tokens per second, and every row or label costs one token, so a
request is charged for what it carries, not for being one request.

A request larger than the burst would never fit; it is let through when the
bucket is full and leaves the bucket in debt, so the long-run rate still holds
and a big batch costs its sender the time it is worth. Buckets live in each
replica's memory: with N replicas a principal gets up to N times the rate,
which bounds (not removes) what one token can do; the limit is per replica by
design, to keep a database round trip off the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from libs.common.errors import TooManyRequests


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One bucket per key (principal), created full on first use."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, cost: float = 1.0) -> float:
        """Charge ``cost`` tokens to ``key``'s bucket: 0.0 when allowed, else the seconds to wait first."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        needed = min(cost, self.burst)  # a request larger than the burst needs a full bucket
        if bucket.tokens < needed:
            return (needed - bucket.tokens) / self.rate
        bucket.tokens -= cost
        return 0.0


class RateLimit:
    """A limit on one kind of intake (feedback, records): raises 429 for a principal over its rate."""

    def __init__(self, what: str, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.buckets = TokenBuckets(rate, burst, clock)

    def charge(self, principal: str, items: int) -> None:
        """Charge ``items`` to ``principal``, or raise :class:`TooManyRequests` with the wait."""
        wait = self.buckets.take(principal, items)
        if wait > 0:
            raise TooManyRequests(
                f"{principal} is over its {self.what} rate ({self.buckets.rate:g}/s, burst {self.buckets.burst:g}); "
                f"retry in {wait:.1f}s",
                retry_after_s=wait,
                principal=principal,
            )
