"""Tracing, structured logs and the Prometheus registry of one service.

Traces: an OpenTelemetry tracer provider per service, exporting over OTLP/HTTP
when an endpoint is configured (Jaeger, an OTel collector); context travels
between services in W3C ``traceparent`` headers. Logs: one JSON object per
line with the current trace and span ids, so a log line leads to its trace.
Metrics: a per-service ``CollectorRegistry`` that ``/metrics`` exposes.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

from libs.common.settings import TelemetrySettings

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with ``trace_id``/``span_id`` when a span is active."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            doc["trace_id"] = format(ctx.trace_id, "032x")
            doc["span_id"] = format(ctx.span_id, "016x")
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        doc.update(extra)
        if record.exc_info and record.levelno >= logging.ERROR:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(service: str, settings: TelemetrySettings) -> None:
    """Route the root logger to stderr, as JSON or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_logs:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # aiokafka logs every reconnect attempt at ERROR; driftloop logs its own retries.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


@dataclass
class Telemetry:
    """What a service needs to trace and measure itself."""

    service: str
    tracer_provider: TracerProvider
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    shared: dict[str, Any] = field(default_factory=dict)
    """Metric sets shared by several components of the service (created once per registry)."""

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(f"driftloop.{self.service}")

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()


def setup_telemetry(
    service: str,
    settings: TelemetrySettings,
    *,
    extra_processors: tuple[SpanProcessor, ...] = (),
) -> Telemetry:
    """Build the tracer provider of ``service``: OTLP export when configured,
    plus any ``extra_processors`` (tests pass an in-memory exporter)."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"driftloop-{service}"}))
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    for processor in extra_processors:
        provider.add_span_processor(processor)
    return Telemetry(service=service, tracer_provider=provider)


def inject_context() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
