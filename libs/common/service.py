"""The runtime every service shares: settings, telemetry, PostgreSQL with
migrations, topic set-up, the broker, the outbox relay, bearer-token
authentication, and an HTTP app with ``/healthz``, ``/readyz``, ``/metrics``,
JSON errors and a body-size limit.

A service supplies its name, its migrations, a function that registers its
subscribers and one that mounts its routes; everything else is the same in
all five, so they start, fail and report alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from faststream.kafka import KafkaBroker
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common import outbox
from libs.common.artifacts import ArtifactStore
from libs.common.asyncapi import document
from libs.common.auth import Authenticator, AuthSettings, Role, unguarded_routes
from libs.common.brokerwatch import BrokerWatch
from libs.common.db import COMMON_MIGRATIONS, close_pool, connect_with_retry, load_migrations, migrate
from libs.common.errors import BadRequest, DatabaseUnavailable, DriftloopError, PayloadTooLarge
from libs.common.events import Event
from libs.common.http import InputGuardMiddleware, allowed_methods, declare_errors
from libs.common.kafka import BrokerPublisher, create_broker, ensure_topics, start_with_retry
from libs.common.settings import ArtifactSettings, DatabaseSettings, KafkaSettings, TelemetrySettings
from libs.common.signing import SigningSettings, Verifier, VerifyingStore
from libs.common.telemetry import Telemetry, configure_logging, setup_telemetry

log = logging.getLogger(__name__)


class ServiceSettings(BaseSettings):
    """What every service is configured with; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP API listens on."""
    port: int = 8000
    """HTTP port."""
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest accepted request body; larger ones get 413."""
    database_schema: str | None = None
    """PostgreSQL schema the service owns; the service's name when unset."""
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    signing: SigningSettings = Field(default_factory=SigningSettings)


@dataclass
class Runtime:
    """The started pieces of one service, handed to its handlers and routes."""

    name: str
    settings: ServiceSettings
    telemetry: Telemetry
    broker: KafkaBroker
    store: ArtifactStore
    auth: Authenticator
    pool: asyncpg.Pool | None = None
    relay: outbox.OutboxRelay | None = None
    watch: BrokerWatch | None = None
    ready: bool = False
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def db(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError(f"{self.name}: the database is not connected yet")
        return self.pool

    @property
    def publisher(self) -> BrokerPublisher:
        return BrokerPublisher(self.broker, self.settings.kafka.topic_prefix)

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run a background task for the service's lifetime; a crash is logged, not silent."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        task.add_done_callback(_log_crash)
        self.background.append(task)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=task.exception())


@dataclass
class ServiceSpec:
    """What makes a service itself."""

    name: str
    migrations: Path | None
    register: Callable[[Runtime], None] = lambda rt: None
    """Registers subscribers on ``rt.broker`` (before it starts)."""
    routes: Callable[[FastAPI, Runtime], None] = lambda app, rt: None
    """Mounts the service's HTTP routes."""
    on_start: Callable[[Runtime], Awaitable[None]] | None = None
    """Runs after the database and broker are up (load state, start workers)."""
    on_stop: Callable[[Runtime], Awaitable[None]] | None = None
    readiness: Callable[[], dict[str, str]] | None = None
    """Checks of the service's own, merged into ``/readyz`` ("ok" or why not), e.g. serving's loaded champions."""
    description: str = ""
    publishes: tuple[type[Event], ...] = ()
    verify_artifacts: bool = False
    """Loads what the trainer made (serving, the monitor): every artifact read must carry a valid signature."""
    """Events the service emits (for its AsyncAPI document)."""


