"""A service's HTTP app, built from its spec, and the uvicorn runner every ``__main__`` calls."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from libs.common.auth import Authenticator, unguarded_routes
from libs.common.http import InputGuardMiddleware, declare_errors
from libs.common.kafka import create_broker
from libs.common.service.errors import install_errors
from libs.common.service.lifecycle import STOP_TIMEOUT_S, start, stop, store_for
from libs.common.service.middlewares import BodyLimitMiddleware, ObservabilityMiddleware
from libs.common.service.probes import install_probes
from libs.common.service.runtime import Runtime, ServiceSpec
from libs.common.service.settings import ServiceSettings
from libs.common.tasks import bounded
from libs.common.telemetry import Telemetry, configure_logging, setup_telemetry

log = logging.getLogger(__name__)


def build(spec: ServiceSpec, settings: ServiceSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    """The HTTP app of a service and its runtime; starting the app starts the service."""
    telemetry = telemetry or setup_telemetry(spec.name, settings.telemetry)
    runtime = Runtime(
        name=spec.name,
        settings=settings,
        telemetry=telemetry,
        broker=create_broker(settings.kafka, telemetry),
        store=store_for(spec, settings, telemetry),
        auth=Authenticator(settings.auth),
    )
    spec.register(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start(spec, runtime)
        try:
            yield
        finally:
            await bounded(stop(spec, runtime), timeout_s=STOP_TIMEOUT_S, what=f"{spec.name}: the stop")

    # FastAPI's own OpenTelemetry hooks look for global providers on every request; the services
    # trace through their own provider (ObservabilityMiddleware), so those hooks are switched off.
    app = FastAPI(title=f"driftloop {spec.name}", description=spec.description, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})  # fmt: skip
    app.state.runtime = runtime
    app.state.auth = runtime.auth
    install_errors(app)
    install_probes(app, runtime, spec)
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
    if spec.front is not None:  # added last: the outermost layer
        app.add_middleware(spec.front)
    return app, runtime


def run(spec: ServiceSpec, settings: ServiceSettings, *, reuse_port: bool = False) -> None:
    """Serve ``spec`` until SIGINT/SIGTERM: the body of every ``__main__``.

    ``reuse_port``: listen with ``SO_REUSEPORT``, so several processes serve one port and the
    kernel spreads connections over them (a service's worker processes, Linux)."""
    configure_logging(spec.name, settings.telemetry)
    app, _ = build(spec, settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    if not reuse_port:
        server.run()
        return
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    server.run(sockets=[sock])
