"""Who fed a retrain, and when that means a person must approve it.

The loop promotes by itself, so whoever controls its inputs controls the
champion: forged labels raise a performance alarm, and poisoned rows then
train a challenger that wins on the attacker's own data (issue 10). Labels and
rows carry the principal that sent them and that principal's trust level.
When the labels behind a performance alarm, or a version's training rows,
came mostly (more than ``max_untrusted_share``) from untrusted principals,
the version is not made champion by the policy: it stops at ``candidate`` and
the audit says whose data it was. Data from trusted principals (the upstream
system's own account, the demo) leaves the loop automatic; data whose source
was never recorded (events from before principals existed) is not held.

The untrusted share is summed over all untrusted principals, not taken per
principal: tokens are cheap to come by for whoever already holds one, so an
attacker who spreads the same poison over ten untrusted tokens, each below the
share, must be held exactly like one who uses a single token. Untrusted
principals are by definition ones nobody vouches for, so several of them
agreeing is no more evidence than one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from libs.common.events import Source

#: How many of the largest untrusted principals a hold reason names.
NAMED = 3


@dataclass(frozen=True)
class TrustConfig:
    max_untrusted_share: float = 0.5
    """Largest share of labels or rows untrusted principals together may supply before a person must approve."""


@dataclass(frozen=True)
class Untrusted:
    """The untrusted part of some labels or rows: who supplied it, largest first, and how much of the whole."""

    sources: tuple[Source, ...]
    total: int

    @property
    def count(self) -> int:
        return sum(s.count for s in self.sources)

    @property
    def share(self) -> float:
        return self.count / self.total

    def describe(self, what: str) -> str:
        """``93% of the 300 labels … came from untrusted principal 'mallory'`` (or from N of them)."""
        head = f"{self.share:.0%} of the {self.total} {what} came from "
        if len(self.sources) == 1:
            return head + f"untrusted principal {self.sources[0].principal!r}"
        named = ", ".join(f"{s.principal!r} {s.count / self.total:.0%}" for s in self.sources[:NAMED])
        more = f", {len(self.sources) - NAMED} more" if len(self.sources) > NAMED else ""
        return head + f"{len(self.sources)} untrusted principals ({named}{more})"


def excess_untrusted(sources: Sequence[Source], config: TrustConfig) -> Untrusted | None:
    """The untrusted principals, when together they supplied more than the allowed share (else None)."""
    total = sum(s.count for s in sources)
    if total == 0:
        return None
    counts: dict[str, int] = {}
    for s in sources:
        if not s.trusted and s.count:
            counts[s.principal] = counts.get(s.principal, 0) + s.count
    largest_first = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    untrusted = Untrusted(tuple(Source(principal=p, trusted=False, count=c) for p, c in largest_first), total)
    if not untrusted.sources or untrusted.share <= config.max_untrusted_share:
        return None
    return untrusted


def hold_reason(
    *,
    trigger: str,
    alarm_kinds: Sequence[str],
    label_sources: Sequence[Source] | None,
    row_sources: Sequence[Source] | None,
    config: TrustConfig,
) -> str | None:
    """Why a version the promotion policy would make champion must wait for an approver (None: it need not).

    Labels count only behind a performance alarm (they are what raised it); rows count
    for any retrain, since poisoned rows shape the model whatever started the job.
    """
    reasons = []
    if trigger == "drift" and "performance" in alarm_kinds and label_sources:
        labels = excess_untrusted(label_sources, config)
        if labels:
            reasons.append(labels.describe("labels behind the performance alarm"))
    if row_sources:
        rows = excess_untrusted(row_sources, config)
        if rows:
            reasons.append(rows.describe("training rows"))
    if not reasons:
        return None
    return "held for approval: " + "; ".join(reasons) + f" (more than {config.max_untrusted_share:.0%} untrusted)"
