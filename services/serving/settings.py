"""Settings of the serving service (``DRIFTLOOP_SERVING_*``)."""

import socket

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.common.service import ServiceSettings


class ServingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_SERVING_", extra="ignore")

    port: int = 8004
    registry_url: str = "http://127.0.0.1:8003"
    """Where the registry answers: champions are loaded from it at start."""
    instance_id: str = Field(default_factory=socket.gethostname)
    """This replica's name; each replica has its own consumer group for model.promoted."""
    max_instances: int = Field(default=1000, ge=1)
    """Most instances one predict request may carry."""
    log_batch_size: int = Field(default=200, ge=1)
    """predictions.logged: publish once this many predictions are buffered …"""
    log_flush_s: float = Field(default=1.0, gt=0)
    """… or this often, whichever comes first."""
