"""The HTTP edge every service shares: one error body, declared in the OpenAPI
document for every status a route can answer; the integer ranges of the
database columns that path and query parameters end up in; and a guard that
runs before each route, so input no layer below could store is refused there
with a 400 instead of failing as a 500 deep inside a transaction.

The guard is an ASGI middleware rather than a route wrapper: it sees every
request, whatever router mounted the route, before FastAPI parses anything.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common import jsonbody
from libs.common.errors import DriftloopError

INT4_MAX = 2**31 - 1
"""Largest value of a PostgreSQL ``integer`` column (versions)."""
INT8_MAX = 2**63 - 1
"""Largest value of a PostgreSQL ``bigint`` column (ids, offsets)."""


class ErrorBody(BaseModel):
    """Every error answer of every service (statuses 4xx and 5xx)."""

    error: str = Field(description="Machine-readable code.", examples=["not_found"])
    message: str = Field(description="What went wrong, naming the field or cause.")
    details: dict[str, Any] | None = Field(default=None, description="Structured context (field, row, problems).")


_WHY = {
    400: "Malformed input: invalid JSON, a NUL character, a duplicate key, nesting too deep.",
    401: "No valid bearer token.",
    403: "The token's role may not do this.",
    404: "The resource does not exist.",
    409: "Conflicts with the current state, or an Idempotency-Key reused with a different body.",
    413: "The body is larger than the service accepts.",
    415: "The body's media type is not supported.",
    422: "The input is well-formed but invalid; the message names the field.",
    429: "Too many requests; retry later.",
    503: "A dependency (database, broker) is unavailable; retry after Retry-After seconds.",
}


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    service: str = Field(examples=["registry"])


class Readiness(BaseModel):
    status: str = Field(description="ok, or unavailable (answered with 503).", examples=["ok"])
    checks: dict[str, str] = Field(
        description="Each check: ok, or why not.", examples=[{"started": "ok", "database": "ok", "broker": "ok"}]
    )


class MarkdownResponse(PlainTextResponse):
    """A Markdown document (``text/markdown; charset=utf-8``): a route's ``response_class`` makes the
    OpenAPI document say so."""

    media_type = "text/markdown"


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` declarations of error statuses, all with :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


def declare_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what every operation can answer besides its
    own statuses: 400, 422 and 503 always, 401, 403 and 429 where a token is
    required, 404 where the path has parameters, 413 where there is a body, all
    in :class:`ErrorBody`'s shape (FastAPI's own 422 entry describes a
    ``{"detail"}`` body the services never send).

    Done on the generated document, not on the routes, so it holds for every
    route however it was mounted."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        # The Open Inference Protocol's own error body: {"error": "..."} (ours carries "error" too).
        v2_error = {"application/json": {"schema": {"type": "object", "required": ["error"],
                                                    "properties": {"error": {"type": "string"}}}}}  # fmt: skip
        for path, operations in doc.get("paths", {}).items():
            for method, operation in operations.items():
                statuses = [400, 422, 503]
                if operation.get("security"):  # a token is required: missing, wrong role, over its rate
                    statuses += [401, 403, 429]
                if "{" in path:
                    statuses.append(404)
                if method in ("post", "put", "patch"):
                    statuses.append(413)
                responses = operation.setdefault("responses", {})
                for status in statuses:
                    responses.setdefault(str(status), {"description": _WHY[status]})
                for status, response in responses.items():
                    if status.startswith(("4", "5")) and not _own_body(response):
                        response["content"] = v2_error if path == "/v2" or path.startswith("/v2/") else error
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _own_body(response: dict[str, Any]) -> bool:
    """Whether an error status is declared with a body of the route's own (``/readyz``'s 503 is its
    checks), rather than the shared error body or FastAPI's ``{"detail"}`` one."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    name = str(schema.get("$ref", "")).rsplit("/", 1)[-1]
    return bool(name) and name not in ("ErrorBody", "HTTPValidationError")


JSON_BODY = "driftloop.json_body"
"""Key in the request's state under which the guard leaves the JSON document it checked."""


def json_body(scope: Scope) -> Any:
    """The JSON document the guard checked for this request, or :data:`NO_BODY` if it checked none."""
    return scope.get("state", {}).get(JSON_BODY, NO_BODY)


NO_BODY: Any = object()


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document declares for ``path`` (Starlette's own 405 names
    only the first route that matched the path, not all the routes sharing it)."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods.update(m.upper() for m in operations)
    return sorted(methods)


class InputGuardMiddleware:
    """Refuses, before any route runs, input no layer below could store: a NUL
    character in the path or query, and a JSON body that :func:`jsonbody.loads`
    refuses (duplicate keys, NUL or lone surrogates, nesting deeper than
    :data:`jsonbody.MAX_DEPTH`). A large body is checked on a worker thread.
    ``NaN`` is let through here: each field judges it (a schema bound refuses
    it, an ingested row is rejected with a reason)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_target(scope)
        except jsonbody.InvalidJSON as exc:
            await _refuse(exc, send, scope)
            return
        headers = dict(scope["headers"])
        if not _is_json(headers.get(b"content-type")) or _encoded(headers.get(b"content-encoding")):
            # A compressed body is not JSON text yet: the route that takes the encoding decodes it, within
            # its limit, and parses it with the same checks (ingest's records route); any other route
            # fails to parse it as JSON.
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body.strip():
            try:
                document = await jsonbody.loads_off_loop(body, allow_nan=True)
            except jsonbody.InvalidJSON as exc:
                await _refuse(exc, send, scope)
                return
            # Routes that read the body themselves take the checked document instead of parsing it again.
            scope.setdefault("state", {})[JSON_BODY] = document
        await self.app(scope, _replay([body], None, receive), send)


def _encoded(content_encoding: bytes | None) -> bool:
    return content_encoding is not None and content_encoding.strip().lower() not in (b"", b"identity")


def check_target(scope: Scope) -> None:
    """Refuse a request whose path or query holds a NUL character (no layer below could store it) with
    :class:`~libs.common.jsonbody.InvalidJSON` (a 400): the guard's first check, shared with serving's hot path."""
    if "\x00" in scope["path"]:
        raise jsonbody.InvalidJSON("the path holds a NUL character")
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            raise jsonbody.InvalidJSON(f"query parameter {name[:40]!r} holds a NUL character")


def _replay(bodies: list[bytes], first: Message | None, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": b, "more_body": False} for b in bodies]
    if first is not None:
        pending.append(first)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _refuse(error: DriftloopError, send: Send, scope: Scope | None = None) -> None:
    # The Open Inference Protocol (/v2/…) has its own error body: {"error": "<message>"}.
    v2 = scope is not None and str(scope.get("path", "")).startswith("/v2/")
    response = JSONResponse({"error": error.message} if v2 else error.to_dict(), status_code=error.status_code)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.decode("latin-1").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
