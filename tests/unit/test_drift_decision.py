"""Windows and the drift decision on synthetic streams with fixed seeds."""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from libs.common.profile import NumericProfile, ReferenceProfile, build_profile
from services.monitor.domain import decision
from services.monitor.domain.decision import (
    AlarmState,
    DriftConfig,
    Performance,
    classification_performance,
    evaluate_window,
    regression_performance,
    should_alarm,
)
from services.monitor.domain.windows import NumericWindow, Reservoir, Window

CATEGORIES = ["x", "y", "z"]
KINDS: dict[str, Any] = {"a": "numeric", "b": "numeric", "c": "categorical", "d": "numeric"}
CONFIG = DriftConfig()


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    n = 5000
    columns = {
        "a": rng.normal(0, 1, n), "b": rng.normal(5, 2, n), "c": rng.choice(CATEGORIES, n), "d": rng.exponential(1, n),
    }  # fmt: skip
    return build_profile(columns, KINDS, rng.choice(["no", "yes"], n, p=[0.6, 0.4]), prediction_kind="categorical",
                         metrics={"accuracy": 0.8})  # fmt: skip


def window(reference: ReferenceProfile, seed: int, *, shift: float = 0.0, shares: tuple[float, ...] = (1 / 3,) * 3,
           size: int = 500) -> Window:  # fmt: skip
    rng = np.random.default_rng(1000 + seed)
    w = Window(reference, seed=seed)
    a, b, c, d = (
        rng.normal(shift, 1, size),
        rng.normal(5, 2, size),
        rng.choice(CATEGORIES, size, p=shares),
        rng.exponential(1, size),
    )
    rows = [{"a": a[i], "b": b[i], "c": str(c[i]), "d": d[i]} for i in range(size)]
    w.add(rows, list(rng.choice(["no", "yes"], size, p=[0.6, 0.4])))
    return w


def test_a_stationary_stream_raises_at_most_one_percent_false_flags(reference: ReferenceProfile) -> None:
    flagged = sum(evaluate_window(window(reference, seed), None, CONFIG).flagged for seed in range(500))
    assert flagged <= 5


@pytest.mark.parametrize("seed", range(10))
def test_half_a_standard_deviation_is_flagged_in_the_first_window(reference: ReferenceProfile, seed: int) -> None:
    report = evaluate_window(window(reference, seed, shift=0.5), None, CONFIG)
    verdict = {v.feature: v for v in report.features}
    assert verdict["a"].drifted
    assert not verdict["b"].drifted
    assert verdict["a"].statistics["pvalue_adjusted"] < CONFIG.alpha


@pytest.mark.parametrize("seed", range(10))
def test_a_category_moving_twenty_points_is_flagged(reference: ReferenceProfile, seed: int) -> None:
    report = evaluate_window(window(reference, seed, shares=(0.5333, 0.2334, 0.2333)), None, CONFIG)
    assert {v.feature: v.drifted for v in report.features}["c"]


def test_large_windows_do_not_flag_trivial_shifts(reference: ReferenceProfile) -> None:
    # 0.1 sd on 20k rows: KS calls it significant, the effect size says it does not matter.
    report = evaluate_window(window(reference, 0, shift=0.1, size=20_000), None, CONFIG)
    a = {v.feature: v for v in report.features}["a"]
    assert a.statistics["ks_pvalue"] < 0.01
    assert not a.drifted


def test_small_windows_get_no_verdict(reference: ReferenceProfile) -> None:
    report = evaluate_window(window(reference, 0, shift=3.0, size=50), None, CONFIG)
    assert not report.evaluated
    assert not report.flagged


def test_dataset_drift_needs_a_share_of_features_or_a_key_feature(reference: ReferenceProfile) -> None:
    w = window(reference, 3, shift=0.8)
    assert not evaluate_window(w, None, CONFIG).data_drift  # 1 of 4 features < 30%
    assert evaluate_window(w, None, DriftConfig(key_features=("a",))).data_drift
    assert evaluate_window(w, None, DriftConfig(drift_share=0.25)).data_drift


