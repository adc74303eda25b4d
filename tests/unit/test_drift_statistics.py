"""Drift statistics: equal to scipy where they are scipy's, right by hand where they are not,
and invariant where they must be."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial import distance

from services.monitor.domain import statistics as ds

SEEDS = range(5)


@pytest.mark.parametrize("seed", SEEDS)
def test_ks_equals_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, 800), rng.normal(0.1 * seed, 1.2, 300)
    expected = stats.ks_2samp(a, b)
    assert ds.ks_test(a, b) == pytest.approx((expected.statistic, expected.pvalue))


def test_windows_of_one_size_get_scipys_ks_figures_and_its_exact_count_only_once_a_statistic() -> None:
    """The exact p-value is asked of scipy once per (sizes, statistic) and kept: a monitor judges windows
    of one size against one reference, so most windows reuse one. Ties (rounded values) included."""
    rng = np.random.default_rng(7)
    reference = np.round(rng.normal(0, 1, 800), 2)
    lives = [np.round(rng.normal(0.02 * (i % 4), 1, 300), 1 + i % 2) for i in range(300)]
    ds._KS_EXACT.clear()
    for live in lives:
        expected = stats.ks_2samp(reference, live)
        assert ds.ks_test(reference, live) == (float(expected.statistic), float(expected.pvalue))
    assert len(ds._KS_EXACT) < 0.6 * len(lives)  # many windows found their p-value kept


@pytest.mark.parametrize("seed", SEEDS)
def test_chi_square_equals_scipy_contingency(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref, live = rng.integers(1, 200, 5).astype(float), rng.integers(1, 200, 5).astype(float)
    expected = stats.chi2_contingency(np.vstack([ref, live]), correction=False)
    assert ds.chi_square(ref, live) == pytest.approx((expected[0], expected[1]))


@pytest.mark.parametrize("seed", SEEDS)
def test_wasserstein_and_jensen_shannon_equal_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 2, 500), rng.normal(1, 2, 400)
    assert ds.wasserstein_normalised(a, b, 2.0) == pytest.approx(stats.wasserstein_distance(a, b) / 2.0)
    p, q = rng.integers(0, 100, 6).astype(float), rng.integers(1, 100, 6).astype(float)
    assert ds.jensen_shannon(p, q) == pytest.approx(distance.jensenshannon(p / p.sum(), q / q.sum(), base=2))


def test_psi_by_hand() -> None:
    # p = (0.5, 0.5), q = (0.75, 0.25): (0.25)ln(1.5) + (-0.25)ln(0.5)
    expected = 0.25 * math.log(1.5) - 0.25 * math.log(0.5)
    assert ds.psi(np.array([50, 50]), np.array([75, 25])) == pytest.approx(expected)
    # An empty live bin is floored at epsilon instead of making PSI infinite.
    floored = (ds.PSI_EPSILON - 0.5) * math.log(ds.PSI_EPSILON / 0.5) + 0.5 * math.log(1 / 0.5)
    assert ds.psi(np.array([1, 1]), np.array([0, 10])) == pytest.approx(floored)


def test_chi_square_with_nothing_to_compare() -> None:
    assert ds.chi_square(np.array([5.0, 0.0]), np.array([3.0, 0.0])) == (0.0, 1.0)


def test_pvalue_corrections() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.5])
    assert ds.adjust_pvalues(p, "bonferroni").tolist() == pytest.approx([0.04, 0.16, 0.12, 1.0])
    # Benjamini-Hochberg by hand: sorted 0.01, 0.03, 0.04, 0.5 → ×4/1, ×4/2, ×4/3, ×4/4,
    # then the running minimum from the top.
    assert ds.adjust_pvalues(p, "bh").tolist() == pytest.approx([0.04, 0.0533333, 0.0533333, 0.5])
    with pytest.raises(ValueError, match="unknown correction"):
        ds.adjust_pvalues(p, "holm")


def test_wilson_interval() -> None:
    low, high = ds.wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-3)
    assert high == pytest.approx(0.8666, abs=1e-3)
    assert ds.wilson_interval(0, 0) == (0.0, 1.0)


counts = st.lists(st.integers(min_value=0, max_value=10_000), min_size=2, max_size=12)


@given(counts, counts)
@settings(max_examples=200, deadline=None)
def test_psi_is_never_negative(a: list[int], b: list[int]) -> None:
    n = min(len(a), len(b))
    p, q = np.array(a[:n]) + 1, np.array(b[:n]) + 1
    assert ds.psi(p, q) >= 0


@given(counts)
@settings(max_examples=200, deadline=None)
def test_identical_distributions_have_zero_distance(a: list[int]) -> None:
    p = np.array(a) + 1
    assert ds.psi(p, p * 3) == pytest.approx(0.0, abs=1e-12)
    assert ds.jensen_shannon(p, p * 7) == pytest.approx(0.0, abs=1e-7)


@given(counts, counts)
@settings(max_examples=200, deadline=None)
def test_jensen_shannon_is_bounded_and_symmetric(a: list[int], b: list[int]) -> None:
    n = min(len(a), len(b))
    p, q = np.array(a[:n], dtype=float), np.array(b[:n], dtype=float)
    value = ds.jensen_shannon(p, q)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert value == pytest.approx(ds.jensen_shannon(q, p), abs=1e-12)


@given(counts, counts)
@settings(max_examples=200, deadline=None)
def test_psi_is_symmetric(a: list[int], b: list[int]) -> None:
    n = min(len(a), len(b))
    p, q = np.array(a[:n]) + 1, np.array(b[:n]) + 1
    assert ds.psi(p, q) == pytest.approx(ds.psi(q, p))


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_adjusted_pvalues_are_valid_and_not_smaller(p_values: list[float]) -> None:
    p = np.array(p_values)
    for method in ("bh", "bonferroni"):
        adjusted = ds.adjust_pvalues(p, method)
        assert ((adjusted >= p - 1e-12) & (adjusted <= 1.0)).all()
