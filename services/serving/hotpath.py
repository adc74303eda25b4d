"""The predict routes, answered at the ASGI level in front of the FastAPI app.

Profiled at c=64 (py-spy, then cProfile in process), a one-row predict spent
about 55 % of its CPU in FastAPI's routing and dependency solving and in the
three middlewares every service shares (a server span, the body limit, the
JSON guard), against about 25 % in its own work: validation, inference, ids,
the answer. This layer answers exactly ``POST /v1/models/{model}/predict`` and
``POST /v2/models/{model}[/versions/{version}]/infer`` itself and hands every
other request to the app unchanged. It keeps what those layers guarantee:

- the token check of the route's FastAPI declaration (the same roles, read
  from the route, so the two cannot drift apart), 401/403 before the body is read;
- the body limit (413), a NUL in the path or query refused, the strict JSON rules
  of :mod:`libs.common.jsonbody` (a large body parsed off the event loop);
- the same answers and error bodies: driftloop's on ``/v1``, the Open Inference
  Protocol's ``{"error": "..."}`` on ``/v2``, 4xx for every bad request;
- the request counter and latency histogram of every other route;
- a server span continuing the caller's ``traceparent``, for every request whose
  caller's trace is sampled and for a budget of others a second
  (:class:`~services.serving.domain.sampling.TraceBudget`).

``DRIFTLOOP_SERVING_HOT_PATH=false`` sends the predict routes through FastAPI
instead, with the same answers (the benchmark compares the two).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common import jsonbody
from libs.common.auth import Authenticator, Role, route_roles
from libs.common.errors import DriftloopError, PayloadTooLarge
from libs.common.http import check_target
from libs.common.service import http_metrics
from libs.common.telemetry import Telemetry
from services.serving import api_v2
from services.serving.api import ROUTING_HEADER, Predictor
from services.serving.api_v2 import BINARY_HEADER, BINARY_REFUSED
from services.serving.domain.sampling import TraceBudget
from services.serving.domain.v2 import ProtocolError

log = logging.getLogger(__name__)

Headers = dict[bytes, bytes]
Answer = Callable[[dict[str, str], Any, Headers], Awaitable[bytes]]
"""Path parameters, the parsed body and the request's headers → the JSON answer (or an error raised)."""


@dataclass(frozen=True)
class HotRoute:
    template: str
    """The route as FastAPI declares it, e.g. ``/v1/models/{model}/predict`` (also its metrics label)."""
    roles: tuple[Role, ...]
    answer: Answer
    protocol: bool
    """Errors in the Open Inference Protocol's shape, ``{"error": "..."}``."""

    @property
    def pattern(self) -> re.Pattern[str]:
        # A path parameter matches one segment, as Starlette's default converter does.
        return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template)) + "$")


INLINE_JSON_BYTES = 1024 * 1024
"""Bodies up to this size are parsed on the event loop (1,000 rows of 20 features take ~400 KB)."""

ROUTING_KEY = ROUTING_HEADER.encode()
_WANTED = (b"authorization", b"content-length", b"traceparent", b"tracestate", ROUTING_KEY)


