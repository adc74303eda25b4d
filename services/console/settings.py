"""Settings of the console (``DRIFTLOOP_CONSOLE_*``)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.settings import TelemetrySettings


class ConsoleSettings(BaseSettings):
    """The console holds no data and no privilege of its own: it reads the five services' APIs
    with the signed-in person's token, so it needs only their addresses."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface the web console listens on."""
    port: int = 8006
    """HTTP port of the web console."""
    ingest_url: str = "http://127.0.0.1:8001"
    trainer_url: str = "http://127.0.0.1:8002"
    registry_url: str = "http://127.0.0.1:8003"
    serving_url: str = "http://127.0.0.1:8004"
    monitor_url: str = "http://127.0.0.1:8005"
    request_timeout_s: float = Field(default=10.0, gt=0)
    """How long a page waits for one service's answer before saying it is unreachable."""
    cookie_secure: bool = False
    """Mark the session cookie ``Secure`` (sent over HTTPS only): set it wherever the console is served
    through TLS. Off by default because ``driftloop up`` serves plain HTTP on localhost."""
    session_cache_s: float = Field(default=5.0, ge=0)
    """A token's principal and roles are asked again after this long (a revoked token stops within it)."""
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
