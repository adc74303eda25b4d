"""Kafka TLS and SASL, from :class:`~libs.common.settings.KafkaSettings` to the clients.

Every client driftloop opens (the faststream broker, admin clients, batch and
lag consumers, the operator CLI) takes its connection security from here, so a
setting cannot reach one client and miss another. In production the brokers
listen with TLS and SCRAM-SHA-512 (``SASL_SSL``); each service logs in as its
own Kafka user, and ACLs limit that user to the topics and consumer group the
service really uses (``k8s/base/kafka-users.yaml``).
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from libs.common.settings import KafkaSettings

_SASL = {"SCRAM-SHA-512": SASLScram512, "SCRAM-SHA-256": SASLScram256, "PLAIN": SASLPlaintext}


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of ``SSL``/``SASL_SSL`` connections (None for plaintext)."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
    )
    context.check_hostname = settings.ssl_check_hostname
    return context


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (consumer, producer, admin)."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # the settings' validator guarantees it
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value(),
        )
    return options


def broker_security(settings: KafkaSettings) -> BaseSecurity | None:
    """The same, as faststream's security object (it also documents the scheme in AsyncAPI)."""
    context = ssl_context(settings)
    use_ssl = context is not None
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_username is not None
        assert settings.sasl_password is not None
        sasl = _SASL[settings.sasl_mechanism]
        return sasl(settings.sasl_username, settings.sasl_password.get_secret_value(), ssl_context=context,
                    use_ssl=use_ssl)  # fmt: skip
    if use_ssl:
        return BaseSecurity(ssl_context=context, use_ssl=True)
    return None
