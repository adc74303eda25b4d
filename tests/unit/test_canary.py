"""Canary releases, pure parts: the traffic split, the alias-move checks and the canary policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.registry.domain.canary import Action, CanaryConfig, Comparison, expired, judge, refusal
from services.serving.domain.routing import Split, Splits, sticky_point

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_sticky_points_are_stable_and_uniform() -> None:
    points = [sticky_point(f"customer-{i}", "churn") for i in range(20_000)]
    assert points[:3] == [sticky_point(f"customer-{i}", "churn") for i in range(3)]  # same key, same point
    assert all(0 <= p < 100 for p in points)
    below = sum(p < 20 for p in points) / len(points)
    assert 0.19 < below < 0.21  # similar keys spread evenly (binomial sd 0.3 %)
    assert sticky_point("customer-1", "churn") != sticky_point("customer-1", "fraud")  # each model its own split


def test_a_split_sends_its_share_and_keeps_keys_on_one_side() -> None:
    splits: Splits[str] = Splits(seed=5)
    assert splits.pick("churn", "v1", None) == ("v1", "champion")  # no split: the champion, no draw
    splits.set_canary("churn", "v2", 20.0)
    picks = [splits.pick("churn", "v1", None)[1] for _ in range(10_000)]
    assert 0.19 < picks.count("canary") / len(picks) < 0.21
    first = {k: splits.pick("churn", "v1", k)[0] for k in map(str, range(500))}
    for _ in range(3):
        assert {k: splits.pick("churn", "v1", k)[0] for k in first} == first
    # raising the share only moves keys to the canary
    splits.set_canary("churn", "v2", 50.0)
    assert all(splits.pick("churn", "v1", k)[0] == "v2" for k, v in first.items() if v == "v2")
    splits.set_canary("churn", None)
    assert splits.get("churn") is None
    assert splits.pick("churn", "v1", "k") == ("v1", "champion")


def test_shadow_and_canary_are_kept_apart() -> None:
    splits: Splits[str] = Splits()
    splits.set_shadow("churn", "v3")
    split = splits.get("churn")
    assert split == Split(canary=None, share=0.0, shadow="v3")
    assert not split.to_canary("churn", None, random.Random(1))
    splits.set_canary("churn", "v2", 0.0)  # a 0 % canary takes nothing
    assert all(splits.pick("churn", "v1", str(k))[1] == "champion" for k in range(200))
    splits.set_canary("churn", "v2", 100.0)
    assert all(splits.pick("churn", "v1", str(k))[1] == "canary" for k in range(200))
    splits.set_shadow("churn", None)
    assert splits.get("churn") == Split(canary="v2", share=100.0, shadow=None)


@pytest.mark.parametrize(
    ("alias", "version", "champion", "share", "problem"),
    [
        ("canary", 2, 1, 101.0, "share 101 is outside 0-100"),
        ("canary", 2, 1, -1.0, "share -1 is outside 0-100"),
        ("canary", 2, None, 10.0, "has no champion"),
        ("shadow", 2, None, None, "has no champion"),
        ("shadow", 1, 1, None, "version 1 is the champion"),
        ("canary", 1, 1, 10.0, "version 1 is the champion"),
        ("champion", 2, 1, 10.0, "share applies to the canary alias only"),
    ],
)
def test_alias_moves_that_cannot_stand_are_refused(
    alias: str, version: int, champion: int | None, share: float | None, problem: str
) -> None:
    why = refusal(alias, version, champion=champion, share=share)
    assert why is not None
    assert problem in why


def test_sound_moves_pass() -> None:
    assert refusal("canary", 2, champion=1, share=20.0) is None
    assert refusal("shadow", 2, champion=1, share=None) is None
    assert refusal("champion", 2, champion=None, share=None) is None


def comparison(diff: float, lower: float, upper: float, labels: int = 500) -> Comparison:
    return Comparison("accuracy", 2, 1, labels, labels, 0.8 + diff, 0.8, diff, lower, upper, "newcombe-wilson-95")


CONFIG = CanaryConfig(min_labels=200, margin=0.01, deadline=timedelta(hours=1))


def test_policy_rolls_back_a_canary_worse_with_confidence_even_before_min_labels() -> None:
    decision = judge(comparison(-0.2, -0.3, -0.1, labels=50), NOW, NOW, CONFIG)
    assert decision.action is Action.ROLLBACK
    assert "worse with 95% confidence" in decision.reason
    assert "[-0.3000, -0.1000]" in decision.reason  # the figures go to the audit


def test_policy_promotes_better_or_not_worse_within_the_margin_after_min_labels() -> None:
    assert judge(comparison(0.05, 0.01, 0.09), NOW, NOW, CONFIG).action is Action.PROMOTE
    within = judge(comparison(0.0, -0.005, 0.005), NOW, NOW, CONFIG)
    assert within.action is Action.PROMOTE
    assert "not worse than the margin" in within.reason
    early = judge(comparison(0.05, 0.01, 0.09, labels=100), NOW, NOW, CONFIG)  # too few labels yet
    assert early.action is Action.WAIT
    assert "waiting for 200 labels" in early.reason


def test_policy_waits_when_undecided_and_rolls_back_at_the_deadline() -> None:
    undecided = comparison(-0.01, -0.05, 0.03)
    assert judge(undecided, NOW, NOW + timedelta(minutes=59), CONFIG).action is Action.WAIT
    late = judge(undecided, NOW, NOW + timedelta(hours=1), CONFIG)
    assert late.action is Action.ROLLBACK
    assert "deadline" in late.reason
    assert expired(NOW, NOW + timedelta(minutes=30), CONFIG) is None
    silent = expired(NOW, NOW + timedelta(hours=2), CONFIG)
    assert silent is not None
    assert silent.action is Action.ROLLBACK
