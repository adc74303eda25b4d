"""HTTP API of the registry: models, versions, aliases, audit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, FastAPI, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.common import idempotency
from libs.common.auth import Principal, Role, require
from libs.common.errors import Conflict, Forbidden, NotFound, ValidationFailed
from libs.common.http import INT4_MAX, errors
from libs.common.idempotency import IdempotencyKey, fingerprint
from libs.common.service import Runtime
from services.registry.adapters import canaries, repository
from services.registry.domain.canary import CanaryConfig, refusal
from services.registry.domain.promotion import ALIASES

ALIAS_SCOPE = "registry.alias-move"
ModelName = Annotated[str, Path(description="Model name.")]
VersionNumber = Annotated[int, Path(ge=1, le=INT4_MAX, description="Model version.")]


class ModelSummary(BaseModel):
    model: str
    dataset: str
    versions: int = Field(description="Versions registered.")
    aliases: dict[str, int] = Field(description="Alias → version.", examples=[{"champion": 3}])
    runtime: str | None = Field(description="What serves the champion: onnxruntime or sklearn; None without one.")
    canary: dict[str, Any] | None = Field(
        default=None,
        description="The running canary: version, share (percent), judged (false: A/B), started_at, deadline, "
        "last_comparison (the monitor's latest figures).",
    )


class Run(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    params: dict[str, Any]
    seed: int
    code_version: str
    training_rows: int
    champion_version: int | None = Field(description="The champion it was compared with.")
    champion_metrics: dict[str, Any] | None
    rejudged: dict[str, Any] | None = Field(description="The re-judgement, when the champion changed meanwhile.")


class Lineage(BaseModel):
    model_config = ConfigDict(extra="allow")

    dataset: str
    dataset_version: int
    trigger: str
    trigger_event_id: str | None
    source_event_id: str = Field(description="The model.trained event it was registered from.")


class Version(BaseModel):
    """A registered version. Fields added to the record later pass through (extra="allow")."""

    model_config = ConfigDict(extra="allow")

    model: str
    version: int
    aliases: list[str]
    metrics: dict[str, Any] = Field(description="Holdout metrics.")
    primary_metric: str
    decision: str = Field(
        description="The promotion policy's outcome: promoted, rejected, rejudging, held (at candidate for "
        "approval), or canary (released as a canary first: a drift retrain, or any winner while such a canary is "
        "judged), which becomes promoted or rolled-back when its canary ends."
    )
    created_at: str
    run: Run
    lineage: Lineage
    artifact: dict[str, Any]
    profile: dict[str, Any]
    schema_: dict[str, Any] = Field(alias="schema", description="The dataset schema it was trained on.")
    onnx: dict[str, Any] | None
    runtime: str
    fairness: dict[str, float] | None = Field(
        default=None,
        description="Group differences on the holdout, '<metric>:<sensitive feature>' → value, lower is fairer.",
        examples=[{"demographic_parity_difference:sex": 0.04}],
    )
    champion_fairness: dict[str, float] | None = Field(
        default=None, description="The champion's group differences on the same holdout (what the gate compared)."
    )
    cards: dict[str, Any] | None = Field(
        default=None,
        description="Artifact refs of the model and data cards (Markdown and JSON); read them rendered with "
        "GET /v1/models/{model}/versions/{version}/card. None: see card_error.",
    )
    card_error: str | None = Field(default=None, description="Why the version has no cards.")


class AliasMoved(BaseModel):
    model: str
    alias: str
    from_version: int | None
    to_version: int


class AuditEntry(BaseModel):
    id: int
    action: str = Field(examples=["register", "promote", "reject", "rollback", "rejudge"])
    alias: str | None
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: str


class AliasMoveRequest(BaseModel):
    version: int = Field(ge=1, le=INT4_MAX, description="Version the alias should point to.")
    reason: str = Field(min_length=3, max_length=500, description="Why; kept in the audit log.")
    share: float | None = Field(
        default=None, ge=0, le=100,
        description="canary only: the percentage of the model's traffic it takes (default: the registry's "
        "DRIFTLOOP_REGISTRY_CANARY_SHARE). Moving the canary to the version it already has changes only the share.",
    )  # fmt: skip
    judged: bool = Field(
        default=True,
        description="canary only: false makes it an A/B test (fixed share, no automatic promotion or rollback).",
    )


class AliasCleared(BaseModel):
    model: str
    alias: str
    from_version: int | None = Field(description="The version it pointed to; None when it pointed nowhere.")


@dataclass(frozen=True)
class CanaryDefaults:
    share: float = 10.0
    config: CanaryConfig = field(default_factory=CanaryConfig)


def mount(app: FastAPI, rt: Runtime, canary: CanaryDefaults | None = None) -> None:
    router = APIRouter(prefix="/v1/models", tags=["models"])
    _mount_reads(router, rt)
    _mount_alias_move(router, rt, canary or CanaryDefaults())
    _mount_alias_clear(router, rt)
    app.include_router(router)


async def _require(rt: Runtime, model: str) -> None:
    if not await repository.model_exists(rt.db, model):
        raise NotFound(f"no model {model!r} in the registry", model=model)


def _version(row: asyncpg.Record, aliases: list[str] | None) -> Version:
    return Version.model_validate(repository.version_out(row, aliases))


def _mount_reads(router: APIRouter, rt: Runtime) -> None:
    @router.get(
        "",
        summary="Models with their aliases and the runtime serving the champion",
        dependencies=[require(Role.READER)],
    )
    async def list_models() -> list[ModelSummary]:
        running = await canaries.all_current(rt.db)
        return [
            ModelSummary.model_validate({**m, "canary": running.get(m["model"])})
            for m in await repository.models_out(rt.db)
        ]

    @router.get("/{model}/versions", summary="Versions of a model, newest first", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def list_versions(model: ModelName) -> list[Version]:
        await _require(rt, model)
        aliases = await repository.aliases_by_version(rt.db, model)
        return [_version(r, aliases.get(r["version"])) for r in await repository.versions(rt.db, model)]

    @router.get("/{model}/versions/{version}", summary="One version: metrics, run, lineage, artifacts",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def show_version(model: ModelName, version: VersionNumber) -> Version:
        row = await repository.version(rt.db, model, version)
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}", model=model, version=version)
        return _version(row, (await repository.aliases_by_version(rt.db, model)).get(version))

    @router.get("/{model}/aliases/{alias}", summary="The version an alias points to", responses=errors(404),
                dependencies=[require(Role.READER)])  # fmt: skip
    async def show_alias(model: ModelName, alias: str) -> Version:
        await _require(rt, model)
        version = await repository.alias_version(rt.db, model, alias)
        if version is None:
            raise NotFound(f"model {model!r} has no {alias!r} alias", model=model, alias=alias)
        return await show_version(model, version)

    @router.get("/{model}/audit", summary="Every registration, promotion, rejection and rollback",
                responses=errors(404), dependencies=[require(Role.READER)])  # fmt: skip
    async def audit(model: ModelName, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[AuditEntry]:
        await _require(rt, model)
        return [AuditEntry.model_validate(a) for a in await repository.audit_out(rt.db, model, limit)]


def _mount_alias_move(router: APIRouter, rt: Runtime, canary: CanaryDefaults) -> None:
    @router.put(
        "/{model}/aliases/{alias}", response_model=AliasMoved, responses=errors(403, 404, 409, 422),
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
        await _require(rt, model)
        async with rt.db.acquire() as conn, conn.transaction():
            request = fingerprint(principal.name, model, alias, body.model_dump_json())
            if key is not None and (replay := await idempotency.claim(conn, ALIAS_SCOPE, key, request)):
                return replay.response()
            await repository.lock_model(conn, model)
            current = await repository.alias_version(conn, model, alias)
            await _check_move(conn, model, alias, body)
            approval = alias == "champion" and (current is None or body.version > current)
            needed = Role.APPROVER if approval else Role.OPERATOR
            if not principal.can(needed):
                raise Forbidden(
                    f"{'moving champion forward' if approval else f'moving {alias} or rolling back'} needs the "
                    f"role {needed.value!r}, which principal {principal.name!r} lacks",
                    principal=principal.name, required_role=needed.value,
                )  # fmt: skip
            share = (body.share if body.share is not None else canary.share) if alias == "canary" else None
            event = await repository.move_alias(
                conn, model, alias, body.version, actor=principal.name, reason=body.reason, share=share,
                judged=body.judged if alias == "canary" else None,
            )  # fmt: skip
            await _after_move(conn, model, alias, body.version, share, body.judged, principal.name, canary.config)
            answer = {"model": model, "alias": alias, "from_version": event.move.from_version,
                      "to_version": body.version}  # fmt: skip
            if key is not None:
                await idempotency.remember(conn, ALIAS_SCOPE, key, 200, json.dumps(answer).encode())
        return answer


async def _check_move(conn: asyncpg.Connection, model: str, alias: str, body: AliasMoveRequest) -> None:
    """Refuse a move that cannot stand (no alias moves): unknown version, share misplaced, a canary or
    shadow without a champion or equal to it."""
    if await repository.version(conn, model, body.version) is None:
        raise NotFound(f"model {model!r} has no version {body.version}", model=model, version=body.version)
    champion = await repository.alias_version(conn, model, "champion")
    why = refusal(alias, body.version, champion=champion, share=body.share)
    if why is None and not body.judged and alias != "canary":
        why = f"judged applies to the canary alias only, not to {alias!r}"
    if why is not None:
        error = ValidationFailed if "share" in why or "judged" in why else Conflict
        raise error(why, model=model, alias=alias, version=body.version)


async def _after_move(
    conn: asyncpg.Connection, model: str, alias: str, version: int, share: float | None, judged: bool, actor: str,
    config: CanaryConfig,
) -> None:  # fmt: skip
    """Keep the canaries table in step: a canary starts its clock; a champion that takes the canary's
    version ends the canary (it is the champion now); a canary or shadow equal to a new champion ends."""
    if alias == "canary" and share is not None:
        await canaries.start(conn, model, version, share, judged, datetime.now(UTC) + config.deadline)
    if alias == "champion":
        for other in ("canary", "shadow"):
            if await repository.alias_version(conn, model, other) == version:
                await canaries.clear(conn, model, other, action="end", actor=actor,
                                     reason=f"v{version} became the champion")  # fmt: skip


def _mount_alias_clear(router: APIRouter, rt: Runtime) -> None:
    @router.delete(
        "/{model}/aliases/{alias}", response_model=AliasCleared, responses=errors(404, 409, 422),
        summary="End a canary or shadow (its traffic returns to the champion)", dependencies=[require(Role.OPERATOR)],
    )  # fmt: skip
    async def clear(
        model: ModelName,
        alias: str,
        principal: Annotated[Principal, require(Role.OPERATOR)],
        reason: Annotated[str, Query(min_length=3, max_length=500, description="Why; kept in the audit log.")],
    ) -> dict[str, Any]:
        if alias not in ("canary", "shadow"):
            raise ValidationFailed(f"only canary and shadow can be cleared, not {alias!r}; move champion instead",
                                   alias=alias)  # fmt: skip
        await _require(rt, model)
        async with rt.db.acquire() as conn, conn.transaction():
            await repository.lock_model(conn, model)
            previous = await canaries.clear(conn, model, alias, action="rollback", actor=principal.name,
                                            reason=reason)  # fmt: skip
        return {"model": model, "alias": alias, "from_version": previous}