def build(spec: ServiceSpec, settings: ServiceSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    """The HTTP app of a service and its runtime; starting the app starts the service."""
    telemetry = telemetry or setup_telemetry(spec.name, settings.telemetry)
    runtime = Runtime(
        name=spec.name,
        settings=settings,
        telemetry=telemetry,
        broker=create_broker(settings.kafka, telemetry),
        store=_store(spec, settings, telemetry),
        auth=Authenticator(settings.auth),
    )
    spec.register(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(spec, runtime)
        try:
            yield
        finally:
            try:  # a stop step that never returns must not keep the process (or a test) alive for ever
                await asyncio.wait_for(_stop(spec, runtime), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("%s did not stop in %.0fs; abandoning the rest of its shutdown", spec.name, STOP_TIMEOUT_S)

    app = FastAPI(title=f"driftloop {spec.name}", description=spec.description, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.auth = runtime.auth
    _install_errors(app)
    _install_probes(app, runtime, spec)
    spec.routes(app, runtime)
    declare_errors(app)
    app.add_middleware(InputGuardMiddleware)
    unguarded = unguarded_routes(app)
    if unguarded:
        raise RuntimeError(
            f"{spec.name}: routes without a role: {', '.join(unguarded)}; "
            "add dependencies=[require(Role.X)] (libs/common/auth.py)"
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware, telemetry=telemetry)
    return app, runtime


def _store(spec: ServiceSpec, settings: ServiceSettings, telemetry: Telemetry) -> ArtifactStore:
    if not spec.verify_artifacts:
        return ArtifactStore(settings.artifacts.root)
    verifier = Verifier.from_settings(settings.signing, telemetry.registry)
    if not verifier.paths:
        log.warning(
            "%s: no public keys configured (DRIFTLOOP_SIGNING_PUBLIC_KEYS): every artifact is refused", spec.name
        )
    return VerifyingStore(settings.artifacts.root, verifier=verifier)


async def _start(spec: ServiceSpec, rt: Runtime) -> None:
    started = time.monotonic()
    schema = rt.settings.database_schema or spec.name
    await rt.auth.start(rt.settings.database)
    if spec.migrations is not None:
        rt.pool = await connect_with_retry(rt.settings.database, schema)
        await migrate(rt.pool, schema, load_migrations(COMMON_MIGRATIONS, spec.migrations))
    if rt.settings.kafka.create_topics:
        await ensure_topics(rt.settings.kafka)
    await start_with_retry(rt.broker, rt.settings.kafka)
    rt.watch = BrokerWatch(rt.settings.kafka, rt.telemetry)
    rt.spawn(rt.watch.run(), "broker-watch")
    if rt.pool is not None:
        backlog = Gauge("driftloop_outbox_pending", "Outbox rows not yet published.", registry=rt.telemetry.registry)
        published = Counter(
            "driftloop_outbox_published_total", "Outbox rows published.", registry=rt.telemetry.registry
        )
        rt.relay = outbox.OutboxRelay(rt.pool, rt.publisher, schema=schema, on_published=published.inc)
        rt.relay.start()
        pool = rt.pool

        async def measure_backlog() -> None:
            while True:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    backlog.set(await outbox.pending_count(pool))
                await asyncio.sleep(5)

        rt.spawn(measure_backlog(), "outbox-backlog")
    if spec.on_start is not None:
        await spec.on_start(rt)
    rt.ready = True
    log.info("%s ready in %.2fs", spec.name, time.monotonic() - started)


BROKER_STOP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 45.0


async def _stop(spec: ServiceSpec, rt: Runtime) -> None:
    rt.ready = False
    if spec.on_stop is not None:
        await spec.on_stop(rt)
    for task in rt.background:
        task.cancel()
    await asyncio.gather(*rt.background, return_exceptions=True)
    if rt.relay is not None:  # before the broker: a batch in flight completes or stays pending
        await rt.relay.stop()
    try:  # a consumer leaving its group mid-rebalance can wait on the coordinator for good
        await asyncio.wait_for(rt.broker.stop(), BROKER_STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("the Kafka clients did not stop in %.0fs; going on with the shutdown", BROKER_STOP_TIMEOUT_S)
    if rt.pool is not None:
        await close_pool(rt.pool)
    await rt.auth.stop()
    rt.telemetry.shutdown()


def _install_probes(app: FastAPI, rt: Runtime, spec: ServiceSpec) -> None:
    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": rt.name}

    @app.get("/readyz", tags=["ops"], summary="Readiness: database and broker usable")
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {"started": "ok" if rt.ready else "starting"}
        if rt.pool is not None:
            try:
                await asyncio.wait_for(rt.pool.fetchval("SELECT 1"), 2)
                checks["database"] = "ok"
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                checks["database"] = f"error: {exc}"
        if rt.watch is not None:
            checks["broker"] = "ok" if rt.watch.reachable else f"error: {rt.watch.problem}"
        if spec.readiness is not None:
            checks.update(spec.readiness())
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)

    @app.get("/asyncapi.json", tags=["ops"], summary="AsyncAPI document: the topics consumed and published")
    async def asyncapi() -> dict[str, Any]:
        return document(spec.name, rt.broker, spec.publishes, spec.description)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if rt.settings.auth.metrics_token:
            await rt.auth.authorise(request.headers.get("authorization"), Role.READER)
        return Response(generate_latest(rt.telemetry.registry), media_type=CONTENT_TYPE_LATEST)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(DriftloopError)
    async def driftloop_error(request: Request, exc: DriftloopError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405 and (methods := allowed_methods(app, request.url.path)):
            headers["Allow"] = ", ".join(methods)
        return JSONResponse({"error": code, "message": message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(asyncpg.DataError)
    async def data_error(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value the database cannot hold that no declared bound caught: the
        # caller's input, so a 400, logged so the missing bound gets declared.
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
        bad = BadRequest(f"a value cannot be stored: {exc}")
        return JSONResponse(bad.to_dict(), status_code=400)

    @app.exception_handler(OSError)
    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.OperatorInterventionError)
    @app.exception_handler(asyncpg.InsufficientResourcesError)
    @app.exception_handler(asyncpg.InterfaceError)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
        down = DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); retry later")
        return JSONResponse(down.to_dict(), status_code=503, headers=down.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors) or any(
            e["type"] == "missing" and tuple(e["loc"]) == ("body",) for e in errors
        ):
            bad = BadRequest("request body is empty or not valid JSON")
            return JSONResponse(bad.to_dict(), status_code=400)
        problems = [
            {"field": ".".join(str(p) for p in err["loc"] if p != "body") or "body", "message": err["msg"]}
            for err in exc.errors()[:20]
        ]
        message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        body = {"error": "validation_failed", "message": message, "details": {"problems": problems}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        body = {"error": "internal_error", "message": f"internal error ({type(exc).__name__}); see the service log"}
        return JSONResponse(body, status_code=500)


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


class ObservabilityMiddleware:
    """A server span per request (continuing the caller's ``traceparent``),
    plus request counts and latency histograms by route and status."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.tracer = telemetry.tracer
        self.requests = Counter(
            "driftloop_http_requests_total",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=telemetry.registry,
        )
        self.latency = Histogram(
            "driftloop_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            registry=telemetry.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

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


def run(spec: ServiceSpec, settings: ServiceSettings) -> None:
    """Serve ``spec`` until SIGINT/SIGTERM: the body of every ``__main__``."""
    configure_logging(spec.name, settings.telemetry)
    app, _ = build(spec, settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()
