"""Drift and data-quality statistics, each a pure function over counts or samples.

Two kinds of numbers answer two questions. *Effect sizes* (PSI, Jensen-Shannon
distance, Wasserstein distance in reference standard deviations) say how much
a distribution moved, and do not grow with the window: a trivial shift stays
trivial on ten million rows. *Significance* (KS and chi-square p-values) says
whether the move could be sampling noise, and does shrink with the window: on
a small window a large-looking move may still be noise. The decision
(:mod:`services.monitor.domain.decision`) asks for both.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

#: Share given to a bin that is empty on one side. PSI divides by shares and
#: takes logarithms, so an empty bin would make it infinite; 1e-4 caps a bin
#: that is empty on one side at a contribution of about (share) * ln(share/1e-4),
#: large enough to signal and finite enough to compare.
PSI_EPSILON = 1e-4


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=float)


def psi(reference_counts: np.ndarray, live_counts: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index over shared bins: Σ (q − p) · ln(q / p).

    ``p`` are reference shares, ``q`` live shares, both floored at ``epsilon``.
    Bins come from reference quantiles (deciles by default), so each reference
    bin holds about the same mass and no bin is ignored. Rules of thumb: < 0.1
    stable, 0.1 – 0.25 moderate, > 0.25 large.
    """
    p = np.maximum(shares(np.asarray(reference_counts, dtype=float)), epsilon)  # np.clip's result, without its cost
    q = np.maximum(shares(np.asarray(live_counts, dtype=float)), epsilon)
    return float(((q - p) * np.log(q / p)).sum())


def ks_test(reference_sample: np.ndarray, live_sample: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value: scipy's ``ks_2samp`` (its exact/asymptotic
    choice), the same numbers at a fraction of the cost (:func:`compare_samples`)."""
    statistic, p_value, _ = compare_samples(np.sort(reference_sample), np.sort(live_sample))
    return statistic, p_value


def compare_samples(reference: np.ndarray, live: np.ndarray) -> tuple[float, float, float]:
    """KS statistic, KS p-value and Wasserstein distance of two *sorted* samples, from one merge of the two:
    scipy's ``ks_2samp`` and ``wasserstein_distance``, by their own arithmetic, without their overhead.

    Both read the two empirical CDFs at every value of the merged samples: the KS statistic is their
    largest gap, the Wasserstein distance the area between them (scipy reads them with two binary searches
    a value; the merge's running count gives them at once). With both samples up to ``KS_EXACT_N``
    scipy's KS p-value is exact, and depends only on the two sizes and the statistic's numerator over
    their least common multiple: it is asked of scipy once per such triple and kept (:data:`_KS_EXACT`).
    A monitor judges windows of one size against one reference sample, so after a few hundred windows
    most p-values are known: scipy's exact count costs about 1 ms a feature, this whole function about
    0.1 ms.
    """
    n1, n2 = reference.size, live.size
    if min(n1, n2) == 0:
        raise ValueError("two non-empty samples expected")
    values = np.concatenate([reference, live])
    order = np.argsort(values, kind="stable")  # two sorted runs: merged in linear time
    values = values[order]
    below = np.cumsum(order < n1)  # reference values up to each position
    gaps = below / n1 - (np.arange(1, values.size + 1) - below) / n2  # the CDFs' difference after each value
    wasserstein = float(np.dot(np.abs(gaps[:-1]), np.diff(values)))  # a tie's gap is weighed by 0
    last = np.empty(values.size, dtype=bool)  # the last of equal values: where both CDFs have taken them all
    np.not_equal(values[1:], values[:-1], out=last[:-1])
    last[-1] = True
    gaps = gaps[last]
    d = max(min(max(-float(gaps.min()), 0.0), 1.0), float(gaps.max()))
    if max(n1, n2) > KS_EXACT_N:  # scipy's asymptotic path
        result = stats.ks_2samp(reference, live)
        return float(result.statistic), float(result.pvalue), wasserstein
    lcm = (n1 // math.gcd(n1, n2)) * n2
    h = int(np.round(d * lcm))
    key = (n1, n2, h)
    p_value = _KS_EXACT.get(key)
    if p_value is None:
        p_value = float(stats.ks_2samp(reference, live).pvalue)
        if len(_KS_EXACT) >= KS_EXACT_KEPT:
            _KS_EXACT.clear()
        _KS_EXACT[key] = p_value
    return h * 1.0 / lcm, p_value, wasserstein  # scipy's exact statistic: the numerator over the lcm


KS_EXACT_N = 10_000
"""scipy's ``ks_2samp`` counts the exact p-value when neither sample is larger (its ``MAX_AUTO_N``)."""
KS_EXACT_KEPT = 65_536
"""Exact p-values kept (a few MB at most); all are dropped when full."""
_KS_EXACT: dict[tuple[int, int, int], float] = {}
"""(size of the reference sample, size of the live sample, statistic × their lcm) → scipy's exact p-value."""


def chi_square(reference_counts: np.ndarray, live_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity between reference and live category counts.

    A two-sample test (not goodness of fit against fixed shares): the reference
    is itself a sample and its noise counts too. Categories absent from both
    sides are dropped; with fewer than two categories left there is nothing to
    compare and the p-value is 1.
    """
    table = np.vstack([np.asarray(reference_counts, dtype=float), np.asarray(live_counts, dtype=float)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float((((table - expected) ** 2) / expected).sum())  # Pearson's, as chi2_contingency computes it
    return statistic, float(special.chdtrc(table.shape[1] - 1, statistic))  # chi2.sf, without its overhead


def jensen_shannon(reference_counts: np.ndarray, live_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2), in [0, 1]: 0 identical, 1 disjoint."""
    p = shares(np.asarray(reference_counts, dtype=float))
    q = shares(np.asarray(live_counts, dtype=float))
    if not p.any() or not q.any():
        return 0.0
    m = (p + q) / 2.0  # scipy.spatial.distance.jensenshannon's arithmetic, without its overhead
    divergence = float(special.rel_entr(p, m).sum() + special.rel_entr(q, m).sum()) / np.log(2)
    return float(np.sqrt(divergence / 2.0))


def wasserstein_normalised(reference_sample: np.ndarray, live_sample: np.ndarray, reference_std: float) -> float:
    """Earth mover's distance in units of the reference standard deviation.

    Dividing by the reference spread makes the number comparable across
    features measured in euros, years or counts: 0.5 means "moved by about
    half a standard deviation".
    """
    if len(reference_sample) == 0 or len(live_sample) == 0:
        return 0.0
    return in_std(compare_samples(np.sort(reference_sample), np.sort(live_sample))[2], reference_std)


def in_std(distance: float, reference_std: float) -> float:
    """A distance in units of the reference standard deviation (infinite for a move off a constant)."""
    return distance / reference_std if reference_std > 0 else (0.0 if distance == 0 else float("inf"))


def adjust_pvalues(p_values: np.ndarray, method: str = "bh") -> np.ndarray:
    """Multiple-testing correction across features: ``bh`` (Benjamini-Hochberg,
    controls the false discovery rate) or ``bonferroni`` (controls the chance
    of any false alarm, stricter)."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return p
    if method == "bonferroni":
        bonferroni: np.ndarray = np.minimum(p * p.size, 1.0)
        return bonferroni
    if method != "bh":
        raise ValueError(f"unknown correction {method!r}")
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest at small counts and near 0 or 1."""
    if trials == 0:
        return 0.0, 1.0
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
