"""Who fed a retrain, and when that means a person must approve it.

The loop promotes by itself, so whoever controls its inputs controls the
champion: forged labels raise a performance alarm, and poisoned rows then
train a challenger that wins on the attacker's own data (issue 10). Labels and
rows carry the principal that sent them and that principal's trust level.
When the labels behind a performance alarm, or a version's training rows,
came mostly (more than ``max_untrusted_share``) from one untrusted principal,
the version is not made champion by the policy: it stops at ``candidate`` and
the audit says whose data it was. Data from trusted principals (the upstream
system's own account, the demo) leaves the loop automatic; data whose source
was never recorded (events from before principals existed) is not held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from libs.common.events import Source


@dataclass(frozen=True)
class TrustConfig:
    max_untrusted_share: float = 0.5
    """Largest share of labels or rows one untrusted principal may supply before a person must approve."""


def dominant_untrusted(sources: Sequence[Source], config: TrustConfig) -> tuple[Source, float, int] | None:
    """The untrusted principal supplying more than the allowed share, with its share and the total."""
    total = sum(s.count for s in sources)
    if total == 0:
        return None
    untrusted: dict[str, int] = {}
    for s in sources:
        if not s.trusted:
            untrusted[s.principal] = untrusted.get(s.principal, 0) + s.count
    if not untrusted:
        return None
    principal, count = max(untrusted.items(), key=lambda kv: (kv[1], kv[0]))
    share = count / total
    if share <= config.max_untrusted_share:
        return None
    return Source(principal=principal, trusted=False, count=count), share, total


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
        found = dominant_untrusted(label_sources, config)
        if found:
            source, share, total = found
            reasons.append(
                f"{share:.0%} of the {total} labels behind the performance alarm came from untrusted "
                f"principal {source.principal!r}"
            )
    if row_sources:
        found = dominant_untrusted(row_sources, config)
        if found:
            source, share, total = found
            reasons.append(
                f"{share:.0%} of the {total} training rows came from untrusted principal {source.principal!r}"
            )
    if not reasons:
        return None
    return "held for approval: " + "; ".join(reasons) + f" (more than {config.max_untrusted_share:.0%} from one)"
