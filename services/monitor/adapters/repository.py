"""PostgreSQL access of the monitor: references, predictions awaiting labels, reports and alarms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, repeat
from typing import Any, TypeAlias

import asyncpg
import orjson

from libs.common.events import ArtifactRef, LabelsArrived, ModelPromoted
from libs.common.logged import LoggedPredictions
from libs.common.schema import DatasetSchema
from services.monitor.domain.decision import WindowReport

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True, slots=True)
class Reference:
    """The version a model is monitored at, with what its monitor is built from."""

    version: int
    dataset: str | None
    profile: ArtifactRef
    schema: DatasetSchema


@dataclass(frozen=True, slots=True)
class EarlyLabel:
    """A label that arrived before its prediction, now matched."""

    request_id: str
    label: Any
    source: tuple[str, bool] | None
    attributes: dict[str, Any] | None = None
    """Sensitive attributes sent with the label (not model inputs)."""


async def monitored_reference(conn: Conn, model: str) -> Reference | None:
    """The reference of the version ``model`` is monitored at, or None before its first promotion."""
    row = await conn.fetchrow(
        "SELECT r.version, r.dataset, r.profile, r.schema FROM monitored m JOIN reference_profiles r "
        "ON r.model = m.model AND r.version = m.version WHERE m.model = $1",
        model,
    )
    if row is None:
        return None
    return Reference(
        row["version"], row["dataset"], ArtifactRef.model_validate_json(row["profile"]),
        DatasetSchema.model_validate_json(row["schema"]),
    )  # fmt: skip


async def monitor_version(conn: asyncpg.Connection, event: ModelPromoted) -> int:
    """Store the promoted version's reference and make it the monitored version; return that version."""
    await conn.execute(
        "INSERT INTO reference_profiles (model, version, dataset, profile, schema, metrics) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model, version) DO NOTHING",
        event.model, event.version, event.dataset, event.profile.model_dump_json(),
        event.dataset_schema.model_dump_json(), json.dumps(event.metrics),
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO monitored (model, version) VALUES ($1, $2) "
        "ON CONFLICT (model) DO UPDATE SET version = $2, updated_at = now()",
        event.model, event.version,
    )  # fmt: skip
    return event.version


async def lock_labels(conn: asyncpg.Connection, models: list[str]) -> None:
    """Hold, until the transaction ends, the lock that orders label matching for ``models``.

    Labels and predictions arrive on two topics, read by two consumers (or replicas) at once. Without
    it, a label whose prediction is being stored in a concurrent, uncommitted transaction would be
    parked, and that transaction, not seeing the parked label, would never match it. Taken in name
    order, so two transactions never wait for each other crosswise.
    """
    for model in sorted(set(models)):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('driftloop.monitor.labels:' || $1, 0))",
                           model)  # fmt: skip