class HotPath:
    """The ASGI layer: answers the hot routes, passes everything else to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        routes: list[HotRoute],
        auth: Authenticator,
        telemetry: Telemetry,
        *,
        max_body_bytes: int,
        traces_per_s: float,
    ) -> None:
        self.app = app
        self.routes = [(route, route.pattern) for route in routes]
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.tracer = telemetry.tracer
        self.budget = TraceBudget(traces_per_s)
        metrics = http_metrics(telemetry)
        self._requests: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route, pattern in self.routes:
                match = pattern.match(path)
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: HotRoute, params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers: Headers = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in headers:
                headers[name] = value
        parent, traced = self._trace(headers)
        if traced:
            with self.tracer.start_as_current_span(
                f"POST {route.template}", context=parent, kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": "POST", "http.route": route.template},
            ) as span:  # fmt: skip
                status = await self._respond(route, params, headers, scope, receive, send)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
        else:
            status = await self._respond(route, params, headers, scope, receive, send)
        self._count(route.template, status, time.perf_counter() - started)

    def _trace(self, headers: Headers) -> tuple[Any, bool]:
        """The caller's trace context and whether to record this request: always when the caller's
        trace is sampled, never when it is not, and within the budget when there is none."""
        traceparent = headers.get(b"traceparent")
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if b"tracestate" in headers:
                carrier["tracestate"] = headers[b"tracestate"].decode("latin-1")
            context = propagate.extract(carrier)
            caller = trace.get_current_span(context).get_span_context()
            if caller.is_valid:
                return context, caller.trace_flags.sampled
        return None, self.budget.take()

    async def _respond(
        self, route: HotRoute, params: dict[str, str], headers: Headers, scope: Scope, receive: Receive, send: Send
    ) -> int:
        extra: dict[str, str] = {}
        try:
            check_target(scope)
            self._check_length(headers.get(b"content-length"))
            await self.auth.authorise(_bearer(headers.get(b"authorization")), *route.roles)
            body = await self._body(receive)
            if body is None:  # the client went away: nobody to answer
                return 499
            if not body.strip():
                raise jsonbody.InvalidJSON("request body is empty or not valid JSON")
            # orjson holds the GIL while it parses, so a worker thread would free nothing for the loop
            # and only add a hop; only bodies beyond any predict request's size go to one.
            if len(body) <= INLINE_JSON_BYTES:
                document = jsonbody.loads(body, allow_nan=True)
            else:
                document = await jsonbody.loads_off_loop(body, allow_nan=True)
            status, answer = 200, await route.answer(params, document, headers)
        except DriftloopError as exc:
            status, extra = exc.status_code, exc.headers
            answer = orjson.dumps({"error": exc.message} if route.protocol else exc.to_dict())
        except ProtocolError as exc:
            status, answer = exc.status, orjson.dumps({"error": exc.message})
        except Exception as exc:
            log.error("unhandled error on POST %s", scope["path"], exc_info=exc)
            message = f"internal error ({type(exc).__name__}); see the service log"
            status = 500
            answer = orjson.dumps({"error": message} if route.protocol else {"error": "internal_error",
                                                                            "message": message})  # fmt: skip
        response_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        response_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": answer})
        return status

    def _check_length(self, declared: bytes | None) -> None:
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")

    async def _body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _count(self, template: str, status: int, seconds: float) -> None:
        # Label lookups take a lock and a tuple hash each: done once per route and status, then cached.
        counter = self._requests.get((template, status))
        if counter is None:
            counter = self._requests[(template, status)] = self._metrics.requests.labels("POST", template, str(status))
        counter.inc()
        latency = self._latency.get(template)
        if latency is None:
            latency = self._latency[template] = self._metrics.latency.labels("POST", template)
        latency.observe(seconds)


def _routing_key(headers: Headers) -> str | None:
    """The caller's ``X-Routing-Key`` (which version of a canary split it keeps reaching), if it sent one."""
    key = headers.get(ROUTING_KEY)
    return key.decode("latin-1") if key is not None else None


def _bearer(header: bytes | None) -> str | None:
    """The ``Authorization`` value as the routes' ``HTTPBearer`` reads it: a Bearer token, else none."""
    if not header:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    return f"Bearer {token}" if token and scheme.lower() == "bearer" else None


def predict_routes(app: FastAPI, predictor: Predictor) -> list[HotRoute]:
    """The hot routes of serving, with the roles their FastAPI declarations require."""
    roles = route_roles(app)

    async def predict(params: dict[str, str], document: Any, headers: Headers) -> bytes:
        return await predictor.answer_v1(params["model"], document, _routing_key(headers))

    async def infer(params: dict[str, str], document: Any, headers: Headers) -> bytes:
        if BINARY_HEADER.encode() in headers:
            raise ProtocolError(BINARY_REFUSED)
        return await api_v2.answer(predictor, params["model"], params.get("version"), document, _routing_key(headers))

    def route(template: str, answer: Answer, protocol: bool) -> HotRoute:
        return HotRoute(template, tuple(sorted(roles[("POST", template)])), answer, protocol)

    return [
        route("/v1/models/{model}/predict", predict, protocol=False),
        route("/v2/models/{model}/infer", infer, protocol=True),
        route("/v2/models/{model}/versions/{version}/infer", infer, protocol=True),
    ]
