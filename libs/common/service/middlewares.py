"""The ASGI middlewares every service runs: a body-size limit, and a span plus metrics per request."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.errors import PayloadTooLarge
from libs.common.telemetry import Telemetry


class BodyLimitMiddleware:
    """Answers 413 for bodies over the limit, by header or by counting the stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        try:
            await self.app(scope, counting_receive, send)
        except PayloadTooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        err = PayloadTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
        response = JSONResponse(err.to_dict(), status_code=413)
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    latency: Histogram


def http_metrics(telemetry: Telemetry) -> HttpMetrics:
    """The HTTP request metrics of a service, created once per registry (the observability
    middleware and a service's own front layer record into the same ones)."""
    existing = telemetry.shared.get("http_metrics")
    if isinstance(existing, HttpMetrics):
        return existing
    metrics = HttpMetrics(
        requests=Counter(
            "driftloop_http_requests_total",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=telemetry.registry,
        ),
        latency=Histogram(
            "driftloop_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=telemetry.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
    )
    telemetry.shared["http_metrics"] = metrics
    return metrics


class ObservabilityMiddleware:
    """A server span per request (continuing the caller's ``traceparent``),
    plus request counts and latency histograms by route and status."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.tracer = telemetry.tracer
        metrics = http_metrics(telemetry)
        self.requests = metrics.requests
        self.latency = metrics.latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"]
        with self.tracer.start_as_current_span(
            f"{method} {scope['path']}", context=propagate.extract(headers), kind=trace.SpanKind.SERVER
        ) as span:
            try:
                await self.app(scope, receive, recording_send)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                span.update_name(f"{method} {template}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
                self.requests.labels(method, template, str(status)).inc()
                self.latency.labels(method, template).observe(time.perf_counter() - started)
