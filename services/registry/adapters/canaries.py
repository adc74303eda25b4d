"""PostgreSQL access of canary releases: the canaries table and clearing an alias."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from libs.common import outbox
from libs.common.events import AliasMove
from services.registry.adapters import repository
from services.registry.adapters.repository import Conn


async def start(
    conn: asyncpg.Connection, model: str, version: int, share: float, judged: bool, deadline: datetime
) -> None:
    """Record the canary (a new version restarts its clock; the same version only changes share or mode)."""
    replaced = await conn.fetchval("SELECT version FROM canaries WHERE model = $1", model)
    if replaced is not None and replaced != version:
        await settle(conn, model, replaced)
    await conn.execute(
        "INSERT INTO canaries (model, version, share, judged, deadline) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (model) DO UPDATE SET share = $3, judged = $4, "
        "started_at = CASE WHEN canaries.version = $2 THEN canaries.started_at ELSE now() END, "
        "deadline = CASE WHEN canaries.version = $2 THEN canaries.deadline ELSE $5 END, "
        "last = CASE WHEN canaries.version = $2 THEN canaries.last END, version = $2",
        model, version, share, judged, deadline,
    )  # fmt: skip


async def current(conn: Conn, model: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM canaries WHERE model = $1", model)
    return row


async def released_by_policy(conn: Conn, model: str) -> int | None:
    """The version of the model's running canary when the promotion policy released it and the canary
    policy judges it (its decision is still "canary"), else None: a canary set by hand is left alone."""
    version: int | None = await conn.fetchval(
        "SELECT c.version FROM canaries c JOIN versions v ON v.model = c.model AND v.version = c.version "
        "WHERE c.model = $1 AND c.judged AND v.decision = 'canary'",
        model,
    )  # fmt: skip
    return version


async def all_current(conn: Conn) -> dict[str, dict[str, Any]]:
    """Every running canary: model → share, judged, started_at, deadline and the last comparison."""
    rows = await conn.fetch("SELECT * FROM canaries")
    return {r["model"]: out(r) for r in rows}


def out(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "version": r["version"], "share": r["share"], "judged": r["judged"],
        "started_at": r["started_at"].isoformat(), "deadline": r["deadline"].isoformat(),
        "last_comparison": json.loads(r["last"]) if r["last"] else None,
    }  # fmt: skip


async def remember(conn: asyncpg.Connection, model: str, figures: dict[str, Any]) -> None:
    await conn.execute("UPDATE canaries SET last = $2 WHERE model = $1", model, json.dumps(figures))


async def clear(
    conn: asyncpg.Connection, model: str, alias: str, *, action: str, actor: str, reason: str,
    correlation_id: str | None = None,
) -> int | None:  # fmt: skip
    """Remove ``alias`` (canary or shadow): alias row, audit row and ``model.promoted`` to no version, in
    the caller's transaction. Returns the version it pointed to (None: it pointed nowhere, nothing done)."""
    previous = await conn.fetchval(
        "DELETE FROM aliases WHERE model = $1 AND alias = $2 RETURNING version", model, alias
    )
    if alias == "canary":
        await conn.execute("DELETE FROM canaries WHERE model = $1", model)
    if previous is None:
        return None
    if alias == "canary":
        await settle(conn, model, previous)
    row = await repository.version(conn, model, previous)
    assert row is not None  # an alias always points to a registered version
    await repository.audit(conn, model, action, actor, reason, alias, previous, None)
    event = repository.promoted_event(row, alias, previous, actor=actor, reason=reason, correlation_id=correlation_id)
    await outbox.add(conn, event.model_copy(update={"move": AliasMove(alias=alias, from_version=previous,
                                                                           to_version=None)}))  # fmt: skip
    return int(previous)


async def settle(conn: asyncpg.Connection, model: str, version: int) -> None:
    """Settle the decision of a version the promotion policy released as a canary, now that its canary has
    ended: "promoted" if it became the champion, "rolled-back" otherwise (the canary policy, a deadline or a
    person ended it, or another canary replaced it). A version registered with any other decision keeps it:
    a canary set by hand is not the promotion policy's outcome."""
    await conn.execute(
        "UPDATE versions SET decision = CASE WHEN EXISTS (SELECT 1 FROM aliases WHERE model = $1 AND "
        "alias = 'champion' AND version = $2) THEN 'promoted' ELSE 'rolled-back' END "
        "WHERE model = $1 AND version = $2 AND decision = 'canary'",
        model, version,
    )  # fmt: skip


async def past_deadline(conn: Conn, now: datetime) -> list[str]:
    """Models whose judged canary has passed its deadline."""
    rows = await conn.fetch("SELECT model FROM canaries WHERE judged AND deadline <= $1", now)
    return [r["model"] for r in rows]
