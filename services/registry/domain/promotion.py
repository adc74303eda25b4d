"""The promotion policy: when a trained version becomes the champion.

A first version is promoted when it reaches a minimum on the primary metric:
a model worse than that should not serve at all. A later version must beat
the champion on the same holdout (the trainer scores both on the same fresh
rows) by a minimum gain: a challenger that is merely as good is not worth a
swap, and noise should not flip the champion back and forth. A smaller gain
also promotes when the trainer's paired test on those same rows (McNemar for
classification, a paired t-test on squared errors for regression) says it
is real at ``significance``: a fixed step is noise on a few hundred rows but
throws away a real gain on thousands (the loop benchmark's regression stream:
r2 0.943 against 0.938 on 1,800 holdout rows, 4 % lower RMSE, rejected, and
the tail served by the older model). A challenger that is not ahead is never
promoted, however the test reads. Conversely a gain above ``min_gain`` is not
proof either: on a 200-row holdout (the first models after a drift) accuracy
moves by 0.03 from one draw of rows to the next, so such a gain promotes only
when the same paired test does not call it noise (``gain_significance``, a
looser level: the swap to a model as good costs little, keeping a better one
out costs the gain). With ``require_approval`` the winner only
becomes ``candidate`` and a person moves ``champion``.

A comparison made against a version that is no longer the champion is stale.
It neither promotes nor rejects: the challenger is re-judged against the
current champion on the challenger's own holdout (the trainer re-scores
both), because the champion changing says nothing about whether the
challenger is better, and throwing a better model away costs a whole
retrain. Only the re-judged figures decide, under the same rules.

Fairness: when the dataset declares sensitive features, the trainer scores the
challenger and the champion on the same holdout per group too, and reports
differences between groups (demographic parity, equalized odds, accuracy or
MAE gaps), each lower-is-fairer. A challenger that beats the champion overall
but widens any of these gaps by more than ``fairness_tolerance`` is refused:
overall accuracy can rise while one group pays for it, and an automatic gate
would otherwise promote exactly that. A gap the champion was not measured on
(it predates the declaration) cannot be compared and does not block.
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
    significance: float = 0.01
    """A smaller improvement promotes too when the paired test's one-sided p-value is at most this (0: never)."""
    gain_significance: float = 0.05
    """An improvement of ``min_gain`` or more promotes only when the paired test's one-sided p-value (if the trainer
    ran one) is at most this (0: the gain alone decides)."""
    require_approval: bool = False
    """Stop at the ``candidate`` alias; a person promotes to ``champion``."""
    fairness_tolerance: float = 0.05
    """How much a challenger may widen any group difference (absolute) over the champion's."""


@dataclass(frozen=True)
class Candidate:
    primary_metric: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    evaluated_against: int | None
    """The champion version the trainer compared with."""
    fairness: dict[str, float] | None = None
    """Group differences on the holdout, ``{"<metric>:<feature>": value}``, lower is fairer."""
    champion_fairness: dict[str, float] | None = None
    """The champion's on the same holdout."""
    p_value: float | None = None
    """One-sided p-value of the paired test that the challenger errs less on the same holdout rows (None: none)."""


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
    proven = significant(gain, candidate.p_value, config.significance)
    if gain < config.min_gain and not proven:
        paired = "" if candidate.p_value is None else f", paired p {candidate.p_value:.3g} > {config.significance:g}"
        return PromotionDecision(
            False, None,
            f"{name} {score:.4f} vs champion {baseline:.4f}: gain {gain:+.4f} < {config.min_gain:.4f}{paired}",
        )  # fmt: skip
    if noise(gain, candidate.p_value, config) and not proven:
        return PromotionDecision(
            False, None,
            f"{name} {score:.4f} vs champion {baseline:.4f}: gain {gain:+.4f} ≥ {config.min_gain:.4f}, but paired p "
            f"{candidate.p_value:.3g} > {config.gain_significance:g} on the same holdout rows: may be noise",
        )  # fmt: skip
    beats = f"{name} {score:.4f} beats champion v{champion} ({baseline:.4f}) by {gain:+.4f}"
    if gain < config.min_gain:
        beats += f" (< {config.min_gain:.4f}, but paired p {candidate.p_value:.3g} ≤ {config.significance:g} on " \
                 "the same holdout rows)"  # fmt: skip
    worse = fairness_regressions(candidate, config.fairness_tolerance)
    if worse:
        return PromotionDecision(False, None, f"{beats}, but fairness is worse: {'; '.join(worse)}")
    return PromotionDecision(True, target, beats + fairness_note(candidate))


def significant(gain: float, p_value: float | None, significance: float) -> bool:
    """Whether a positive ``gain`` is shown real by the paired test at ``significance`` (never when not ahead;
    never with ``significance`` 0, which turns the test off: a p-value can underflow to exactly 0)."""
    return significance > 0 and gain > 0 and p_value is not None and p_value <= significance


def noise(gain: float, p_value: float | None, config: PromotionConfig) -> bool:
    """Whether a gain of at least ``min_gain`` is one the paired test cannot tell from noise at
    ``gain_significance`` (never without a test, or with ``gain_significance`` 0)."""
    if gain < config.min_gain or config.gain_significance <= 0 or p_value is None:
        return False
    return p_value > config.gain_significance


def fairness_regressions(candidate: Candidate, tolerance: float) -> list[str]:
    """The group differences the challenger widens by more than ``tolerance`` over the champion, described.

    Every difference is lower-is-fairer, so "worse" is simply larger; only
    differences measured for both models on the same holdout are compared.
    """
    mine, theirs = candidate.fairness or {}, candidate.champion_fairness or {}
    return [
        f"{key} {mine[key]:.4f} vs champion {theirs[key]:.4f} ({mine[key] - theirs[key]:+.4f} > tolerance "
        f"{tolerance:.4f})"
        for key in sorted(mine.keys() & theirs.keys())
        if mine[key] - theirs[key] > tolerance
    ]


def fairness_note(candidate: Candidate) -> str:
    """What the audit says about fairness when it did not block (compared, or why not)."""
    if not candidate.fairness:
        return ""
    compared = candidate.fairness.keys() & (candidate.champion_fairness or {}).keys()
    if not compared:
        return "; fairness not compared (the champion has no group metrics on this holdout)"
    return f"; fairness within tolerance on {len(compared)} group differences"