def test_performance_rule_uses_the_confidence_bound() -> None:
    assert classification_performance(50, 99, 0.8, CONFIG) is None  # too few labels
    noisy = classification_performance(74, 100, 0.8, CONFIG)  # 0.74, but the interval reaches 0.82
    assert noisy is not None
    assert not noisy.degraded
    clear = classification_performance(600, 1000, 0.8, CONFIG)
    assert clear is not None
    assert clear.degraded


def test_persistence_and_cool_down(reference: ReferenceProfile) -> None:
    state = AlarmState()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    drifted = evaluate_window(window(reference, 1, shift=2.0, shares=(0.7, 0.2, 0.1)), None, CONFIG)
    quiet = evaluate_window(window(reference, 2), None, CONFIG)
    assert drifted.flagged
    assert not quiet.flagged
    assert should_alarm(state, drifted, now, CONFIG) == (False, None)  # one window is not enough
    assert should_alarm(state, quiet, now, CONFIG) == (False, None)
    alarm, since = should_alarm(state, drifted, now, CONFIG)  # 2 of the last 3
    assert alarm
    assert since == drifted.started_at
    for _ in range(3):  # cool-down: flagged windows, no alarm
        assert not should_alarm(state, drifted, now + timedelta(seconds=30), CONFIG)[0]
    assert should_alarm(state, drifted, now + timedelta(minutes=3), CONFIG)[0]


def test_a_decisive_fall_of_the_live_metric_alarms_in_one_window(reference: ReferenceProfile) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    quiet = window(reference, 2)
    halved = classification_performance(150, 300, 0.95, CONFIG)  # a concept change: 0.50 against 0.95
    assert halved is not None
    assert halved.degraded
    assert halved.decisive
    alarm, since = should_alarm(AlarmState(), evaluate_window(quiet, halved, CONFIG), now, CONFIG)
    assert alarm
    assert since == quiet.started_at
    # Degraded at the usual confidence but not decisively: persistence still asks for a second window.
    slipped = classification_performance(240, 300, 0.90, CONFIG)
    assert slipped is not None
    assert slipped.degraded
    assert not slipped.decisive
    state = AlarmState()
    assert should_alarm(state, evaluate_window(quiet, slipped, CONFIG), now, CONFIG) == (False, None)
    assert should_alarm(state, evaluate_window(window(reference, 3), slipped, CONFIG), now, CONFIG)[0]
    # Regression alike, and decisive_z=0 turns the rule off.
    rng = np.random.default_rng(5)
    tripled = regression_performance(list(rng.normal(0, 3.0, 300) ** 2), 1.0, CONFIG)
    assert tripled is not None
    assert tripled.decisive
    off = DriftConfig(decisive_z=0)
    assert not regression_performance(list(rng.normal(0, 3.0, 300) ** 2), 1.0, off).decisive  # type: ignore[union-attr]
    halved_off = classification_performance(150, 300, 0.95, off)
    assert not should_alarm(AlarmState(), evaluate_window(quiet, halved_off, off), now, off)[0]


def test_no_single_window_is_decisive_while_the_model_is_as_good_as_its_holdout() -> None:
    """100,000 rows of a stationary stream: 333 label windows at the holdout accuracy, none decisive."""
    rng = np.random.default_rng(11)
    for holdout in (0.6, 0.75, 0.9, 0.99):
        correct = rng.binomial(300, holdout, 333)
        flags = [classification_performance(int(c), 300, holdout, CONFIG) for c in correct]
        assert not any(f is not None and f.decisive for f in flags), holdout
    for _ in range(333):
        same = regression_performance(list(rng.normal(0, 1.0, 300) ** 2), 1.0, CONFIG)
        assert same is not None
        assert not same.decisive


