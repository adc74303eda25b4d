"""Canary releases: which alias moves are allowed, and when a canary is promoted or rolled back.

A canary takes a share of a model's live traffic next to the champion. The
monitor scores both on the labels their own requests received and sends the
comparison (``model.compared``): the difference in the live metric, canary
minus champion, with a 95 % interval (for accuracy, Newcombe's hybrid score
interval built from the two Wilson intervals, which stays sound near 0 and 1
and with small counts; see ``services/monitor/domain/comparison.py``).

The policy (:func:`judge`) reads only that comparison and the clock:

- **promote** once both sides have at least ``min_labels`` labels and the
  interval's lower bound is above ``-margin``: the canary is better, or worse
  by less than the margin we accept, with 95 % confidence;
- **roll back** as soon as the interval's upper bound is below zero: the
  canary is worse with 95 % confidence (no minimum: a clearly broken canary
  should not keep its share until N labels arrived);
- otherwise **wait**; at the deadline, a canary that has not shown it is not
  worse is rolled back, because the champion is the version known to be good.

An A/B test is a canary with ``judged=False``: a fixed share and no automatic
decision; the comparison is still computed, for people to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

PERCENT_MIN, PERCENT_MAX = 0.0, 100.0


def refusal(alias: str, version: int, *, champion: int | None, share: float | None) -> str | None:
    """Why moving ``alias`` to ``version`` is refused (the API answers it as a 4xx), or None when allowed."""
    if share is not None and alias != "canary":
        return f"share applies to the canary alias only, not to {alias!r}"
    if share is not None and not PERCENT_MIN <= share <= PERCENT_MAX:
        return f"share {share:g} is outside 0-100 (a percentage of the model's traffic)"
    if alias in ("canary", "shadow"):
        if champion is None:
            return f"the model has no champion: a {alias} needs one to take traffic from and be compared with"
        if version == champion:
            return f"version {version} is the champion: the {alias} must be another version"
    return None


@dataclass(frozen=True)
class CanaryConfig:
    min_labels: int = 200
    """Labels each side needs before a canary may be promoted."""
    margin: float = 0.01
    """How much worse than the champion (in the live metric) a promoted canary may be, at most."""
    deadline: timedelta = timedelta(hours=24)
    """After this long undecided, the canary is rolled back."""


@dataclass(frozen=True)
class Comparison:
    """The monitor's figures: canary vs champion on the labels each received (higher metric is better)."""

    metric: str
    canary_version: int
    champion_version: int
    canary_labels: int
    champion_labels: int
    canary_value: float
    champion_value: float
    difference: float
    """canary minus champion (for an error metric, the monitor negates it so that higher is better)."""
    lower: float
    upper: float
    method: str
    """How the interval was computed (e.g. newcombe-wilson-95)."""

    def figures(self) -> str:
        """The audit line: both values, their label counts, the difference and its interval."""
        return (
            f"{self.metric} canary v{self.canary_version} {self.canary_value:.4f} ({self.canary_labels} labels) vs "
            f"champion v{self.champion_version} {self.champion_value:.4f} ({self.champion_labels} labels): "
            f"difference {self.difference:+.4f}, 95% interval [{self.lower:+.4f}, {self.upper:+.4f}] ({self.method})"
        )


class Action(Enum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    WAIT = "wait"


@dataclass(frozen=True)
class CanaryDecision:
    action: Action
    reason: str


def judge(c: Comparison, started_at: datetime, now: datetime, config: CanaryConfig) -> CanaryDecision:
    """Promote, roll back or wait (see the module docstring); the reason carries the figures."""
    figures = c.figures()
    if c.upper < 0:
        return CanaryDecision(Action.ROLLBACK, f"canary worse with 95% confidence: {figures}")
    enough = min(c.canary_labels, c.champion_labels) >= config.min_labels
    if enough and c.lower > -config.margin:
        verdict = "better" if c.lower > 0 else f"not worse than the margin {config.margin:g}"
        return CanaryDecision(Action.PROMOTE, f"canary {verdict} with 95% confidence: {figures}")
    if now - started_at >= config.deadline:
        return CanaryDecision(
            Action.ROLLBACK, f"deadline of {config.deadline} passed without showing the canary is not worse: {figures}"
        )
    needed = "" if enough else f"; waiting for {config.min_labels} labels on each side"
    return CanaryDecision(Action.WAIT, f"undecided{needed}: {figures}")


def expired(started_at: datetime, now: datetime, config: CanaryConfig) -> CanaryDecision | None:
    """The deadline decision for a canary no comparison arrived for (no labelled traffic): roll back, or None."""
    if now - started_at < config.deadline:
        return None
    return CanaryDecision(
        Action.ROLLBACK, f"deadline of {config.deadline} passed with no live comparison (no labelled traffic)"
    )
