"""The monitor's live comparison of a challenger with the champion: Newcombe, Welch and paired intervals."""

from __future__ import annotations

import math

import numpy as np

from services.monitor.domain.comparison import Sample, newcombe, paired, unpaired


def sample(scores: np.ndarray) -> Sample:
    return Sample(len(scores), float(scores.sum()), float((scores**2).sum()))


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Table II example (56/70 vs 48/80): difference 0.2000, method 10 interval [0.0524, 0.3339].
    d, lower, upper = newcombe(56, 70, 48, 80)
    assert math.isclose(d, 0.2)
    assert math.isclose(lower, 0.0524, abs_tol=1e-4)
    assert math.isclose(upper, 0.3339, abs_tol=1e-4)


def test_newcombe_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(2000):
        a, b = rng.binomial(300, 0.82), rng.binomial(300, 0.80)
        _, lower, upper = newcombe(int(a), 300, int(b), 300)
        hits += lower <= 0.02 <= upper
    assert 0.93 < hits / 2000 < 0.97


def test_unpaired_accuracy_and_mse_point_the_same_way() -> None:
    better, worse = sample(np.array([1.0] * 90 + [0.0] * 10)), sample(np.array([1.0] * 60 + [0.0] * 40))
    up = unpaired(True, better, worse)
    assert up is not None
    assert up.lower > 0
    assert up.method == "newcombe-wilson-95"
    rng = np.random.default_rng(1)
    small, large = sample(rng.normal(0, 1, 400) ** 2), sample(rng.normal(0, 2, 400) ** 2)
    mse = unpaired(False, small, large)  # lower squared errors are better: positive difference
    assert mse is not None
    assert mse.lower > 0
    assert mse.metric == "mse"
    assert unpaired(True, Sample(1, 1.0, 1.0), worse) is None  # too few labels to say anything


def test_paired_needs_fewer_labels_than_unpaired_for_the_same_gap() -> None:
    rng = np.random.default_rng(7)
    champion = (rng.random(200) < 0.8).astype(float)
    challenger = champion.copy()
    flips = rng.choice(np.flatnonzero(champion == 0), 12, replace=False)  # fixes 12 of the champion's errors
    challenger[flips] = 1.0
    pair = paired(True, sample(challenger), sample(champion), sample(challenger - champion))
    loose = unpaired(True, sample(challenger), sample(champion))
    assert pair is not None
    assert loose is not None
    assert math.isclose(pair.difference, 0.06)
    assert pair.lower > 0  # the paired test sees it
    assert loose.lower < 0  # the unpaired one cannot yet
