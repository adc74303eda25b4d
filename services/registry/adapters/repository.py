"""PostgreSQL access of the registry: versions, aliases, audit, and alias moves."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeAlias

import asyncpg

from libs.common import outbox
from libs.common.errors import NotFound
from libs.common.events import (
    AliasMove,
    ArtifactRef,
    DriftDetected,
    ModelExported,
    ModelPromoted,
    ModelTrained,
    OnnxExport,
    Rejudgement,
    Source,
)
from libs.common.schema import DatasetSchema

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def register(conn: asyncpg.Connection, event: ModelTrained, decision: str) -> int:
    """Record the trained version under the next number of its model."""
    await conn.execute(
        "INSERT INTO models (name, dataset) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", event.model, event.dataset
    )
    await conn.execute("SELECT 1 FROM models WHERE name = $1 FOR UPDATE", event.model)  # numbering is serial
    version: int = await conn.fetchval(
        "SELECT coalesce(max(version), 0) + 1 FROM versions WHERE model = $1", event.model
    )
    await conn.execute(
        "INSERT INTO versions (model, version, source_event_id, job_id, dataset, dataset_version, trigger, "
        "trigger_event_id, params, metrics, champion_metrics, champion_version, primary_metric, seed, code_version, "
        "training_rows, artifact, profile, schema, decision, onnx) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
        event.model, version, event.event_id, event.job_id, event.dataset, event.dataset_version, event.trigger,
        event.trigger_event_id, json.dumps(event.params, default=str), json.dumps(event.metrics),
        json.dumps(event.champion_metrics) if event.champion_metrics is not None else None, event.champion_version,
        event.primary_metric, event.seed, event.code_version, event.training_rows, event.artifact.model_dump_json(),
        event.profile.model_dump_json(), event.dataset_schema.model_dump_json(), decision,
        event.onnx.model_dump_json() if event.onnx is not None else None,
    )  # fmt: skip
    return version


async def record_governance(conn: asyncpg.Connection, model: str, version: int, event: ModelTrained) -> None:
    """The version's group differences (its own and the champion's) and its cards, or why there are none."""
    await conn.execute(
        "UPDATE versions SET fairness = $3, champion_fairness = $4, cards = $5, card_error = $6 "
        "WHERE model = $1 AND version = $2",
        model, version, _json(event.fairness), _json(event.champion_fairness),
        event.cards.model_dump_json() if event.cards is not None else None, event.card_error,
    )  # fmt: skip


def _json(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def onnx_export(row: asyncpg.Record) -> OnnxExport | None:
    """The version's ONNX export, if its trainer made one (versions from before exports have none)."""
    return OnnxExport.model_validate_json(row["onnx"]) if row["onnx"] else None


def runtime(onnx: OnnxExport | None) -> str:
    """What serves the version: onnxruntime when its export passed the parity check, else scikit-learn."""
    return "onnxruntime" if onnx is not None and onnx.parity and onnx.artifact is not None else "sklearn"


async def alias_version(conn: Conn, model: str, alias: str) -> int | None:
    value = await conn.fetchval("SELECT version FROM aliases WHERE model = $1 AND alias = $2", model, alias)
    return int(value) if value is not None else None


async def audit(
    conn: Conn, model: str, action: str, actor: str, reason: str,
    alias: str | None = None, from_version: int | None = None, to_version: int | None = None,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO audit (model, action, alias, from_version, to_version, actor, reason) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        model, action, alias, from_version, to_version, actor, reason,
    )  # fmt: skip


async def move_alias(
    conn: asyncpg.Connection,
    model: str,
    alias: str,
    version: int,
    *,
    actor: str,
    reason: str,
    correlation_id: str | None = None,
    share: float | None = None,
    judged: bool | None = None,
) -> ModelPromoted:
    """Point ``alias`` at ``version``: alias row, audit row and ``model.promoted``, in the caller's transaction
    (for a canary, the event carries its ``share`` of traffic and whether the canary policy ``judged`` it)."""
    row = await conn.fetchrow("SELECT * FROM versions WHERE model = $1 AND version = $2", model, version)
    if row is None:
        raise NotFound(f"model {model!r} has no version {version}", model=model, version=version)
    previous = await conn.fetchval(
        "SELECT version FROM aliases WHERE model = $1 AND alias = $2 FOR UPDATE", model, alias
    )
    await conn.execute(
        "INSERT INTO aliases (model, alias, version) VALUES ($1, $2, $3) "
        "ON CONFLICT (model, alias) DO UPDATE SET version = $3, updated_at = now()",
        model, alias, version,
    )  # fmt: skip
    action = "promote" if previous is None or version > previous else "rollback"
    if share is not None:
        action = "share" if version == previous else action
        reason = f"{reason} (share {share:g}%{'' if judged is not False else ', A/B: no automatic decision'})"
    await audit(conn, model, action, actor, reason, alias, previous, version)
    event = promoted_event(row, alias, previous, actor=actor, reason=reason, correlation_id=correlation_id)
    if share is not None:
        event = event.model_copy(update={"share": share, "judged": judged})
    await outbox.add(conn, event)
    return event


