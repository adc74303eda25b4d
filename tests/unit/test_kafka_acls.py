"""k8s/: each service's Strimzi KafkaUser grants exactly what its code uses: Read on the topics it
consumes and its consumer group, Write on the topics it publishes and on the dead-letter twins of
what it consumes, Describe with both; nothing else (the monitor's lag exporter also describes every
topic and group). Derived from the services' own subscriptions and ``ServiceSpec.publishes``, so a
new subscription without its ACL (or a stale ACL) fails here, not in production."""

from __future__ import annotations

from typing import Any

import pytest

from cli.main import service_specs
from libs.common import topics
from libs.common.service import build
from tests.unit.test_k8s import FRONTENDS, OVERLAYS, render

Acl = tuple[str, str, str, str]  # resource type, name, pattern type, operation
#: Services that read every group's committed offsets (consumer lag): Describe on all topics and groups.
LAG_READERS = {"monitor"}


def consumed(service: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Topics ``service`` consumes and its consumer groups as (name, pattern type), from its code."""
    spec, settings = service_specs()[service]
    _, runtime = build(spec, settings)
    reads: set[str] = set()
    groups: set[tuple[str, str]] = set()
    for subscriber in runtime.broker._subscribers:
        found: Any = subscriber  # faststream's Kafka subscriber: .topics and .group_id
        reads |= {t.name for t in found.topics}
        group = found.group_id
        if group:  # serving reads model.promoted with no group (every replica, every partition)
            groups.add((group, "literal"))
    # Topics read by a batch consumer of the service's own, started on start-up beside faststream's
    batches: list[Any] = []
    if service == "ingest":  # records.submitted, in micro-batches
        from services.ingest.handlers.records_submitted import consumer

        batches.append(consumer(runtime, settings))  # type: ignore[arg-type]
    if service == "monitor":  # predictions.logged, pipelined
        from services.monitor.handlers import predictions_logged

        batches.append(predictions_logged.consumer(runtime, None, settings))  # type: ignore[arg-type]
    for batch in batches:
        reads.add(batch.topic)
        groups.add((batch.group, "literal"))
    assert {settings.kafka.topic(event.topic) for event in spec.receives} <= reads
    return reads, groups


def expected_acls(service: str) -> set[Acl]:
    spec, _ = service_specs()[service]
    reads, groups = consumed(service)
    writes = {cls.topic for cls in spec.publishes} | {topics.dlq(t) for t in reads}
    acls = {("topic", t, "literal", op) for t in reads for op in ("Read", "Describe")}
    acls |= {("topic", t, "literal", op) for t in writes for op in ("Write", "Describe")}
    acls |= {("group", name, pattern, "Read") for name, pattern in groups}
    if service in LAG_READERS:
        acls |= {("topic", "*", "literal", "Describe"), ("group", "*", "literal", "Describe")}
    return acls


def declared_acls(user: dict[str, Any]) -> set[Acl]:
    acls = set()
    for rule in user["spec"]["authorization"]["acls"]:
        resource = rule["resource"]
        for operation in rule["operations"]:
            acls.add((resource["type"], resource["name"], resource.get("patternType", "literal"), operation))
    return acls


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_has_a_kafka_user_with_exactly_the_acls_its_code_needs(overlay: str) -> None:
    docs = render(overlay)
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    assert set(users) == {f"driftloop-{s}" for s in service_specs()}
    for service in service_specs():
        user = users[f"driftloop-{service}"]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "driftloop"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert user["spec"]["authorization"]["type"] == "simple"
        assert declared_acls(user) == expected_acls(service), service


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_log_in_to_kafka_over_tls_with_their_own_user(overlay: str) -> None:
    docs = render(overlay)
    kafka = next(d for d in docs if d["kind"] == "Kafka")["spec"]["kafka"]
    assert kafka["authorization"]["type"] == "simple"
    for listener in kafka["listeners"]:  # no listener without TLS and SCRAM
        assert listener["tls"] is True
        assert listener["authentication"]["type"] == "scram-sha-512"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "driftloop-config")["data"]
    assert config["DRIFTLOOP_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["DRIFTLOOP_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["DRIFTLOOP_KAFKA_CREATE_TOPICS"] == "false"  # the users may not create topics
    port = next(str(listener["port"]) for listener in kafka["listeners"])
    assert config["DRIFTLOOP_KAFKA_BOOTSTRAP"].endswith(f":{port}")
    for deployment in (d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] not in FRONTENDS):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["DRIFTLOOP_KAFKA_SASL_USERNAME"]["value"] == f"driftloop-{name}"
        password = env["DRIFTLOOP_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": f"driftloop-{name}", "key": "password"}  # the Secret Strimzi makes
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        ca_dir = config["DRIFTLOOP_KAFKA_SSL_CAFILE"].rsplit("/", 1)[0]
        assert volumes[mounts[ca_dir]["name"]]["secret"]["secretName"] == "driftloop-cluster-ca-cert"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        for mount in mounts.values():  # keys and certificates are mounted read-only; only scratch space is writable
            volume = volumes[mount["name"]]
            if "secret" in volume or "configMap" in volume:
                assert mount.get("readOnly") is True, (name, mount)
            else:
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume, (name, mount)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_a_network_policy(overlay: str) -> None:
    docs = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    policies = {
        d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: d
        for d in docs
        if d["kind"] == "NetworkPolicy"
    }
    assert set(policies) == set(deployments)
    for name, policy in policies.items():
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        port = deployments[name]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [port] * len(
            policy["spec"]["ingress"]
        )
        egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
        assert 9092 not in egress_ports  # never the plaintext port
        if name in FRONTENDS:  # HTTP to the services only: no Kafka, no database
            assert egress_ports == {53, 8001, 8002, 8003, 8004, 8005}
        else:
            assert 9093 in egress_ports  # Kafka over TLS
