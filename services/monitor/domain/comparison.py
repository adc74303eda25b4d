"""A canary or shadow against the champion on live labels, with a 95 % interval on the difference.

Each labelled prediction has a score: 1/0 correct for a classifier, the
squared error for a regressor. The difference is always oriented so that
positive means the challenger is better (for squared errors, champion minus
challenger).

- **Canary** (disjoint traffic: each request answered by one version): two
  independent samples. For accuracy, Newcombe's hybrid score interval
  (method 10 of Newcombe 1998): the two Wilson intervals combined, which
  keeps its coverage with small counts and near 0 or 1, where the Wald
  interval is too narrow. For squared errors, Welch's normal interval on the
  difference of means (large samples: the policy needs hundreds of labels).
- **Shadow** (the same requests answered by both): paired. Per request, the
  difference of the two scores; a normal interval on their mean. Pairing
  removes the variation between requests, so it needs far fewer labels than
  the unpaired test for the same difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from services.monitor.domain.statistics import wilson_interval

Z95 = 1.959964


@dataclass(frozen=True)
class Sample:
    """Scores of one version: count, sum and sum of squares (enough for the mean and variance)."""

    n: int
    total: float
    squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        if self.n < 2:
            return math.inf
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True)
class VersionComparison:
    metric: str
    """accuracy or mse (the value each side shows)."""
    challenger_labels: int
    champion_labels: int
    challenger_value: float
    champion_value: float
    difference: float
    """Positive: the challenger is better."""
    lower: float
    upper: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newcombe(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 and Newcombe's hybrid score interval from the two Wilson intervals."""
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1, z)
    l2, u2 = wilson_interval(s2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def unpaired(classification: bool, challenger: Sample, champion: Sample) -> VersionComparison | None:
    """A canary against the champion, each on the labels of its own requests (None until both have two)."""
    if challenger.n < 2 or champion.n < 2:
        return None
    if classification:
        d, lower, upper = newcombe(round(challenger.total), challenger.n, round(champion.total), champion.n)
        return VersionComparison("accuracy", challenger.n, champion.n, challenger.mean, champion.mean, d, lower,
                                 upper, "newcombe-wilson-95")  # fmt: skip
    d = champion.mean - challenger.mean  # squared errors: lower is better
    half = Z95 * math.sqrt(challenger.variance / challenger.n + champion.variance / champion.n)
    return VersionComparison("mse", challenger.n, champion.n, challenger.mean, champion.mean, d, d - half, d + half,
                             "welch-normal-95")  # fmt: skip


def paired(classification: bool, challenger: Sample, champion: Sample, differences: Sample) -> VersionComparison | None:
    """A shadow against the champion on the same requests; ``differences`` holds challenger - champion
    per request (None until two pairs)."""
    if differences.n < 2:
        return None
    sign = 1.0 if classification else -1.0  # squared errors: a lower challenger is better
    d = sign * differences.mean
    half = Z95 * math.sqrt(differences.variance / differences.n)
    return VersionComparison("accuracy" if classification else "mse", challenger.n, champion.n, challenger.mean,
                             champion.mean, d, d - half, d + half, "paired-normal-95")  # fmt: skip