def test_the_identical_alarm_is_not_repeated_every_cool_down(reference: ReferenceProfile) -> None:
    """The trainer keeps alarms: repeating one while nothing changes is noise, so each repeat waits twice as long."""
    state = AlarmState()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    drifted = evaluate_window(window(reference, 1, shift=2.0, shares=(0.7, 0.2, 0.1)), None, CONFIG)
    raised = [
        minute
        for minute in range(0, 60)  # an hour of flagged windows, two a minute
        for second in (0, 30)
        if should_alarm(state, drifted, start + timedelta(minutes=minute, seconds=second), CONFIG)[0]
    ]
    # Cool-down 2 min: a naive monitor raises ~30 alarms an hour; doubling gives 0, 2, 6, 14, 30 (then 62).
    assert raised == [0, 2, 6, 14, 30]


def test_a_new_kind_of_problem_is_raised_after_the_plain_cool_down(reference: ReferenceProfile) -> None:
    state = AlarmState()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    drifted = evaluate_window(window(reference, 1, shift=2.0, shares=(0.7, 0.2, 0.1)), None, CONFIG)
    worse = Performance("accuracy", 0.5, 0.55, 0.85, 300, degraded=True)
    degraded = evaluate_window(window(reference, 2, shift=2.0, shares=(0.7, 0.2, 0.1)), worse, CONFIG)
    assert "performance" in degraded.kinds

    def twice(report: Any, at: timedelta) -> bool:
        should_alarm(state, report, now + at, CONFIG)
        return should_alarm(state, report, now + at, CONFIG)[0]

    assert twice(drifted, timedelta(0))
    assert twice(drifted, timedelta(minutes=2))  # the first repeat: the next identical one waits 4 minutes
    assert not twice(drifted, timedelta(minutes=4, seconds=30))
    assert should_alarm(state, degraded, now + timedelta(minutes=4, seconds=31), CONFIG)[0]  # a new kind: 2 min


def test_live_rmse_is_judged_on_its_confidence_interval() -> None:
    rng = np.random.default_rng(3)
    holdout_rmse = 1.0
    same = regression_performance(list(rng.normal(0, 1.0, 100) ** 2), holdout_rmse, CONFIG)
    assert same is not None
    assert not same.degraded
    worse = regression_performance(list(rng.normal(0, 2.0, 300) ** 2), holdout_rmse, CONFIG)
    assert worse is not None
    assert worse.degraded
    assert worse.bound < worse.live
    assert regression_performance([1.0] * 10, holdout_rmse, CONFIG) is None  # too few labels


def test_reservoir_is_bounded_and_uniform() -> None:
    rng = np.random.default_rng(0)
    reservoir = Reservoir(1000, rng)
    for start in range(0, 100_000, 7_000):
        reservoir.add(np.arange(start, min(start + 7_000, 100_000), dtype=float))
    sample = reservoir.sample()
    assert sample.size == 1000
    assert reservoir.seen == 100_000
    # uniform over the stream: the sample's mean is near the stream's, and every decile is represented
    assert abs(sample.mean() - 50_000) < 3_000
    assert np.histogram(sample, bins=10, range=(0, 100_000))[0].min() > 60


def test_window_counts_missing_out_of_range_and_unseen(reference: ReferenceProfile) -> None:
    w = Window(reference)
    w.add([{"a": None, "b": 1e9, "c": "new", "d": 1.0}, {"a": 0.0, "b": 5.0, "c": None, "d": 1.0}], ["no", "maybe"])
    assert w.features["a"].missing == 1
    assert w.features["b"].out_of_range == 1  # type: ignore[union-attr]
    assert w.features["c"].counts == {"__unseen__": 1}
    assert w.features["c"].missing == 1
    assert w.records == 2