def promoted_event(
    row: asyncpg.Record, alias: str, previous: int | None, *, actor: str, reason: str, correlation_id: str | None
) -> ModelPromoted:
    return ModelPromoted(
        producer="registry",
        correlation_id=correlation_id,
        model=row["model"],
        version=row["version"],
        dataset=row["dataset"],
        move=AliasMove(alias=alias, from_version=previous, to_version=row["version"]),
        artifact=ArtifactRef.model_validate_json(row["artifact"]),
        profile=ArtifactRef.model_validate_json(row["profile"]),
        dataset_schema=DatasetSchema.model_validate_json(row["schema"]),
        metrics=json.loads(row["metrics"]),
        onnx=onnx_export(row),
        reason=reason,
        actor=actor,
    )


async def record_export(conn: asyncpg.Connection, event: ModelExported) -> asyncpg.Record | None:
    """Store a version's ONNX export, made after it was registered; None when no such version is known.

    The version is the one its job trained from exactly these pipeline bytes.
    """
    await conn.execute("SELECT 1 FROM models WHERE name = $1 FOR UPDATE", event.model)  # as alias moves do
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE versions SET onnx = $4 WHERE model = $1 AND job_id = $2 AND artifact->>'sha256' = $3 RETURNING *",
        event.model, event.job_id, event.artifact.sha256, event.onnx.model_dump_json(),
    )  # fmt: skip
    return row


async def keep_pending_export(conn: asyncpg.Connection, event: ModelExported) -> None:
    """Keep an export whose version is not registered yet, for ``take_pending_export`` (a redelivery: once)."""
    await conn.execute(
        "INSERT INTO pending_exports (model, job_id, sha256, onnx) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (model, job_id, sha256) DO NOTHING",
        event.model, event.job_id, event.artifact.sha256, event.onnx.model_dump_json(),
    )  # fmt: skip


async def take_pending_export(conn: asyncpg.Connection, model: str, job_id: str, sha256: str) -> OnnxExport | None:
    """The export that arrived before the version ``job_id`` trained from these bytes, if one did (removed)."""
    onnx = await conn.fetchval(
        "DELETE FROM pending_exports WHERE model = $1 AND job_id = $2 AND sha256 = $3 RETURNING onnx",
        model, job_id, sha256,
    )  # fmt: skip
    return OnnxExport.model_validate_json(onnx) if onnx is not None else None


async def announce_runtime(
    conn: asyncpg.Connection, row: asyncpg.Record, *, reason: str, correlation_id: str | None
) -> list[str]:
    """``model.promoted`` again for each alias the version holds, now carrying its export; no alias moves.

    Consumers take it as the same version (serving reloads it on the runtime the export allows; the
    monitor and the trainer already know it). Returns the aliases announced.
    """
    aliases = [
        r["alias"]
        for r in await conn.fetch(
            "SELECT alias FROM aliases WHERE model = $1 AND version = $2 ORDER BY alias", row["model"], row["version"]
        )
    ]
    for alias in aliases:
        event = promoted_event(row, alias, row["version"], actor="policy", reason=reason, correlation_id=correlation_id)
        await outbox.add(conn, event)
    return aliases


def version_out(row: asyncpg.Record, aliases: list[str] | None = None) -> dict[str, Any]:
    return {
        "model": row["model"],
        "version": row["version"],
        "aliases": aliases or [],
        "metrics": json.loads(row["metrics"]),
        "primary_metric": row["primary_metric"],
        "decision": row["decision"],
        "created_at": row["created_at"].isoformat(),
        "run": {
            "job_id": row["job_id"],
            "params": json.loads(row["params"]),
            "seed": row["seed"],
            "code_version": row["code_version"],
            "training_rows": row["training_rows"],
            "champion_version": row["champion_version"],
            "champion_metrics": json.loads(row["champion_metrics"]) if row["champion_metrics"] else None,
            "rejudged": json.loads(row["rejudged"]) if row.get("rejudged") else None,
        },
        "lineage": {
            "dataset": row["dataset"],
            "dataset_version": row["dataset_version"],
            "trigger": row["trigger"],
            "trigger_event_id": str(row["trigger_event_id"]) if row["trigger_event_id"] else None,
            "source_event_id": str(row["source_event_id"]),
        },
        "artifact": json.loads(row["artifact"]),
        "profile": json.loads(row["profile"]),
        "schema": json.loads(row["schema"]),
        "onnx": onnx.model_dump(mode="json") if (onnx := onnx_export(row)) is not None else None,
        "runtime": runtime(onnx),
        "fairness": _loaded(row, "fairness"),
        "champion_fairness": _loaded(row, "champion_fairness"),
        "cards": _loaded(row, "cards"),
        "card_error": row.get("card_error"),
    }


def _loaded(row: asyncpg.Record, column: str) -> Any:
    """A JSON column of the row, None when unset (or not selected)."""
    raw = row.get(column)
    return json.loads(raw) if raw else None


