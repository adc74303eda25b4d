"""The registry's promotion policy."""

from __future__ import annotations

from dataclasses import replace

from services.registry.domain.promotion import Candidate, PromotionConfig, decide, significant

CONFIG = PromotionConfig(min_metric=0.6, min_gain=0.01)


def candidate(score: float, champion_score: float | None = None, against: int | None = None) -> Candidate:
    return Candidate(
        primary_metric="accuracy",
        metrics={"accuracy": score},
        champion_metrics=None if champion_score is None else {"accuracy": champion_score},
        evaluated_against=against,
    )


def test_first_model_needs_the_minimum() -> None:
    assert decide(candidate(0.61), None, CONFIG).promote
    rejected = decide(candidate(0.59), None, CONFIG)
    assert not rejected.promote
    assert "below the minimum" in rejected.reason


def test_later_models_must_beat_the_champion_by_the_minimum_gain() -> None:
    assert decide(candidate(0.80, 0.78, against=2), 2, CONFIG).promote
    small = decide(candidate(0.785, 0.78, against=2), 2, CONFIG)
    assert not small.promote
    assert "gain +0.0050" in small.reason
    assert not decide(candidate(0.70, 0.78, against=2), 2, CONFIG).promote


def test_a_gain_below_the_minimum_promotes_when_the_paired_test_shows_it_is_real() -> None:
    proven = decide(replace(candidate(0.785, 0.78, against=2), p_value=0.004), 2, CONFIG)
    assert proven.promote
    assert "paired p 0.004 ≤ 0.01" in proven.reason
    unproven = decide(replace(candidate(0.785, 0.78, against=2), p_value=0.2), 2, CONFIG)
    assert not unproven.promote
    assert "paired p 0.2 > 0.01" in unproven.reason
    off = decide(replace(candidate(0.785, 0.78, against=2), p_value=0.004), 2, replace(CONFIG, significance=0.0))
    assert not off.promote


def test_a_gain_above_the_minimum_that_the_paired_test_calls_noise_does_not_promote() -> None:
    # +0.03 on a 200-row holdout, where the two models disagree on a handful of rows: p 0.2.
    noisy = decide(replace(candidate(0.74, 0.71, against=2), p_value=0.2), 2, CONFIG)
    assert not noisy.promote
    assert not noisy.rejudge
    assert "gain +0.0300 ≥ 0.0100, but paired p 0.2 > 0.05" in noisy.reason
    assert "may be noise" in noisy.reason
    real = decide(replace(candidate(0.74, 0.71, against=2), p_value=0.03), 2, CONFIG)
    assert real.promote
    assert "beats champion v2 (0.7100) by +0.0300" in real.reason
    # Without a test (an older trainer) the gain alone decides, as it does with the check turned off.
    assert decide(candidate(0.74, 0.71, against=2), 2, CONFIG).promote
    assert decide(
        replace(candidate(0.74, 0.71, against=2), p_value=0.2), 2, replace(CONFIG, gain_significance=0)
    ).promote


def test_no_p_value_promotes_a_challenger_that_is_not_ahead() -> None:
    assert not decide(replace(candidate(0.78, 0.78, against=2), p_value=0.0), 2, CONFIG).promote
    assert not decide(replace(candidate(0.77, 0.78, against=2), p_value=0.0), 2, CONFIG).promote
    assert not significant(0.0, 0.0, 0.01)
    assert not significant(0.001, None, 0.01)
    assert significant(0.001, 0.01, 0.01)
    assert not significant(0.002, 0.0, 0.0)  # 0 turns the test off, even for a p-value that underflowed to 0


def test_stale_or_missing_comparisons_are_re_judged_never_promoted_or_rejected_as_such() -> None:
    stale = decide(candidate(0.99, 0.88, against=1), 2, CONFIG)
    assert "champion is now v2" in stale.reason
    assert not stale.promote
    assert stale.rejudge
    assert stale.outcome == "rejudging"
    missing = decide(candidate(0.9), 2, CONFIG)
    assert "not compared" in missing.reason
    assert missing.rejudge


def test_a_re_judged_challenger_is_decided_on_the_re_judged_figures() -> None:
    # Better than the old champion (0.88) but not than the current one on the same holdout: never promoted.
    worse = decide(candidate(0.93, 0.95, against=2), 2, CONFIG)
    assert not worse.promote
    assert not worse.rejudge
    assert worse.outcome == "rejected"
    better = decide(candidate(0.99, 0.95, against=2), 2, CONFIG)
    assert better.promote
    assert better.outcome == "promoted"


def test_even_a_better_challenger_must_reach_the_minimum() -> None:
    assert not decide(candidate(0.55, 0.40, against=1), 1, CONFIG).promote


def test_approval_stops_at_the_candidate_alias() -> None:
    decision = decide(candidate(0.9, 0.5, against=1), 1, PromotionConfig(require_approval=True))
    assert decision.promote
    assert decision.alias == "candidate"


def test_missing_primary_metric_is_refused() -> None:
    odd = Candidate("accuracy", {"f1": 0.9}, None, None)
    assert "missing" in decide(odd, None, CONFIG).reason
