"""HTTP API of the registry: models, versions, aliases, audit."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Response
from pydantic import BaseModel, Field

from libs.common import idempotency
from libs.common.auth import Principal, Role, require
from libs.common.errors import Forbidden, NotFound
from libs.common.http import INT4_MAX, errors
from libs.common.idempotency import IdempotencyKey, fingerprint
from libs.common.service import Runtime
from services.registry.adapters import repository
from services.registry.domain.promotion import ALIASES

ALIAS_SCOPE = "registry.alias-move"
ModelName = Annotated[str, Path(description="Model name.")]
VersionNumber = Annotated[int, Path(ge=1, le=INT4_MAX, description="Model version.")]


class AliasMoveRequest(BaseModel):
    version: int = Field(ge=1, le=INT4_MAX, description="Version the alias should point to.")
    reason: str = Field(min_length=3, max_length=500, description="Why; kept in the audit log.")


def mount(app: FastAPI, rt: Runtime) -> None:
    router = APIRouter(prefix="/v1/models", tags=["models"])

    async def _require(model: str) -> None:
        if await rt.db.fetchval("SELECT 1 FROM models WHERE name = $1", model) is None:
            raise NotFound(f"no model {model!r} in the registry", model=model)

    async def _aliases(model: str) -> dict[int, list[str]]:
        by_version: dict[int, list[str]] = {}
        for r in await rt.db.fetch("SELECT alias, version FROM aliases WHERE model = $1 ORDER BY alias", model):
            by_version.setdefault(r["version"], []).append(r["alias"])
        return by_version

    @router.get(
        "",
        summary="Models with their aliases and the runtime serving the champion",
        dependencies=[require(Role.READER)],
    )
    async def list_models() -> list[dict[str, Any]]:
        rows = await rt.db.fetch(
            "SELECT m.name, m.dataset, count(v.version) AS versions FROM models m "
            "LEFT JOIN versions v ON v.model = m.name GROUP BY m.name, m.dataset ORDER BY m.name"
        )
        aliases = await rt.db.fetch("SELECT model, alias, version FROM aliases")
        champions = await rt.db.fetch(
            "SELECT v.model, v.onnx FROM aliases a JOIN versions v ON v.model = a.model AND v.version = a.version "
            "WHERE a.alias = 'champion'"
        )
        runtimes = {c["model"]: repository.runtime(repository.onnx_export(c)) for c in champions}
        return [
            {
                "model": r["name"],
                "dataset": r["dataset"],
                "versions": r["versions"],
                "aliases": {a["alias"]: a["version"] for a in aliases if a["model"] == r["name"]},
                "runtime": runtimes.get(r["name"]),
            }
            for r in rows
        ]

    @router.get("/{model}/versions", summary="Versions of a model, newest first", dependencies=[require(Role.READER)])
    async def list_versions(model: ModelName) -> list[dict[str, Any]]:
        await _require(model)
        aliases = await _aliases(model)
        rows = await rt.db.fetch("SELECT * FROM versions WHERE model = $1 ORDER BY version DESC", model)
        return [repository.version_out(r, aliases.get(r["version"])) for r in rows]

    @router.get("/{model}/versions/{version}", summary="One version: metrics, run, lineage, artifacts",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def show_version(model: ModelName, version: VersionNumber) -> dict[str, Any]:
        row = await rt.db.fetchrow("SELECT * FROM versions WHERE model = $1 AND version = $2", model, version)
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}", model=model, version=version)
        return repository.version_out(row, (await _aliases(model)).get(version))

    @router.get(
        "/{model}/aliases/{alias}", summary="The version an alias points to", dependencies=[require(Role.READER)]
    )
    async def show_alias(model: ModelName, alias: str) -> dict[str, Any]:
        await _require(model)
        version = await repository.alias_version(rt.db, model, alias)
        if version is None:
            raise NotFound(f"model {model!r} has no {alias!r} alias", model=model, alias=alias)
        return await show_version(model, version)

    @router.put(
        "/{model}/aliases/{alias}", response_model=None, responses=errors(409),
        summary="Move an alias by hand (promote or roll back)",
        description="canary and shadow, and rolling champion back to an older version, need `operator`; "
        "moving champion forward (the human approval step) needs `approver`. The audit records the caller.",
    )  # fmt: skip
    async def move(
        model: ModelName,
        alias: str,
        body: AliasMoveRequest,
        principal: Annotated[Principal, require(Role.OPERATOR, Role.APPROVER)],
        key: IdempotencyKey = None,
    ) -> dict[str, Any] | Response:
        if alias not in ALIASES:
            raise NotFound(f"unknown alias {alias!r}; aliases are {', '.join(ALIASES)}", alias=alias)
        await _require(model)
        async with rt.db.acquire() as conn, conn.transaction():
            request = fingerprint(principal.name, model, alias, body.model_dump_json())
            if key is not None and (replay := await idempotency.claim(conn, ALIAS_SCOPE, key, request)):
                return replay.response()
            await conn.execute("SELECT 1 FROM models WHERE name = $1 FOR UPDATE", model)
            current = await repository.alias_version(conn, model, alias)
            approval = alias == "champion" and (current is None or body.version > current)
            needed = Role.APPROVER if approval else Role.OPERATOR
            if not principal.can(needed):
                raise Forbidden(
                    f"{'moving champion forward' if approval else f'moving {alias} or rolling back'} needs the "
                    f"role {needed.value!r}, which principal {principal.name!r} lacks",
                    principal=principal.name, required_role=needed.value,
                )  # fmt: skip
            event = await repository.move_alias(
                conn, model, alias, body.version, actor=principal.name, reason=body.reason
            )
            answer = {"model": model, "alias": alias, "from_version": event.move.from_version,
                      "to_version": body.version}  # fmt: skip
            if key is not None:
                await idempotency.remember(conn, ALIAS_SCOPE, key, 200, json.dumps(answer).encode())
        return answer

    @router.get("/{model}/audit", summary="Every registration, promotion, rejection and rollback",
                dependencies=[require(Role.READER)])  # fmt: skip
    async def audit(model: ModelName, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
        await _require(model)
        rows = await rt.db.fetch("SELECT * FROM audit WHERE model = $1 ORDER BY id DESC LIMIT $2", model, limit)
        return [
            {
                "id": r["id"],
                "action": r["action"],
                "alias": r["alias"],
                "from_version": r["from_version"],
                "to_version": r["to_version"],
                "actor": r["actor"],
                "reason": r["reason"],
                "at": r["at"].isoformat(),
            }
            for r in rows
        ]

    app.include_router(router)