async def keep_holdout(
    conn: Conn, model: str, version: int, holdout: ArtifactRef | None, row_sources: list[Source] | None
) -> None:
    """What a re-judgement needs: the holdout the version was scored on, and who supplied its rows."""
    await conn.execute(
        "UPDATE versions SET holdout = $3, row_sources = $4 WHERE model = $1 AND version = $2",
        model, version, holdout.model_dump_json() if holdout else None,
        json.dumps([s.model_dump(mode="json") for s in row_sources]) if row_sources is not None else None,
    )  # fmt: skip


async def version(conn: Conn, model: str, version: int) -> asyncpg.Record | None:
    """One version's row, read without locking it."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM versions WHERE model = $1 AND version = $2", model, version
    )
    return row


async def version_row(conn: Conn, model: str, version: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM versions WHERE model = $1 AND version = $2 FOR UPDATE", model, version)


async def record_rejudgement(
    conn: Conn, model: str, version: int, rejudgement: Rejudgement, decision: str | None = None
) -> None:
    """Keep the re-judged figures with the version (and its new decision, if one was made)."""
    await conn.execute(
        "UPDATE versions SET rejudged = $3, champion_version = $4, champion_metrics = $5, "
        "decision = coalesce($6, decision) WHERE model = $1 AND version = $2",
        model, version, rejudgement.model_dump_json(), rejudgement.champion_version,
        json.dumps(rejudgement.champion_metrics), decision,
    )  # fmt: skip


async def rejudgements(conn: Conn, model: str, version: int) -> int:
    """How many times the version's re-judgement was asked for already."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM audit WHERE model = $1 AND to_version = $2 AND action = 'rejudge-requested'",
        model, version,
    )  # fmt: skip
    return count


async def keep_alarm(conn: asyncpg.Connection, event: DriftDetected) -> None:
    """Remember an alarm and the sources of the labels behind it (a redelivery changes nothing)."""
    sources = None if event.label_sources is None else json.dumps([s.model_dump() for s in event.label_sources])
    await conn.execute(
        "INSERT INTO alarms (event_id, model, kinds, label_sources) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        event.event_id, event.model, event.kinds, sources,
    )  # fmt: skip


async def alarm_behind(conn: Conn, model: str, trigger_event_id: uuid.UUID | None) -> asyncpg.Record | None:
    """The alarm behind a drift retrain (kinds, label_sources): the one named by the trigger when it is
    an alarm, else the latest one raised since the current champion was promoted (a drift job is often
    queued later, by the rows that arrive after the alarm, and then names their event)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT kinds, label_sources FROM alarms WHERE event_id = $1 OR (model = $2 AND at >= coalesce("
        "(SELECT updated_at FROM aliases WHERE model = $2 AND alias = 'champion'), '-infinity')) "
        "ORDER BY event_id = $1 DESC, at DESC LIMIT 1",
        trigger_event_id, model,
    )  # fmt: skip
    return row


async def ensure_model(conn: Conn, model: str, dataset: str) -> None:
    await conn.execute("INSERT INTO models (name, dataset) VALUES ($1, $2) ON CONFLICT DO NOTHING", model, dataset)


async def lock_model(conn: asyncpg.Connection, model: str) -> None:
    """Serialise the changes to one model (version numbers, alias moves) until the transaction ends."""
    await conn.execute("SELECT 1 FROM models WHERE name = $1 FOR UPDATE", model)


async def model_exists(conn: Conn, model: str) -> bool:
    return await conn.fetchval("SELECT 1 FROM models WHERE name = $1", model) is not None


async def aliases_by_version(conn: Conn, model: str) -> dict[int, list[str]]:
    """Each version of ``model`` with the aliases pointing to it."""
    by_version: dict[int, list[str]] = {}
    for r in await conn.fetch("SELECT alias, version FROM aliases WHERE model = $1 ORDER BY alias", model):
        by_version.setdefault(r["version"], []).append(r["alias"])
    return by_version


async def models_out(conn: Conn) -> list[dict[str, Any]]:
    """Every model with its dataset, version count, aliases and the runtime serving its champion."""
    rows = await conn.fetch(
        "SELECT m.name, m.dataset, count(v.version) AS versions FROM models m "
        "LEFT JOIN versions v ON v.model = m.name GROUP BY m.name, m.dataset ORDER BY m.name"
    )
    aliases = await conn.fetch("SELECT model, alias, version FROM aliases")
    champions = await conn.fetch(
        "SELECT v.model, v.onnx FROM aliases a JOIN versions v ON v.model = a.model AND v.version = a.version "
        "WHERE a.alias = 'champion'"
    )
    runtimes = {c["model"]: runtime(onnx_export(c)) for c in champions}
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


async def versions(conn: Conn, model: str) -> list[asyncpg.Record]:
    """The versions of ``model``, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM versions WHERE model = $1 ORDER BY version DESC", model
    )
    return rows


async def audit_out(conn: Conn, model: str, limit: int) -> list[dict[str, Any]]:
    """The latest audit rows of ``model``, newest first."""
    rows = await conn.fetch("SELECT * FROM audit WHERE model = $1 ORDER BY id DESC LIMIT $2", model, limit)
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
