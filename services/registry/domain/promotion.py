"""The promotion policy: when a trained version becomes the champion.

A first version is promoted when it reaches a minimum on the primary metric:
a model worse than that should not serve at all. A later version must beat
the champion on the same holdout (the trainer scores both on the same fresh
rows) by a minimum gain: a challenger that is merely as good is not worth a
swap, and noise should not flip the champion back and forth. With
``require_approval`` the winner only becomes ``candidate`` and a person
moves ``champion``.

A comparison made against a version that is no longer the champion is stale.
It neither promotes nor rejects: the challenger is re-judged against the
current champion on the challenger's own holdout (the trainer re-scores
both), because the champion changing says nothing about whether the
challenger is better, and throwing a better model away costs a whole
retrain. Only the re-judged figures decide, under the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIASES = ("champion", "canary", "shadow", "candidate")


@dataclass(frozen=True)
class PromotionConfig:
    min_metric: float = 0.6
    """Minimum primary metric (accuracy, r2) of any version that serves."""
    min_gain: float = 0.01
    """Minimum improvement over the champion on the same holdout."""
    require_approval: bool = False
    """Stop at the ``candidate`` alias; a person promotes to ``champion``."""


@dataclass(frozen=True)
class Candidate:
    primary_metric: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    evaluated_against: int | None
    """The champion version the trainer compared with."""


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    alias: str | None
    reason: str
    rejudge: bool = False
    """The comparison is stale (or missing while a champion serves): re-score before deciding."""

    @property
    def outcome(self) -> str:
        return "promoted" if self.promote else "rejudging" if self.rejudge else "rejected"


def decide(candidate: Candidate, champion: int | None, config: PromotionConfig) -> PromotionDecision:
    """Whether ``candidate`` moves an alias, and why (the reason goes to the audit log)."""
    name = candidate.primary_metric
    score = candidate.metrics.get(name)
    target = "candidate" if config.require_approval else "champion"
    if score is None:
        return PromotionDecision(False, None, f"primary metric {name!r} missing from the candidate's metrics")
    if score < config.min_metric:
        return PromotionDecision(False, None, f"{name} {score:.4f} is below the minimum {config.min_metric:.4f}")
    if champion is None:
        return PromotionDecision(True, target, f"first model: {name} {score:.4f} ≥ minimum {config.min_metric:.4f}")
    if candidate.champion_metrics is None or candidate.evaluated_against is None:
        return PromotionDecision(
            False, None, f"not compared with champion v{champion} on the same holdout: re-judgement needed", True
        )
    if candidate.evaluated_against != champion:
        return PromotionDecision(
            False, None,
            f"compared with v{candidate.evaluated_against}, but the champion is now v{champion}: re-judgement needed",
            True,
        )  # fmt: skip
    baseline = candidate.champion_metrics.get(name)
    if baseline is None:
        return PromotionDecision(False, None, f"champion's {name} missing from the comparison")
    gain = score - baseline
    if gain < config.min_gain:
        return PromotionDecision(
            False, None, f"{name} {score:.4f} vs champion {baseline:.4f}: gain {gain:+.4f} < {config.min_gain:.4f}"
        )
    return PromotionDecision(
        True, target, f"{name} {score:.4f} beats champion v{champion} ({baseline:.4f}) by {gain:+.4f}"
    )
