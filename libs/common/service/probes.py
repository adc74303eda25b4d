"""The operational routes every service answers: ``/healthz``, ``/readyz``, ``/asyncapi.json``, ``/metrics``,
and ``/v1/whoami`` (who the bearer token is, and its roles: what a front-end such as the console may offer)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from libs.common.asyncapi import document
from libs.common.auth import Principal, Role, require
from libs.common.http import Health, Readiness
from libs.common.service.runtime import Runtime, ServiceSpec


class WhoAmI(BaseModel):
    principal: str = Field(description="The token's principal (the audit's actor).", examples=["alice"])
    roles: list[str] = Field(description="Its roles; admin implies every other.", examples=[["operator"]])
    trusted: bool = Field(description="Whether its data may retrain and promote without an approver.")


class AsyncApiDocument(BaseModel):
    """An AsyncAPI 3.0 document (https://www.asyncapi.com/docs/reference/specification/v3.0.0): the parts
    named here are checked, the rest of the specification's members pass through as generated."""

    model_config = ConfigDict(extra="allow")

    info: dict[str, Any] = Field(description="Title, version and description of the service.")
    asyncapi: str = Field(description="The AsyncAPI version.", examples=["3.0.0"])
    default_content_type: str | None = Field(default=None, alias="defaultContentType", description="Of the messages.")
    servers: dict[str, Any] | None = Field(default=None, description="The Kafka brokers.")
    channels: dict[str, Any] | None = Field(default=None, description="Each topic the service consumes or publishes.")
    operations: dict[str, Any] | None = Field(default=None, description="What it does on each channel.")
    components: dict[str, Any] | None = Field(default=None, description="The events' messages and JSON schemas.")


class PrometheusText(Response):
    """The Prometheus text exposition format."""

    media_type = CONTENT_TYPE_LATEST


def install_probes(app: FastAPI, rt: Runtime, spec: ServiceSpec) -> None:
    @app.get("/v1/whoami", tags=["ops"], summary="The caller: its principal and roles")
    async def whoami(principal: Annotated[Principal, require(Role.READER)]) -> WhoAmI:
        return WhoAmI(principal=principal.name, roles=sorted(r.value for r in principal.roles),
                      trusted=principal.trusted)  # fmt: skip

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> Health:
        return Health(status="ok", service=rt.name)

    @app.get(
        "/readyz", tags=["ops"], summary="Readiness: database and broker usable", response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready: the checks say why."}},
    )  # fmt: skip
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {"started": "ok" if rt.ready else "starting"}
        if rt.pool is not None:
            try:
                async with asyncio.timeout(2):
                    await rt.pool.fetchval("SELECT 1")
                checks["database"] = "ok"
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                checks["database"] = f"error: {exc}"
        if rt.watch is not None:
            checks["broker"] = "ok" if rt.watch.reachable else f"error: {rt.watch.problem}"
        if spec.readiness is not None:
            checks.update(spec.readiness())
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)

    @app.get("/asyncapi.json", tags=["ops"], summary="AsyncAPI document: the topics consumed and published",
             response_model_exclude_unset=True)  # fmt: skip
    async def asyncapi() -> AsyncApiDocument:
        return AsyncApiDocument.model_validate(
            document(spec.name, rt.broker, spec.publishes, spec.description, spec.receives)
        )

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PrometheusText,
             include_in_schema=False)  # fmt: skip
    async def metrics(request: Request) -> PrometheusText:
        if rt.settings.auth.metrics_token:
            await rt.auth.authorise(request.headers.get("authorization"), Role.READER)
        return PrometheusText(generate_latest(rt.telemetry.registry))
