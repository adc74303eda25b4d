"""Kafka TLS and SASL settings reach every client, and incomplete credentials are refused."""

from __future__ import annotations

import ssl

import pytest
from faststream.security import SASLScram512
from pydantic import ValidationError

from libs.common.kafka_security import broker_security, client_options
from libs.common.settings import KafkaSettings


def test_plaintext_by_default_adds_nothing() -> None:
    settings = KafkaSettings()
    assert client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert broker_security(settings) is None


def test_sasl_ssl_with_scram_sha_512_reaches_aiokafka_and_faststream() -> None:
    settings = KafkaSettings(security_protocol="SASL_SSL", sasl_username="driftloop-serving", sasl_password="pw")
    options = client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("driftloop-serving", "pw")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode is ssl.CERT_REQUIRED
    security = broker_security(settings)
    assert isinstance(security, SASLScram512)
    assert security.use_ssl
    assert "pw" not in repr(settings)  # the password never shows in logs or reprs


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("DRIFTLOOP_KAFKA_SASL_USERNAME", "driftloop-ingest")
    monkeypatch.setenv("DRIFTLOOP_KAFKA_SASL_PASSWORD", "from-a-secret")
    assert client_options(KafkaSettings())["sasl_plain_password"] == "from-a-secret"


def test_tls_without_sasl_and_a_wrong_ca_file_fails_loudly() -> None:
    settings = KafkaSettings(security_protocol="SSL", ssl_check_hostname=False)
    assert "sasl_mechanism" not in client_options(settings)
    assert client_options(settings)["ssl_context"].check_hostname is False
    with pytest.raises((FileNotFoundError, ssl.SSLError)):
        client_options(KafkaSettings(security_protocol="SSL", ssl_cafile="/nonexistent/ca.crt"))


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "go together"),
        ({"security_protocol": "TLS"}, "security_protocol"),
    ],
)
def test_incomplete_settings_are_refused(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        KafkaSettings(**values)  # type: ignore[arg-type]