def test_column_batches_count_exactly_like_rows(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(5)
    n = 1000
    columns = {
        "a": rng.normal(0, 1, n),
        "b": rng.normal(5, 2, n),
        "c": rng.choice(CATEGORIES, n),
        "d": rng.exponential(1, n),
    }
    columns["a"][::50] = np.nan
    predictions = rng.choice(["no", "yes"], n)
    by_rows, by_columns = Window(reference, seed=1), Window(reference, seed=1)
    rows = [{k: (None if k == "a" and np.isnan(v[i]) else v[i]) for k, v in columns.items()} for i in range(n)]
    by_rows.add(rows, list(predictions))
    by_columns.add_columns(columns, predictions)
    for name in ("a", "b", "d"):
        left, right = by_rows.features[name], by_columns.features[name]
        assert isinstance(left, NumericWindow)
        assert isinstance(right, NumericWindow)
        assert left.counts.tolist() == right.counts.tolist()
        assert left.missing == right.missing
        assert left.reservoir.sample().tolist() == right.reservoir.sample().tolist()
    assert by_rows.features["c"].counts == by_columns.features["c"].counts
    assert by_rows.features["a"].missing == 20


def test_merged_sub_windows_equal_one_window(reference: ReferenceProfile) -> None:
    from services.monitor.domain.windows import merge_windows

    parts = [window(reference, seed, shift=0.5, size=250) for seed in range(4)]
    merged = merge_windows(parts)
    assert merged.records == 1000
    a = merged.features["a"]
    assert isinstance(a, NumericWindow)
    assert int(a.counts.sum()) == 1000
    assert a.reservoir.sample().size == 1000  # 4 × 250 values, all kept (reservoirs of 2000)
    assert merged.started_at == min(p.started_at for p in parts)
    report = evaluate_window(merged, None, CONFIG)
    assert {v.feature: v.drifted for v in report.features}["a"]


def test_reservoir_merge_is_proportional_to_what_each_part_saw() -> None:
    rng = np.random.default_rng(3)
    big, small = Reservoir(100, rng), Reservoir(100, rng)
    big.add(np.zeros(9000))
    small.add(np.ones(1000))
    merged = Reservoir.merge([big, small], 100, rng)
    assert merged.sample().size == 100
    assert merged.seen == 10_000
    assert 3 <= merged.sample().sum() <= 20  # about 10% from the part that saw 10% of the records


def test_sliding_monitor_judges_every_step(reference: ReferenceProfile) -> None:
    from libs.common.schema import DatasetSchema
    from services.monitor.domain.monitor import ModelMonitor

    features = [{"name": n, "dtype": "numeric"} for n in ("a", "b", "d")] + [{"name": "c", "dtype": "categorical"}]
    schema = DatasetSchema.model_validate(
        {"features": features, "target": {"name": "y", "dtype": "categorical"}, "task": "classification"}
    )
    monitor = ModelMonitor("m", 1, reference, schema, None, CONFIG, 400, 100, 2000, window_step=100)
    rows = [{"a": 0.0, "b": 5.0, "c": "x", "d": 1.0}] * 1000
    ready = monitor.observe(rows, ["no"] * 1000)
    # 10 steps of 100; the first judged window is complete after 4 steps, then one per step.
    assert len(ready) == 7
    assert all(w.records == 400 for w in ready)


def test_a_reference_samples_sorted_array_is_kept_while_its_profile_lives_and_forgotten_with_it() -> None:
    profile = NumericProfile(edges=[2.0], counts=[1, 2], count=3, missing=0, mean=2.0, std=1.0, min=1.0, max=3.0,
                             sample=[3.0, 1.0, 2.0])  # fmt: skip
    first = decision.reference_sample(profile)
    assert first.tolist() == [1.0, 2.0, 3.0]
    assert decision.reference_sample(profile) is first  # made once
    key = id(profile)
    del profile
    gc.collect()
    assert key not in decision._REFERENCE_SAMPLES  # a profile no monitor holds is not kept alive by the cache
