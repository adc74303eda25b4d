"""Settings of the monitor service (``DRIFTLOOP_MONITOR_*``)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from libs.common.service import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_MONITOR_", extra="ignore")

    port: int = 8005
    window_size: int = Field(default=500, ge=10)
    """Predictions per window."""
    window_step: int = Field(default=0, ge=0)
    """0: tumbling windows; N: a sliding window judged every N predictions (window_size a multiple of N)."""
    min_window: int = Field(default=200, ge=10)
    """Smallest window that gets a verdict."""
    sample_size: int = Field(default=2000, ge=100)
    """Reservoir size per numeric feature (KS, Wasserstein)."""
    label_window: int = Field(default=300, ge=10)
    """Most recent labels the live metric is computed over."""
    min_labels: int = Field(default=100, ge=1)
    """Labels needed before the performance rule speaks."""
    performance_margin: float = Field(default=0.05, ge=0)
    """Allowed drop below the holdout metric."""
    alpha: float = Field(default=0.01, gt=0, lt=1)
    """Significance after multiple-testing correction."""
    correction: str = Field(default="bh", pattern="^(bh|bonferroni)$")
    psi_threshold: float = Field(default=0.1, gt=0)
    js_threshold: float = Field(default=0.1, gt=0)
    wasserstein_threshold: float = Field(default=0.2, gt=0)
    drift_share: float = Field(default=0.3, gt=0, le=1)
    """Share of features that must drift for dataset-level drift."""
    key_features: list[str] = Field(default_factory=list)
    """Features whose drift alone is dataset-level drift."""
    persistence_k: int = Field(default=2, ge=1)
    persistence_n: int = Field(default=3, ge=1)
    decisive_z: float = Field(default=3.29, ge=0)
    """A window whose live metric is below the margin even at this z alarms alone (0: always k of n)."""
    baseline_labels: int = Field(default=1000, ge=0)
    """Classification: a version's first this many live labels are its live baseline; its latest this many
    are compared with them (0: no baseline rule; see domain.decision.baseline_performance)."""
    baseline_margin: float = Field(default=0.02, ge=0)
    """Allowed drop of the latest labels' accuracy below the live baseline."""
    baseline_z: float = Field(default=2.58, ge=0)
    compare_every: int = Field(default=50, ge=1)
    """A canary's (or shadow's) comparison with the champion is published on model.compared each time it
    has this many more scored labels."""
    group_window: int = Field(default=1000, ge=10, le=100_000)
    """Latest labelled predictions the live group metrics are computed over (per version)."""
    min_group_rows: int = Field(default=20, ge=1)
    """Smallest group compared in the live fairness differences (as the trainer's holdout figures)."""
    group_gauges: int = Field(default=10, ge=1, le=100)
    """Largest groups per sensitive feature exported as Prometheus gauges (bounds label cardinality)."""
    group_interval_s: float = Field(default=30.0, gt=0)
    """How often the live group metrics of every monitored model are recomputed for /metrics."""
    batch_messages: int = Field(default=100, ge=1, le=10_000)
    """predictions.logged is consumed in batches of up to this many messages (one transaction and one offset
    commit a batch; serving's messages carry up to 200 predictions each)."""
    batch_wait_ms: int = Field(default=50, ge=1, le=10_000)
    """How long a batch of predictions.logged waits to fill once its first message is in."""
    lag_interval_s: float = Field(default=15.0, gt=0)
    """How often the consumer lag of every driftloop group is measured for /metrics."""
    cooldown_s: float = Field(default=120.0, ge=0)
    """No new alarm for a model this long after the last one."""
    request_id_secret: SecretStr | None = None
    """Serving's request-id key (``DRIFTLOOP_SERVING_REQUEST_ID_SECRET``): labels on ``labels.arrived`` are
    scored only for ids serving tagged with it, so a producer that writes the topic directly cannot feed
    made-up ids; an event carrying one is dead-lettered. Unset: ids are not checked here (a warning)."""
    request_id_previous_secrets: list[SecretStr] = Field(default_factory=list)
    """Keys rotated out on serving: ids they tagged are still accepted until the key is dropped."""
