"""The web console: server-rendered pages over the five services' APIs (``python -m services.console``).

It keeps no data and holds no credential of its own: a person signs in with their
driftloop token, which stays in an HttpOnly cookie and is sent to the services on
each page, so every service still checks every read and every action itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.errors import DriftloopError
from libs.common.http import Health, Readiness
from services.console import api
from services.console.adapters.backends import Backends
from services.console.adapters.pages import page
from services.console.adapters.sessions import Person, Sessions
from services.console.domain.session import COOKIE, safe_next
from services.console.settings import ConsoleSettings

log = logging.getLogger(__name__)


def create_app(settings: ConsoleSettings, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    backends = Backends(settings, transport)
    sessions = Sessions(backends, settings.session_cache_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backends.close()

    app = FastAPI(title="driftloop console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _install_errors(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Health:
        return Health(status="ok", service="console")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(response: Response) -> Readiness:
        try:
            await backends.get("registry", "/healthz", None)
        except DriftloopError as exc:
            response.status_code = 503
            return Readiness(status="unavailable", checks={"registry": exc.message})
        return Readiness(status="ok", checks={"registry": "ok"})

    api.mount(app, backends, sessions, settings)
    return app


def _install_errors(app: FastAPI) -> None:
    """Errors as pages a person can read, with the status a client can act on; never a stack trace."""

    @app.exception_handler(api.LoginRequired)
    async def login_required(request: Request, exc: api.LoginRequired) -> Response:
        answer = RedirectResponse(f"/login?next={safe_next(exc.target)}", status_code=303)
        answer.delete_cookie(COOKIE, path="/")
        return answer

    @app.exception_handler(DriftloopError)
    async def driftloop_error(request: Request, exc: DriftloopError) -> Response:
        return page(request, "error.html", _who(request), status=exc.status_code, code=exc.code, message=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"there is no page {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return page(request, "error.html", _who(request), status=exc.status_code, code="not_found", message=message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return page(request, "error.html", _who(request), status=422, code="validation_failed", message=problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return page(request, "error.html", None, status=500, code="internal_error",
                    message=f"internal error ({type(exc).__name__}); see the console's log")  # fmt: skip


def _who(request: Request) -> Person | None:
    who = getattr(request.state, "who", None)
    return who if isinstance(who, Person) else None
