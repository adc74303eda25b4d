"""Errors, topics, settings and log formatting."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from libs.common import topics
from libs.common.errors import ArtifactNotFound, DriftloopError, NotFound, TransientError, ValidationFailed
from libs.common.settings import DatabaseSettings, KafkaSettings, TelemetrySettings
from libs.common.telemetry import JsonFormatter, inject_context


def test_errors_render_json_with_status_and_retryability() -> None:
    err = ValidationFailed("row 3: field 'age' is above the maximum 120", row=3, field="age")
    assert err.status_code == 422
    assert err.to_dict() == {
        "error": "validation_failed",
        "message": "row 3: field 'age' is above the maximum 120",
        "details": {"row": 3, "field": "age"},
    }
    assert not err.retryable
    assert TransientError("db down").retryable
    assert isinstance(ArtifactNotFound("x"), NotFound)
    assert ArtifactNotFound("x").status_code == 404
    assert DriftloopError("boom").to_dict() == {"error": "internal_error", "message": "boom"}


def test_every_topic_has_a_single_partition_dlq() -> None:
    specs = {t.name: t for t in topics.all_topics()}
    for topic in topics.TOPICS:
        assert specs[topics.dlq(topic.name)].partitions == 1
        assert topic.partitions >= 1
    assert len(specs) == 2 * len(topics.TOPICS)


def test_settings_read_the_documented_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("DRIFTLOOP_DATABASE_URL", "postgresql://u:p@db/x")
    monkeypatch.setenv("DRIFTLOOP_TELEMETRY_OTLP_ENDPOINT", "http://jaeger:4318")
    assert KafkaSettings().bootstrap == "kafka:9092"
    assert DatabaseSettings().url == "postgresql://u:p@db/x"
    assert TelemetrySettings().otlp_endpoint == "http://jaeger:4318"


def test_json_logs_carry_the_trace_id() -> None:
    tracer = TracerProvider().get_tracer("t")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.model = "churn"
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonFormatter("ingest").format(record))
        headers = inject_context()
    assert line["message"] == "hello world"
    assert line["service"] == "ingest"
    assert line["model"] == "churn"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert headers["traceparent"].split("-")[1] == line["trace_id"]
