"""Token buckets per principal: how much one caller may push into the loop.

Feedback and records feed the live metric and the training data; a caller who
can post without limit can move both (issue 10: 12,900 forged labels, 2,000
flipped rows). Each principal gets a bucket of ``burst`` tokens refilled at
``rate`` tokens per second, and every row or label costs one token, so a
request is charged for what it carries, not for being one request.

A request larger than the burst would never fit; it is let through when the
bucket is full and leaves the bucket in debt, so the long-run rate still holds
and a big batch costs its sender the time it is worth.

Two layers of the same buckets. Each replica keeps one in memory, which turns a
flood away without any I/O. A request it lets through is then charged to the
principal's bucket in PostgreSQL (one atomic upsert, in the shared ``auth``
schema), which every replica shares: so the limit is the configured rate
whatever the number of replicas, and an autoscaler that adds replicas under a
flood does not add budget to the flooder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

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


# One statement, atomic under the row's lock: refill by the time elapsed, then charge if the
# cost fits (or, for a cost above the burst, if the bucket is full); otherwise leave the row as it
# was. ``at = now()`` afterwards tells whether the charge was made.
_CHARGE = """
INSERT INTO rate_buckets AS b (scope, principal, tokens, at) VALUES ($1, $2, $3::float8 - $5::float8, now())
ON CONFLICT (scope, principal) DO UPDATE SET
    tokens = CASE WHEN least($3, b.tokens + extract(epoch FROM now() - b.at)::float8 * $4::float8) >= least($5, $3)
                  THEN least($3, b.tokens + extract(epoch FROM now() - b.at)::float8 * $4) - $5 ELSE b.tokens END,
    at = CASE WHEN least($3, b.tokens + extract(epoch FROM now() - b.at)::float8 * $4) >= least($5, $3)
              THEN now() ELSE b.at END
RETURNING tokens, extract(epoch FROM now() - at)::float8 AS age, at = now() AS taken
"""


class SharedBuckets:
    """The same buckets in PostgreSQL, shared by every replica that uses the same ``scope``."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], scope: str, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self._pool = pool
        self.scope = scope
        self.rate = rate
        self.burst = burst

    async def take(self, key: str, cost: float = 1.0) -> float:
        """Charge ``cost`` tokens to ``key``'s shared bucket: 0.0 when allowed, else the seconds to wait first."""
        row = await self._pool().fetchrow(_CHARGE, self.scope, key, self.burst, self.rate, float(cost))
        assert row is not None
        if row["taken"]:
            return 0.0
        available = min(self.burst, float(row["tokens"]) + float(row["age"]) * self.rate)
        return max(0.0, (min(cost, self.burst) - available) / self.rate)


class RateLimit:
    """A limit on one kind of intake (feedback, records): raises 429 for a principal over its rate."""

    def __init__(
        self, what: str, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
        *, shared: Callable[[], asyncpg.Pool] | None = None, installation: str = "",
    ) -> None:  # fmt: skip
        """``shared``: the pool on the ``auth`` schema, to share the buckets with every replica of
        the same ``installation`` (its topic prefix); None keeps them in this process only."""
        self.what = what
        self.buckets = TokenBuckets(rate, burst, clock)
        self.shared = None if shared is None else SharedBuckets(shared, f"{installation}{what}", rate, burst)

    async def charge(self, principal: str, items: int) -> None:
        """Charge ``items`` to ``principal``, or raise :class:`TooManyRequests` with the wait."""
        wait = self.buckets.take(principal, items)
        if wait == 0.0 and self.shared is not None:
            wait = await self.shared.take(principal, items)
        if wait > 0:
            raise TooManyRequests(
                f"{principal} is over its {self.what} rate ({self.buckets.rate:g}/s, burst {self.buckets.burst:g}); "
                f"retry in {wait:.1f}s",
                retry_after_s=wait,
                principal=principal,
            )
