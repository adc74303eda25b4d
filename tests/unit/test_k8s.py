"""k8s/: every overlay renders with kustomize and passes Kubernetes schema validation;
the Strimzi and Prometheus-operator resources (CRDs, outside the core schemas) are checked for
what driftloop relies on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from libs.common import topics

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")
CRD_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ServiceMonitor"}
K8S_VERSION = "1.31.0"
#: Deployments that are front-ends over the services' HTTP APIs: no Kafka user, no database.
FRONTENDS = {"console"}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    docs = render(overlay)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
    assert kinds >= CRD_KINDS
    assert "Secret" not in kinds  # secret values never live in the repository
    namespace = f"driftloop{'-dev' if overlay == 'dev' else ''}"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_probed_limited_and_wired(overlay: str) -> None:
    docs = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"ingest", "trainer", "registry", "serving", "monitor", *FRONTENDS}
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert set(container["resources"]) == {"requests", "limits"}
        env = {e["name"]: e for e in container["env"]}
        if name in FRONTENDS:  # no database: it reads the services' APIs, by their in-cluster names
            assert "DRIFTLOOP_DATABASE_URL" not in env
            assert env["DRIFTLOOP_CONSOLE_REGISTRY_URL"]["value"] == "http://registry:8003"
        else:
            assert env["DRIFTLOOP_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "driftloop-database"
        assert env["SERVICE"]["value"] == name
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    pdbs = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    assert pdbs == set(deployments)
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert set(deployments) <= services


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_match_the_code(overlay: str) -> None:
    docs = render(overlay)
    declared = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    expected = {t.name: t for t in topics.all_topics()}
    assert set(declared) == set(expected)
    for name, spec in declared.items():
        assert spec["partitions"] == expected[name].partitions
        assert spec["config"]["retention.ms"] == str(expected[name].retention_ms)
        assert spec["replicas"] == (3 if overlay == "prod" else 1)
    kafka = next(d for d in docs if d["kind"] == "Kafka")
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_trainer_holds_the_signing_key_and_verifiers_mount_the_public_keys(overlay: str) -> None:
    """Serving and the monitor refuse unsigned artifacts, so a cluster without keys would serve nothing."""
    deployments = {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] == "Deployment"}

    def mounted(name: str, path: str) -> dict[str, Any]:
        """The volume whose mount holds ``path`` in deployment ``name``."""
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = [m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mounts, f"{name}: {path} is on no mounted volume"
        return next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])

    def env(name: str) -> dict[str, str]:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value", "") for e in container.get("env", [])}

    private = env("trainer")["DRIFTLOOP_SIGNING_PRIVATE_KEY"]
    assert mounted("trainer", private)["secret"]["secretName"]
    for name in ("serving", "monitor"):
        keys = yaml.safe_load(env(name)["DRIFTLOOP_SIGNING_PUBLIC_KEYS"])
        assert keys, name
        for key in keys:
            assert "configMap" in mounted(name, key) or "secret" in mounted(name, key)
    holders = [name for name in deployments if "DRIFTLOOP_SIGNING_PRIVATE_KEY" in env(name)]
    assert holders == ["trainer"]
