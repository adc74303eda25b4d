"""A classifier's latest live labels are also judged against its own first live labels (its live
baseline): a sustained drop smaller than the holdout rule's margin (a SEA stream with 10 % label noise
whose threshold moved: 0.86 to 0.78) is an alarm within about a thousand labels, and a stationary
stream's noise is not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from libs.common.profile import build_profile
from libs.common.schema import DatasetSchema
from services.monitor.domain.decision import DriftConfig, baseline_performance, classification_performance
from services.monitor.domain.monitor import ModelMonitor

CONFIG = DriftConfig()
SCHEMA = DatasetSchema.model_validate({
    "features": [{"name": "x", "dtype": "numeric"}],
    "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
})  # fmt: skip


def monitor(holdout: float, config: DriftConfig = CONFIG) -> ModelMonitor:
    """A first model's monitor: trained on 1,000 rows, its holdout accuracy measured on 200."""
    rng = np.random.default_rng(0)
    profile = build_profile({"x": rng.normal(0, 1, 500)}, {"x": "numeric"}, pd.Series(rng.choice(["no", "yes"], 500)),
                            prediction_kind="categorical", metrics={"accuracy": holdout},
                            holdout=(200, float(np.sqrt(holdout * (1 - holdout)))))  # fmt: skip
    return ModelMonitor("m", 1, profile, SCHEMA, "m", config, window_size=500, label_window=300, sample_size=500)


def test_a_drop_of_eight_points_is_told_from_noise_against_the_live_baseline_not_the_holdout() -> None:
    # 860 of the first 1,000 labels right, 780 of the latest 1,000: the holdout rule (0.88 on 200 rows,
    # margin 0.05, 300 labels) does not see it, the baseline rule does.
    held = classification_performance(234, 300, 0.88, CONFIG, float(np.sqrt(0.88 * 0.12 / 200)))
    assert held is not None
    assert not held.degraded
    judged = baseline_performance(860, 1000, 780, 1000, CONFIG)
    assert judged is not None
    assert judged.degraded
    assert (judged.against, judged.reference, judged.live) == ("live baseline", 0.86, 0.78)
    # a drop within the margin and the noise is not degraded; nothing is said before both samples are full
    assert not baseline_performance(860, 1000, 830, 1000, CONFIG).degraded  # type: ignore[union-attr]
    assert baseline_performance(860, 1000, 700, 999, CONFIG) is None
    assert baseline_performance(860, 1000, 780, 1000, DriftConfig(baseline_labels=0)) is None


def test_the_monitor_fills_its_baseline_first_and_judges_the_latest_labels_after_it() -> None:
    m = monitor(0.86)
    rng = np.random.default_rng(4)
    m.observe_labels(list((rng.random(1500) < 0.86).astype(float)))  # 1,000 for the baseline, 500 latest
    assert m.baseline[1] == 1000
    assert len(m.latest) == 500
    early = m.judged_performance()  # the latest labels are not 1,000 yet: the holdout rule speaks
    assert early is not None
    assert early.against == "holdout"
    m.observe_labels(list((rng.random(1000) < 0.77).astype(float)))  # the concept moved
    judged = m.judged_performance()
    assert judged is not None
    assert judged.degraded
    assert judged.against == "live baseline"
    shown = m.performance()  # the API's live figure stays the holdout comparison
    assert shown is not None
    assert shown.against == "holdout"


def test_a_stationary_streams_windows_are_not_flagged_by_the_baseline() -> None:
    """10,000 simulated versions on an unchanging concept (accuracy 0.86), each judged on 20 successive
    latest-label states after its baseline: no state is degraded."""
    rng = np.random.default_rng(7)
    baseline = rng.binomial(1000, 0.86, 10_000)
    latest = rng.binomial(1000, 0.86, (10_000, 20))
    flagged = sum(
        baseline_performance(int(b), 1000, int(c), 1000, CONFIG).degraded  # type: ignore[union-attr]
        for b, row in zip(baseline, latest, strict=True) for c in row
    )  # fmt: skip
    assert flagged / latest.size < 1e-4
