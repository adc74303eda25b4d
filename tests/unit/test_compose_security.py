"""compose.yaml is secure by default: its secrets are made on first start (libs/common/compose_secrets.py),
each container mounts only its own, the bundled broker takes clients over TLS with SCRAM-SHA-512 only,
and nothing secret is in the repository.

There is no Docker engine here, so compose itself is checked offline: the secrets are generated
for real, the broker's certificate is checked with a real TLS handshake (Python's ssl, as aiokafka
uses it) and its keystore with the JVM's keytool; the entrypoint and the broker's start script run
for real, the start script against stand-ins for Kafka's own command-line tools."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import pkcs12

from libs.common.compose_secrets import ADMIN, SERVICES, ensure
from libs.common.kafka_security import ssl_context
from libs.common.settings import KafkaSettings
from libs.common.signing import Signer, key_id

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "deploy/kafka/start.sh"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def secret_volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = [m.split(":") for m in service.get("volumes", [])]
    return [(m[0], m[1]) for m in mounts if m[0].endswith("-secrets")]


def test_each_container_mounts_only_its_own_secrets_read_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        mounts = [m for m in services[name]["volumes"] if m.split(":")[0].endswith("-secrets")]
        assert mounts == [f"{name}-secrets:/run/driftloop/secrets:ro"], name
        assert services[name]["depends_on"]["secrets"] == {"condition": "service_completed_successfully"}
    assert secret_volumes(services["kafka-init"]) == [("admin-secrets", "/run/driftloop/secrets")]
    assert secret_volumes(services["kafka"]) == [("broker-secrets", "/run/driftloop/broker")]
    assert secret_volumes(services["postgres"]) == [("postgres-secrets", "/run/driftloop/postgres")]
    made = {volume for volume, _ in secret_volumes(services["secrets"])}
    assert made == {f"{n}-secrets" for n in (*SERVICES, ADMIN, "broker", "postgres")}
    # The private signing key is the trainer's alone; nobody generates keys at run time any more.
    for name, service in services.items():
        env = service.get("environment", {})
        assert ("DRIFTLOOP_SIGNING_PRIVATE_KEY" in env) == (name == "trainer"), name
        assert "DRIFTLOOP_SIGNING_GENERATE" not in env


def test_the_bundled_broker_is_tls_and_scram_only_and_nothing_secret_is_in_the_file(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert "ports" not in kafka  # not on the host at all
    assert kafka["entrypoint"] == ["/bin/bash", "/etc/driftloop/kafka/start.sh"]
    assert "./deploy/kafka/start.sh:/etc/driftloop/kafka/start.sh:ro" in kafka["volumes"]
    script = START.read_text()
    listeners = re.search(r"^listeners=(.*)$", script, re.M)
    assert listeners is not None
    # One listener on the network, TLS + SCRAM; the others bound to localhost inside the container.
    assert listeners[1].split(",") == ["SASL_SSL://:9092", "CONTROLLER://localhost:9093", "INTERNAL://localhost:9094"]
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512\n" in script
    env = compose["x-env"]
    assert env["DRIFTLOOP_KAFKA_SECURITY_PROTOCOL"] == "${DRIFTLOOP_KAFKA_SECURITY_PROTOCOL:-SASL_SSL}"
    assert env["DRIFTLOOP_KAFKA_SSL_CAFILE"].endswith(":-/run/driftloop/secrets/ca.crt}")
    assert env["DRIFTLOOP_DATABASE_URL"] == "${DRIFTLOOP_DATABASE_URL:-}"
    assert (
        compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/driftloop/postgres/password"
    )
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD$|SECRET$|DATABASE_URL$", key):
                assert re.fullmatch(r"\$\{\w+:-\}", str(value)), f"{name}: {key} is not from the environment"


def test_secrets_are_made_once_and_each_directory_gets_only_its_own(tmp_path: Path) -> None:
    ensure(tmp_path)
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    ensure(tmp_path)  # a restart keeps every secret
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first

    def read(name: str, file: str) -> str:
        return (tmp_path / name / file).read_text()

    users = dict(line.split(" ") for line in read("broker", "scram-users").splitlines())
    assert users == {f"driftloop-{n}": read(n, "DRIFTLOOP_KAFKA_SASL_PASSWORD") for n in (*SERVICES, ADMIN)}
    assert len(set(users.values())) == len(users)  # one password per user
    database = read("postgres", "password")
    for name in SERVICES:
        assert read(name, "DRIFTLOOP_DATABASE_URL") == f"postgresql://driftloop:{database}@postgres:5432/driftloop"
        assert read(name, "ca.crt") == read("broker", "ca.crt")
        for secret in (tmp_path / name).glob("DRIFTLOOP_*"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert read("serving", "DRIFTLOOP_SERVING_REQUEST_ID_SECRET") == read(
        "monitor", "DRIFTLOOP_MONITOR_REQUEST_ID_SECRET"
    )
    assert len(bytes.fromhex(read("serving", "DRIFTLOOP_SERVING_REQUEST_ID_SECRET"))) == 32
    # Only the trainer holds the signing key; the verifiers hold its public key, and it verifies.
    holders = {p.parent.name for p in tmp_path.rglob("signing.key")}
    assert holders == {"trainer"}
    assert {p.parent.name for p in tmp_path.rglob("signing.pub")} == {"serving", "monitor"}
    signer = Signer.from_file(tmp_path / "trainer" / "signing.key")
    public = serialization.load_pem_public_key((tmp_path / "serving" / "signing.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    assert key_id(public) == signer.key_id
    # The CA's private key is not kept anywhere.
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()
                and p.name != "signing.key"]  # fmt: skip
    # Losing the broker's files makes a new CA, and every client gets the new certificate.
    (tmp_path / "broker" / "keystore.p12").unlink()
    ensure(tmp_path)
    assert read("broker", "ca.crt") != first[tmp_path / "broker" / "ca.crt"].decode()
    assert read("ingest", "ca.crt") == read("broker", "ca.crt")
    assert (
        read("ingest", "DRIFTLOOP_KAFKA_SASL_PASSWORD")
        == first[tmp_path / "ingest" / "DRIFTLOOP_KAFKA_SASL_PASSWORD"].decode()
    )


def _serve_tls(context: ssl.SSLContext, server: socket.socket, connections: int) -> None:
    for _ in range(connections):
        conn, _ = server.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate: what one of the checks expects


def test_clients_trust_the_broker_certificate_under_its_compose_name_only(tmp_path: Path) -> None:
    ensure(tmp_path)
    broker = tmp_path / "broker"
    password = (broker / "keystore.password").read_bytes()
    key, certificate, _ = pkcs12.load_key_and_certificates((broker / "keystore.p12").read_bytes(), password)
    assert key is not None
    assert certificate is not None
    pem = tmp_path / "broker.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pem)
    client = ssl_context(KafkaSettings(
        security_protocol="SASL_SSL", ssl_cafile=str(tmp_path / "ingest" / "ca.crt"),
        sasl_username="driftloop-ingest", sasl_password="x",
    ))  # fmt: skip
    assert client is not None
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_serve_tls, args=(server_context, server, 2), daemon=True)
        thread.start()
        with (
            socket.create_connection(server.getsockname()[:2]) as raw,
            client.wrap_socket(raw, server_hostname="kafka") as tls,
        ):
            assert tls.recv(2) == b"ok"
        with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(server.getsockname()[:2]) as raw:
            client.wrap_socket(raw, server_hostname="broker.elsewhere.example")
        thread.join(timeout=10)


def test_the_jvm_reads_the_broker_keystore(tmp_path: Path) -> None:
    keytool = shutil.which("keytool")
    if keytool is None:
        pytest.skip("keytool (a JDK) is not installed")
    ensure(tmp_path)
    broker = tmp_path / "broker"
    result = subprocess.run(
        [keytool, "-list", "-v", "-storetype", "PKCS12", "-keystore", str(broker / "keystore.p12"),
         "-storepass", (broker / "keystore.password").read_text()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PrivateKeyEntry" in result.stdout
    assert "DNSName: kafka" in result.stdout


def test_the_entrypoint_exports_the_secret_files_unless_the_environment_sets_them(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    entrypoint = compose["x-driftloop"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    script = entrypoint[2]
    assert "$" not in script.replace("$$", ""), "a single $ would be interpolated by compose, not by sh"
    script = script.replace("$$", "$").replace("/run/driftloop/secrets", str(tmp_path))
    (tmp_path / "DRIFTLOOP_KAFKA_SASL_PASSWORD").write_text("from-the-file")
    (tmp_path / "DRIFTLOOP_DATABASE_URL").write_text("postgresql://from-the-file")
    (tmp_path / "ca.crt").write_text("not a variable")
    env = {"PATH": os.environ["PATH"], "DRIFTLOOP_KAFKA_SASL_PASSWORD": "", "DRIFTLOOP_DATABASE_URL": "set-by-you"}
    shown = "echo $DRIFTLOOP_KAFKA_SASL_PASSWORD $DRIFTLOOP_DATABASE_URL ${ca_crt-unset}"
    result = subprocess.run(["sh", "-c", script, entrypoint[3], "sh", "-c", shown], env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.split() == ["from-the-file", "set-by-you", "unset"]
    service = subprocess.run(["sh", "-c", script.replace("exec python", "exec echo python"), entrypoint[3]],
                             env={**env, "SERVICE": "ingest"}, capture_output=True, text=True, check=True)  # fmt: skip
    assert service.stdout.strip() == "python -m services.ingest"


def _stand_in(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def test_the_broker_start_script_registers_every_user(tmp_path: Path) -> None:
    """deploy/kafka/start.sh run for real, with Kafka's tools replaced by stand-ins that log their arguments."""
    ensure(tmp_path / "secrets")
    home, log = tmp_path / "kafka", tmp_path / "calls"
    (home / "bin").mkdir(parents=True)
    record = f'printf "%s\\n" "$(basename "$0") $*" >> {log}'
    _stand_in(
        home / "bin" / "kafka-storage.sh",
        f"if [[ $1 == random-uuid ]]; then echo AAAAAAAAAAAAAAAAAAAAAA; exit; fi\n{record}",
    )
    _stand_in(home / "bin" / "kafka-server-start.sh", f"{record}\nsleep 1")
    _stand_in(home / "bin" / "kafka-broker-api-versions.sh", record)
    _stand_in(home / "bin" / "kafka-configs.sh", record)
    config, ready = tmp_path / "server.properties", tmp_path / "ready"
    env = {
        "PATH": os.environ["PATH"], "KAFKA_HOME": str(home),
        "DRIFTLOOP_BROKER_SECRETS": str(tmp_path / "secrets/broker"),
        "DRIFTLOOP_BROKER_CONFIG": str(config), "DRIFTLOOP_BROKER_READY": str(ready),
    }  # fmt: skip
    result = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ready.exists()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # it holds the keystore password
    properties = dict(line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)
    assert properties["ssl.keystore.location"] == str(tmp_path / "secrets/broker/keystore.p12")
    assert properties["ssl.keystore.password"] == (tmp_path / "secrets/broker/keystore.password").read_text()
    assert properties["advertised.listeners"] == "SASL_SSL://kafka:9092,INTERNAL://localhost:9094"
    calls = log.read_text().splitlines()
    users = dict(line.split(" ") for line in (tmp_path / "secrets/broker/scram-users").read_text().splitlines())
    assert len(users) == len(SERVICES) + 1
    format_call = next(c for c in calls if c.startswith("kafka-storage.sh format"))
    for name, password in users.items():
        assert f"--add-scram SCRAM-SHA-512=[name={name},password={password}]" in format_call
        registered = f"--entity-name {name} --add-config SCRAM-SHA-512=[password={password}]"
        assert any(c.startswith("kafka-configs.sh") and c.endswith(registered) for c in calls), name
    assert calls.index(format_call) < next(i for i, c in enumerate(calls) if c.startswith("kafka-server-start.sh"))
