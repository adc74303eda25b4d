"""compose.yaml and the Dockerfile, validated offline: every reference resolves,
every environment variable is a real setting, every mounted file exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from libs.common.auth import AuthSettings
from libs.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings, TelemetrySettings
from libs.common.signing import SigningSettings
from services.console.settings import ConsoleSettings
from services.ingest.settings import IngestSettings
from services.monitor.settings import MonitorSettings
from services.registry.settings import RegistrySettings
from services.serving.settings import ServingSettings
from services.trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES: dict[str, type[BaseSettings]] = {
    "ingest": IngestSettings,
    "trainer": TrainerSettings,
    "registry": RegistrySettings,
    "serving": ServingSettings,
    "monitor": MonitorSettings,
}
SHARED: list[type[BaseSettings]] = [
    KafkaSettings, DatabaseSettings, ArtifactSettings, TelemetrySettings, AuthSettings, SigningSettings,
]  # fmt: skip
#: Front-ends over the services' APIs: no Kafka user, no database, no metrics of their own.
FRONTENDS: dict[str, type[BaseSettings]] = {"console": ConsoleSettings}


def known_variables() -> set[str]:
    names: set[str] = set()
    for cls in [*SHARED, *SERVICES.values(), *FRONTENDS.values()]:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names.update((prefix + field).upper() for field in cls.model_fields)
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes", {}))
    assert set(SERVICES) <= set(services)
    assert {"kafka", "kafka-init", "postgres", "jaeger", "prometheus", "alertmanager", "grafana"} <= set(services)
    ports: list[str] = []
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target in depends if isinstance(depends, list) else depends.keys():
            assert target in services, f"{name} depends on unknown service {target}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing file {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        ports += [p.split(":")[0] for p in service.get("ports", [])]
        assert service.get("image") or service.get("build"), f"{name} has neither image nor build"
        image = service.get("image", "")
        if image and not image.startswith("driftloop"):
            assert ":" in image, f"{name} image {image} has no tag"
            assert not image.endswith(":latest"), f"{name} image {image} is not pinned"
    assert len(ports) == len(set(ports)), "a host port is published twice"


def test_every_driftloop_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    known = known_variables()
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            if key.startswith("DRIFTLOOP_"):
                assert key in known, f"{name}: {key} is not a driftloop setting"
        if name in FRONTENDS:
            env = service["environment"]
            assert env["SERVICE"] == name
            assert env[f"DRIFTLOOP_{name.upper()}_PORT"] == env["PORT"]
            assert all(env[f"DRIFTLOOP_{name.upper()}_{s.upper()}_URL"].startswith(f"http://{s}:") for s in SERVICES)
        if name in SERVICES:
            env = service["environment"]
            assert env["SERVICE"] == name
            assert env[f"DRIFTLOOP_{name.upper()}_PORT"] == env["PORT"]
            assert f"{name}:{env['PORT']}" in (ROOT / "deploy/prometheus/prometheus.yml").read_text()


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_pinned_base() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# syntax=")
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert bases
    assert all(re.search(r":\d+\.\d+\.\d+", b) for b in bases), bases
    assert re.search(r"^USER driftloop$", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile
    assert "uv sync --frozen --no-dev" in dockerfile


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); .ci/run installs it")
    config = (ROOT / "deploy/prometheus/prometheus.yml").read_text().replace("/etc/prometheus/rules.yml", "rules.yml")
    target = ROOT / "deploy/prometheus/.prometheus-check.yml"
    target.write_text(config)
    try:
        result = subprocess.run(
            [promtool, "check", "config", target.name], cwd=target.parent, capture_output=True, text=True
        )
    finally:
        target.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_run_read_only_and_take_secrets_from_the_environment(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        env = service["environment"]
        assert env["DRIFTLOOP_KAFKA_SASL_USERNAME"] == f"driftloop-{name}"  # one Kafka user per service
        assert env["DRIFTLOOP_KAFKA_SASL_PASSWORD"].startswith("${")  # from the environment, never literal
    assert compose["services"]["serving"]["environment"]["DRIFTLOOP_SERVING_REQUEST_ID_SECRET"].startswith("${")
