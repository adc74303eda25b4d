"""Every HTTP error answered as JSON in the project's error shape, never a stack trace."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.errors import BadRequest, DatabaseUnavailable, DriftloopError
from libs.common.http import allowed_methods

log = logging.getLogger(__name__)


def install_errors(app: FastAPI) -> None:
    """Answer every error in the project's shape: ours, Starlette's (404, 405), FastAPI's validation errors,
    the database refusing a value (400) or being down (503), and anything else (500, logged)."""
    app.exception_handler(DriftloopError)(driftloop_error)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(asyncpg.DataError)(data_error)
    for unavailable in DEPENDENCY_DOWN:
        app.exception_handler(unavailable)(dependency_down)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(Exception)(unexpected)


DEPENDENCY_DOWN: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
)
"""Errors that mean a dependency (the database) is unavailable: a 503 with Retry-After."""


async def driftloop_error(request: Request, exc: DriftloopError) -> JSONResponse:
    # The Open Inference Protocol (/v2…) has its own error body: {"error": "<message>"}.
    body = {"error": exc.message} if _open_inference(request) else exc.to_dict()
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (methods := allowed_methods(request.app, request.url.path)):
        headers["Allow"] = ", ".join(methods)
    body = {"error": message} if _open_inference(request) else {"error": code, "message": message}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def data_error(request: Request, exc: asyncpg.DataError) -> JSONResponse:
    # A value the database cannot hold that no declared bound caught: the
    # caller's input, so a 400, logged so the missing bound gets declared.
    log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
    bad = BadRequest(f"a value cannot be stored: {exc}")
    return JSONResponse(bad.to_dict(), status_code=400)


async def dependency_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
    down = DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); retry later")
    return JSONResponse(down.to_dict(), status_code=503, headers=down.headers)


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


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {"error": "internal_error", "message": f"internal error ({type(exc).__name__}); see the service log"}
    return JSONResponse(body, status_code=500)


def _open_inference(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")
