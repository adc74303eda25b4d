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
    require_approval: bool = False
    """Promote winners to the 'candidate' alias only; a person moves 'champion'."""
    max_untrusted_share: float = Field(default=0.5, ge=0, le=1)
    """A version whose training rows, or the labels behind the performance alarm that caused it, came
    from untrusted principals (summed) for more than this share is held at 'candidate' for an approver."""
