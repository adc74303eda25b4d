"""The settings every service is configured with."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.auth import AuthSettings
from libs.common.retention import RetentionSettings
from libs.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings, TelemetrySettings
from libs.common.signing import SigningSettings


class ServiceSettings(BaseSettings):
    """What every service is configured with; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP API listens on."""
    port: int = 8000
    """HTTP port."""
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest accepted request body; larger ones get 413."""
    database_schema: str | None = None
    """PostgreSQL schema the service owns; the service's name when unset."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
