"""Settings of the registry service (``DRIFTLOOP_REGISTRY_*``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.service import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_REGISTRY_", extra="ignore")

    port: int = 8003
    min_metric: float = 0.6
    """Minimum primary metric (accuracy or r2) for any version to be promoted."""
    min_gain: float = Field(default=0.01, ge=0)
    """Minimum gain over the champion on the same holdout."""
    promotion_significance: float = Field(default=0.01, ge=0, le=1)
    """A smaller gain than ``min_gain`` still promotes when the trainer's paired test on the same holdout rows
    (McNemar for classification, a paired t-test on squared errors for regression) gives a one-sided p-value
    at most this. A challenger not ahead is never promoted. 0: ``min_gain`` alone decides."""
    promotion_gain_significance: float = Field(default=0.05, ge=0, le=1)
    """A gain of ``min_gain`` or more promotes only when the trainer's paired test on the same holdout rows gives
    a one-sided p-value at most this: on a small holdout such a gain can be noise. 0: the gain alone decides."""
    require_approval: bool = False
    """Promote winners to the 'candidate' alias only; a person moves 'champion'."""
    fairness_tolerance: float = Field(default=0.05, ge=0)
    """How much a challenger may widen any group difference on the holdout (demographic parity, equalized
    odds, accuracy or MAE gap per declared sensitive feature) over the champion's before it is refused."""
    max_untrusted_share: float = Field(default=0.5, ge=0, le=1)
    """A version whose training rows, or the labels behind the performance alarm that caused it, came
    from untrusted principals (summed) for more than this share is held at 'candidate' for an approver."""
    canary_share: float = Field(default=10.0, ge=0, le=100)
    """Share of traffic (percent) a canary takes when the move does not say (and a drift retrain's canary)."""
    canary_min_labels: int = Field(default=200, ge=1)
    """Labels each side (canary and champion) needs before the canary policy may promote."""
    canary_margin: float = Field(default=0.01, ge=0)
    """How much worse than the champion in the live metric a promoted canary may be, at most."""
    canary_deadline_s: float = Field(default=24 * 3600.0, gt=0)
    """An undecided canary is rolled back after this long."""
    canary_sweep_s: float = Field(default=60.0, gt=0)
    """How often canaries past their deadline are looked for (one with no labelled traffic gets no comparison)."""
    drift_retrain: str = Field(default="champion", pattern="^(champion|canary)$")
    """Where a drift retrain that wins the promotion policy goes: straight to 'champion' (the fastest
    recovery), or to 'canary' first, to be promoted by the canary policy on live labels."""
