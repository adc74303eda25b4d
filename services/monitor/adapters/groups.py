"""PostgreSQL access of the live group window: labelled served predictions with their groups."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from services.monitor.adapters.repository import Conn
from services.monitor.domain.groups import Labelled


async def store(conn: asyncpg.Connection, model: str, rows: list[tuple[str, int, Any, Any, dict[str, str]]]) -> None:
    """Keep labelled predictions (request id, version, prediction, label, groups); a redelivery adds nothing."""
    await conn.executemany(
        "INSERT INTO group_outcomes (model, version, request_id, prediction, label, groups) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        [(model, version, rid, json.dumps(p), json.dumps(label), json.dumps(g)) for rid, version, p, label, g in rows],
    )  # fmt: skip


async def window(conn: Conn, model: str, version: int, limit: int) -> list[Labelled]:
    """The latest ``limit`` labelled predictions ``version`` served, newest first."""
    rows = await conn.fetch(
        "SELECT prediction, label, groups FROM group_outcomes WHERE model = $1 AND version = $2 "
        "ORDER BY at DESC LIMIT $3",
        model, version, limit,
    )  # fmt: skip
    return [Labelled(json.loads(r["prediction"]), json.loads(r["label"]), json.loads(r["groups"])) for r in rows]
