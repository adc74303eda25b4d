"""PostgreSQL access of live metrics per version: shadow predictions, scored labels, canary and shadow."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import asyncpg

from libs.common.events import ModelCompared
from libs.common.logged import LoggedPredictions
from services.monitor.adapters.repository import Conn, jsonb_texts
from services.monitor.domain.comparison import Sample, VersionComparison, paired, unpaired

Scorer = Callable[[Any, Any], float | None]
"""(prediction, label) → the score (1/0 correct, or the squared error); None when it cannot be scored."""


@dataclass(frozen=True)
class LiveVersion:
    alias: str
    version: int
    since: Any
    compared: int
    """The challenger's label count when its last comparison was published."""


async def store_shadow(conn: asyncpg.Connection, batch: LoggedPredictions) -> None:
    """Keep a shadow's predictions until labels for their request ids arrive (a redelivery adds nothing)."""
    await conn.executemany(
        "INSERT INTO shadow_predictions (request_id, model, version, prediction, at) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT DO NOTHING",
        list(zip(batch.request_ids, repeat(batch.model), repeat(batch.version), jsonb_texts(batch.predictions),
                 batch.at)),
    )  # fmt: skip


async def score_served(
    conn: asyncpg.Connection, model: str, matched: list[tuple[str, int, Any, Any]], score: Scorer
) -> None:
    """Score the labelled predictions (request id, version, prediction, label) of the versions that answered."""
    rows = [(model, version, rid, json.dumps(label), s) for rid, version, prediction, label in matched
            if (s := score(prediction, label)) is not None]  # fmt: skip
    await conn.executemany(
        "INSERT INTO outcomes (model, version, request_id, shadow, label, score) VALUES ($1, $2, $3, false, $4, $5) "
        "ON CONFLICT DO NOTHING",
        rows,
    )  # fmt: skip


async def score_shadows(conn: asyncpg.Connection, model: str, request_ids: list[str], score: Scorer) -> int:
    """Score the shadow predictions among ``request_ids`` whose served prediction is labelled (whichever came
    last, label or shadow prediction, calls this); returns how many were scored."""
    rows = await conn.fetch(
        "SELECT s.request_id, s.version, s.prediction, o.label FROM shadow_predictions s "
        "JOIN outcomes o ON o.request_id = s.request_id AND o.model = s.model AND NOT o.shadow "
        "WHERE s.request_id = ANY($1::text[]) AND s.model = $2",
        request_ids, model,
    )  # fmt: skip
    scored = [(model, r["version"], r["request_id"], r["label"], s) for r in rows
              if (s := score(json.loads(r["prediction"]), json.loads(r["label"]))) is not None]  # fmt: skip
    await conn.executemany(
        "INSERT INTO outcomes (model, version, request_id, shadow, label, score) VALUES ($1, $2, $3, true, $4, $5) "
        "ON CONFLICT DO NOTHING",
        scored,
    )  # fmt: skip
    return len(scored)


async def set_live(conn: asyncpg.Connection, model: str, alias: str, version: int | None) -> None:
    """The model's canary or shadow moved (None: cleared); a new version starts a fresh comparison."""
    if version is None:
        await conn.execute("DELETE FROM live_versions WHERE model = $1 AND alias = $2", model, alias)
        return
    await conn.execute(
        "INSERT INTO live_versions (model, alias, version) VALUES ($1, $2, $3) ON CONFLICT (model, alias) DO UPDATE "
        "SET since = CASE WHEN live_versions.version = $3 THEN live_versions.since ELSE now() END, "
        "compared = CASE WHEN live_versions.version = $3 THEN live_versions.compared ELSE 0 END, version = $3",
        model, alias, version,
    )  # fmt: skip


async def live(conn: Conn, model: str) -> list[LiveVersion]:
    rows = await conn.fetch("SELECT * FROM live_versions WHERE model = $1 ORDER BY alias", model)
    return [LiveVersion(r["alias"], r["version"], r["since"], r["compared"]) for r in rows]


async def mark_compared(conn: asyncpg.Connection, model: str, alias: str, labels: int) -> None:
    await conn.execute("UPDATE live_versions SET compared = $3 WHERE model = $1 AND alias = $2", model, alias, labels)