async def label_predictions(conn: asyncpg.Connection, model: str, request_ids: list[str]) -> list[asyncpg.Record]:
    """Mark the unlabelled predictions among ``request_ids`` labelled; their request_id, version, prediction
    and the groups of their sensitive inputs (``sensitive``, None when the model has none)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "UPDATE predictions SET labelled = true WHERE request_id = ANY($1::text[]) AND model = $2 "
        "AND NOT labelled RETURNING request_id, version, prediction, sensitive",
        request_ids, model,
    )  # fmt: skip
    return rows


async def park_labels(
    conn: asyncpg.Connection, event: LabelsArrived, request_ids: list[str], labels: dict[str, Any]
) -> list[str]:
    """Park labels whose prediction has not arrived yet; return those parked (not repeats)."""
    labelled = await conn.fetch(
        "SELECT request_id FROM predictions WHERE request_id = ANY($1::text[]) AND model = $2 AND labelled",
        request_ids, event.model,
    )  # fmt: skip
    done = {r["request_id"] for r in labelled}
    fresh = [rid for rid in request_ids if rid not in done]
    if not fresh:
        return []
    attributes = {item.request_id: item.attributes for item in event.labels if item.attributes}
    parked = await conn.fetch(
        "INSERT INTO pending_labels (request_id, model, label, principal, trusted, attributes) "
        "SELECT r, $2, l, $4, $5, a FROM unnest($1::text[], $3::jsonb[], $6::jsonb[]) AS u (r, l, a) "
        "ON CONFLICT DO NOTHING RETURNING request_id",
        fresh, event.model, [json.dumps(labels[rid]) for rid in fresh], event.principal, event.trusted,
        [json.dumps(attributes[rid]) if rid in attributes else None for rid in fresh],
    )  # fmt: skip
    return [r["request_id"] for r in parked]


async def forget_parked_labels(conn: asyncpg.Connection, older_than_s: float) -> None:
    """Drop parked labels whose prediction never arrived."""
    await conn.execute("DELETE FROM pending_labels WHERE at < now() - make_interval(secs => $1)", older_than_s)


async def store_predictions(
    conn: asyncpg.Connection,
    batches: Sequence[LoggedPredictions],
    sensitive: Sequence[list[dict[str, str] | None] | None] | None = None,
) -> list[EarlyLabel]:
    """Keep the predictions of ``batches`` for label matching, each with the groups of its sensitive inputs
    (``sensitive``: per batch, one per record when the model declares any, else None); return the parked
    labels they answer (now matched). One COPY for every batch, its rows zipped from the columns, and one
    look for parked labels per model."""
    groups = sensitive or [None] * len(batches)
    rows = chain.from_iterable(
        zip(b.request_ids, repeat(b.model), repeat(b.version), jsonb_texts(b.predictions), b.at,
            [json.dumps(g) if g is not None else None for g in s] if s else repeat(None))
        for b, s in zip(batches, groups, strict=True)
    )  # fmt: skip
    await conn.copy_records_to_table(
        "predictions", columns=["request_id", "model", "version", "prediction", "at", "sensitive"], records=rows
    )
    by_model: dict[str, list[str]] = {}
    for b in batches:
        by_model.setdefault(b.model, []).extend(b.request_ids)
    early = []
    for model, request_ids in by_model.items():
        early += await conn.fetch(
            "DELETE FROM pending_labels WHERE request_id = ANY($1::text[]) AND model = $2 "
            "RETURNING request_id, label, principal, trusted, attributes",
            request_ids, model,
        )  # fmt: skip
    if early:
        await conn.execute(
            "UPDATE predictions SET labelled = true WHERE request_id = ANY($1::text[])",
            [r["request_id"] for r in early],
        )
    return [
        EarlyLabel(r["request_id"], json.loads(r["label"]), _source(r), json.loads(r["attributes"] or "null"))
        for r in early
    ]


def jsonb_texts(values: Sequence[Any]) -> list[str]:
    """Values as the JSON text of a ``jsonb`` column: orjson, a tenth of ``json.dumps``'s cost a value (the
    same document to PostgreSQL; NaN and infinities, which JSON has no word for, are written as null)."""
    return [orjson.dumps(v).decode() for v in values]


def _source(row: asyncpg.Record) -> tuple[str, bool] | None:
    """Who sent a parked label (principal, trusted); None when not recorded."""
    return (row["principal"], bool(row["trusted"])) if row["principal"] is not None else None


async def store_report(
    conn: asyncpg.Connection,
    model: str,
    version: int,
    report: WindowReport,
    histograms: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Store a judged window; ``histograms`` (its counts beside the reference's) are what the drift report draws."""
    await store_reports(conn, [(model, version, report, histograms)])


async def store_reports(
    conn: asyncpg.Connection, judged: Sequence[tuple[str, int, WindowReport, dict[str, Any] | None]]
) -> None:
    """Store judged windows (model, version, report, histograms), one statement for all."""
    await conn.executemany(
        "INSERT INTO reports (model, version, flagged, report) VALUES ($1, $2, $3, $4)",
        [(model, version, report.flagged, _report_json(report, histograms)) for model, version, report, histograms
         in judged],
    )  # fmt: skip


def _report_json(report: WindowReport, histograms: dict[str, dict[str, Any]] | None) -> str:
    """A report's JSON as stored: orjson, as ``json.dumps(default=str)`` wrote it, but NaN and infinities
    (a statistic of a constant feature, say) written as null, which PostgreSQL's ``jsonb`` takes."""
    body = report.to_dict() if histograms is None else {**report.to_dict(), "histograms": histograms}
    return orjson.dumps(body, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A judged window as stored: when, for which version, and its report (``WindowReport.to_dict``)."""

    at: datetime
    version: int
    flagged: bool
    report: dict[str, Any]


async def recent_reports(conn: Conn, model: str, limit: int) -> list[StoredReport]:
    """The latest ``limit`` window reports of ``model``, oldest first."""
    rows = await conn.fetch(
        "SELECT at, version, flagged, report FROM reports WHERE model = $1 ORDER BY id DESC LIMIT $2", model, limit
    )
    return [StoredReport(r["at"], r["version"], r["flagged"], json.loads(r["report"])) for r in reversed(rows)]


async def store_alarm(
    conn: asyncpg.Connection, model: str, version: int, event_id: Any, kinds: list[str], summary: str
) -> None:
    await conn.execute(
        "INSERT INTO alarms (model, version, event_id, kinds, summary) VALUES ($1, $2, $3, $4, $5)",
        model, version, event_id, kinds, summary,
    )  # fmt: skip


async def recent_alarms(conn: Conn, model: str, limit: int = 20) -> list[dict[str, Any]]:
    """The latest alarms of ``model``, newest first."""
    rows = await conn.fetch(
        "SELECT event_id, version, kinds, summary, at FROM alarms WHERE model = $1 ORDER BY id DESC LIMIT $2",
        model, limit,
    )  # fmt: skip
    return [
        {"event_id": str(a["event_id"]), "version": a["version"], "kinds": list(a["kinds"]), "summary": a["summary"],
         "at": a["at"].isoformat()}
        for a in rows
    ]  # fmt: skip
