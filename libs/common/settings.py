"""Settings shared by every service, read from ``DRIFTLOOP_*`` environment variables.

Each service composes these in its own ``settings.py`` with its own prefix
(``DRIFTLOOP_INGEST_`` …). Settings are built in ``__main__``, never at import
time, so tests construct their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.retry import Backoff


class KafkaSettings(BaseSettings):
    """How to reach Kafka (``DRIFTLOOP_KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list of bootstrap brokers."""
    client_id: str = "driftloop"
    """Prefix of the client id each service reports to the brokers."""
    topic_prefix: str = ""
    """Prepended to every topic and consumer group name: several driftloop
    installations (or test runs) can share one cluster without seeing each other."""
    create_topics: bool = True
    """Create missing topics at start-up. False where an operator owns them (Strimzi KafkaTopics) and a
    service's Kafka user may neither create topics nor see those of other services."""
    replication_factor: int = Field(default=1, ge=1)
    """Replicas of the topics driftloop creates (3 on a production cluster); existing topics are left alone."""
    max_attempts: int = Field(default=4, ge=1)
    """How many times a consumer tries a message before dead-lettering it."""
    retry_backoff_s: float = Field(default=0.2, gt=0)
    """First retry delay; doubles with each attempt (bounded exponential backoff)."""
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    """Upper bound of one retry delay."""
    connect_timeout_s: float = Field(default=60.0, gt=0)
    """How long start-up keeps retrying an unreachable broker before giving up."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers: ``SASL_SSL`` (TLS plus SCRAM) in production; PLAINTEXT only
    for the embedded broker or a network nobody else can reach."""
    ssl_cafile: str | None = None
    """CA bundle the brokers' certificates are checked against (the system's CAs when unset)."""
    ssl_certfile: str | None = None
    """Client certificate (PEM) for mutual TLS; needs ``ssl_keyfile``."""
    ssl_keyfile: str | None = None
    """Private key (PEM) of the client certificate."""
    ssl_check_hostname: bool = True
    """Check that a broker's certificate names the host connected to."""
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    """SASL mechanism with ``SASL_*`` protocols (Strimzi's ``scram-sha-512`` listener authentication)."""
    sasl_username: str | None = None
    """The service's Kafka user (one per service, so ACLs limit each to its own topics)."""
    sasl_password: SecretStr | None = None
    """Its password: from the environment or a mounted Secret, never from a file in the repository."""

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_username", "sasl_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # compose passes unset variables as empty strings

    @model_validator(mode="after")
    def _credentials_complete(self) -> Self:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together (mutual TLS)")
        return self

    @property
    def backoff(self) -> Backoff:
        """The consumers' wait between tries of a message."""
        return Backoff(self.retry_backoff_s, self.retry_backoff_max_s)

    def topic(self, name: str) -> str:
        """The real name of topic ``name`` on the cluster."""
        return self.topic_prefix + name

    def group(self, name: str) -> str:
        """The real name of consumer group ``name`` on the cluster."""
        return self.topic_prefix + name


class DatabaseSettings(BaseSettings):
    """How to reach PostgreSQL (``DRIFTLOOP_DATABASE_*``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_DATABASE_", extra="ignore")

    url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    """asyncpg DSN of the metadata database."""
    min_pool_size: int = Field(default=1, ge=0)
    """Connections a pool keeps open."""
    max_pool_size: int = Field(default=10, ge=1)
    """Connections a pool opens at most."""
    connect_timeout_s: float = Field(default=60.0, gt=0)
    """How long start-up keeps retrying an unreachable database before giving up."""


class ArtifactSettings(BaseSettings):
    """Where artifacts (datasets, models, profiles) are stored (``DRIFTLOOP_ARTIFACTS_*``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_ARTIFACTS_", extra="ignore")

    root: str = Field(default_factory=lambda: (Path.cwd() / ".driftloop" / "artifacts").as_uri())
    """Root URI: ``file:///path`` for a local directory or ``s3://bucket/prefix``."""


class TelemetrySettings(BaseSettings):
    """Tracing, logging and metrics (``DRIFTLOOP_TELEMETRY_*``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_TELEMETRY_", extra="ignore")

    otlp_endpoint: str | None = None
    """OTLP/HTTP endpoint (``http://jaeger:4318``); no export when unset."""
    log_level: str = "INFO"
    """Root log level."""
    json_logs: bool = True
    """Structured JSON logs carrying trace ids; plain text when false."""