def _sample(row: asyncpg.Record | None, prefix: str = "") -> Sample:
    if row is None or not row[f"{prefix}n"]:
        return Sample(0, 0.0, 0.0)
    return Sample(row[f"{prefix}n"], float(row[f"{prefix}total"]), float(row[f"{prefix}squares"]))


async def served_sample(conn: Conn, model: str, version: int, since: Any) -> Sample:
    """Scores of the requests ``version`` answered, labelled since ``since``."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, sum(score) AS total, sum(score * score) AS squares FROM outcomes "
        "WHERE model = $1 AND version = $2 AND NOT shadow AND at >= $3",
        model, version, since,
    )  # fmt: skip
    return _sample(row)


async def paired_samples(
    conn: Conn, model: str, shadow: int, champion: int, since: Any
) -> tuple[Sample, Sample, Sample]:
    """The shadow's and the champion's scores on the same requests, and their differences per request."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, sum(s.score) AS total, sum(s.score * s.score) AS squares, "
        "count(*) AS c_n, sum(c.score) AS c_total, sum(c.score * c.score) AS c_squares, "
        "count(*) AS d_n, sum(s.score - c.score) AS d_total, sum((s.score - c.score) ^ 2) AS d_squares "
        "FROM outcomes s JOIN outcomes c ON c.request_id = s.request_id AND c.model = s.model "
        "AND c.version = $3 AND NOT c.shadow WHERE s.model = $1 AND s.version = $2 AND s.shadow AND s.at >= $4",
        model, shadow, champion, since,
    )  # fmt: skip
    return _sample(row), _sample(row, "c_"), _sample(row, "d_")


async def per_version(conn: Conn, model: str) -> list[dict[str, Any]]:
    """Every version with labelled predictions: labels scored and their mean score, served and shadow apart."""
    rows = await conn.fetch(
        "SELECT version, shadow, count(*) AS labels, avg(score) AS mean FROM outcomes WHERE model = $1 "
        "GROUP BY version, shadow ORDER BY version DESC, shadow",
        model,
    )  # fmt: skip
    return [{"version": r["version"], "shadow": r["shadow"], "labels": r["labels"], "mean": float(r["mean"])}
            for r in rows]  # fmt: skip


async def compare(
    conn: Conn, model: str, challenger: LiveVersion, champion: int, classification: bool
) -> VersionComparison | None:
    """The challenger against ``champion`` since the challenger took its alias: paired for a shadow (the
    same requests), unpaired for a canary (each on its own requests)."""
    if challenger.alias == "shadow":
        mine, theirs, differences = await paired_samples(conn, model, challenger.version, champion, challenger.since)
        return paired(classification, mine, theirs, differences)
    mine = await served_sample(conn, model, challenger.version, challenger.since)
    return unpaired(classification, mine, await served_sample(conn, model, champion, challenger.since))


async def due_comparisons(
    conn: asyncpg.Connection, model: str, champion: int, classification: bool, every: int
) -> list[ModelCompared]:
    """The comparisons to publish: the canary's (and the shadow's) against ``champion``, each once its
    challenger has ``every`` more labels than at its last one; marked as published."""
    events = []
    for challenger in await live(conn, model):
        if challenger.version == champion:
            continue
        result = await compare(conn, model, challenger, champion, classification)
        if result is None or result.challenger_labels - challenger.compared < every:
            continue
        await mark_compared(conn, model, challenger.alias, result.challenger_labels)
        events.append(ModelCompared(
            producer="monitor", model=model, alias=challenger.alias, version=challenger.version,
            champion_version=champion, **result.to_dict(),
        ))  # fmt: skip
    return events


async def comparisons(conn: Conn, model: str, champion: int, classification: bool) -> dict[str, dict[str, Any]]:
    """The canary's and shadow's current comparison with ``champion`` (for the API), by alias."""
    out: dict[str, dict[str, Any]] = {}
    for challenger in await live(conn, model):
        result = await compare(conn, model, challenger, champion, classification)
        out[challenger.alias] = {"version": challenger.version, "since": challenger.since.isoformat(),
                                 "comparison": result.to_dict() if result is not None else None}  # fmt: skip
    return out
