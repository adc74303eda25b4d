"""Which predict requests get a trace span of their own.

A recorded span costs more CPU than the rest of a small predict request's own
work (its ids, attributes, context switches and export), so at thousands of
requests a second tracing each one would be the largest cost serving has. A
trace is worth keeping for what it shows: which request, how long, linked to
the prediction log. A budget of so many traced requests a second keeps every
request traced when traffic is light (a demo, a debugging session) and a
steady sample when it is heavy, at a bounded cost. A caller that sent a sampled
``traceparent`` is always traced: its trace would otherwise have a hole.
"""

from __future__ import annotations

import time


class TraceBudget:
    """A token bucket: at most ``per_s`` traces a second, with bursts up to one second's worth."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._tokens = per_s
        self._at = time.monotonic()

    def take(self) -> bool:
        """Whether this request may be traced (and, if so, spend its token)."""
        now = time.monotonic()
        self._tokens = min(self.per_s, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
