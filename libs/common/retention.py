"""Retention: how long driftloop keeps what piles up, and the pass that deletes the rest.

Every service with a database prunes its own schema every ``interval_s``: the rows
the shared migrations add (published outbox rows, processed-event ids, idempotency
keys) and the tables its spec names (:attr:`ServiceSpec.retention`: the monitor's
predictions, pending labels and reports, ingest's rejections). Rows go in batches of
``batch_rows`` (short transactions, no long lock), oldest first, and
``driftloop_retention_deleted_total{table}`` counts them.

What is never pruned: outbox rows not yet published, dataset versions and their
manifests, record keys (they are what refuses a row stored before), model versions,
aliases and the audit log. Unset a setting (``DRIFTLOOP_RETENTION_PREDICTIONS_DAYS=``)
to keep those rows for ever. docs/reliability.md ("Retention") says what each
setting trades.

The same pass collects the service's unreferenced artifacts (:func:`collect_artifacts`):
files in its own namespace of the store, of the kinds it writes (:class:`ArtifactUse`),
that nothing in its database names and that are older than ``artifacts_grace_s``: the
bytes of a request that failed or of a process killed between writing and committing,
a training job's files when the job failed or was cancelled, a compacted segment that
lost a race, and ingest's batch files superseded by compaction once
``superseded_batches_days`` have passed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.common.artifacts import ArtifactStore, StoredFile
from libs.common.telemetry import Telemetry

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0


class RetentionSettings(BaseSettings):
    """How long rows are kept, in days (``DRIFTLOOP_RETENTION_*``); None keeps them for ever."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_RETENTION_", extra="ignore")

    interval_s: float = Field(default=3600.0, gt=0)
    """How often a service prunes its schema (the first pass runs a minute after the start)."""
    batch_rows: int = Field(default=5000, ge=1)
    """Rows deleted per statement."""
    outbox_days: float | None = Field(default=7.0, gt=0)
    """Published outbox rows (unpublished ones are never deleted)."""
    processed_events_days: float | None = Field(default=14.0, gt=0)
    """Ids of consumed events: keep them longer than the topics keep messages (7 days),
    or a message redelivered after its id was pruned would be applied again."""
    idempotency_keys_days: float | None = Field(default=7.0, gt=0)
    """Idempotency keys: a retry after this gets a new effect instead of the first answer."""
    predictions_days: float | None = Field(default=30.0, gt=0)
    """The monitor's logged predictions and unmatched labels: a label arriving later is not scored."""
    reports_days: float | None = Field(default=90.0, gt=0)
    """The monitor's drift reports."""
    rejections_days: float | None = Field(default=30.0, gt=0)
    """Ingest's rejected rows and their reasons."""
    batch_jobs_days: float | None = Field(default=30.0, gt=0)
    """The trainer's finished batch jobs (succeeded, failed, cancelled), counted from their end; the
    output file of a succeeded one is collected with its row (GET /v1/batch-jobs/{id} is then a 404)."""
    artifacts_grace_s: float | None = Field(default=3600.0, gt=0)
    """Artifacts younger than this are never collected: a file is written before the database
    row naming it commits, so a young unreferenced file may be a write in flight. None: no
    artifact is ever collected."""
    superseded_batches_days: float | None = Field(default=30.0, gt=0)
    """Ingest's batch files that compaction merged into a larger segment are collected this
    long after their version: their rows stay in the merged segment, which later versions list,
    but the versions older than this can no longer be read from their own manifests (nor a
    training run on them repeated). None: kept for ever (every row is then stored twice)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Rows of ``table`` older than the setting ``keep`` (by ``column``) go; ``only`` narrows it."""

    table: str
    column: str
    keep: str
    """The :class:`RetentionSettings` field giving the days."""
    only: str = "true"

    def __post_init__(self) -> None:
        for name in (self.table, self.column):
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"not a plain SQL name: {name!r}")
        if self.keep not in RetentionSettings.model_fields or not self.keep.endswith("_days"):
            raise ValueError(f"no retention setting {self.keep!r}")


SHARED = (
    Rule("outbox", "sent_at", "outbox_days", only="sent_at IS NOT NULL"),
    Rule("processed_events", "processed_at", "processed_events_days"),
    Rule("idempotency_keys", "created_at", "idempotency_keys_days"),
)
"""Tables of the shared migrations, in every service schema."""


async def prune(pool: asyncpg.Pool, rules: tuple[Rule, ...], settings: RetentionSettings) -> dict[str, int]:
    """One pass: delete what ``rules`` no longer keep; rows deleted per table."""
    deleted: dict[str, int] = {}
    for rule in rules:
        days: float | None = getattr(settings, rule.keep)
        if days is None:
            continue
        total = 0
        while True:
            status: str = await pool.execute(
                f"DELETE FROM {rule.table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {rule.table} "
                f"WHERE {rule.column} < now() - make_interval(secs => $1) AND ({rule.only}) "
                f"ORDER BY {rule.column} LIMIT $2))",
                days * DAY_S,
                settings.batch_rows,
            )
            count = int(status.split()[-1])
            total += count
            if count < settings.batch_rows:
                break
        deleted[rule.table] = total
    return deleted


@dataclass(frozen=True, slots=True)
class ArtifactUse:
    """Which of a service's artifacts its GC may collect: files of the kinds it writes
    (``suffixes``; any other file, another engineer's new kind included, is left alone)
    that ``in_use`` (digests its database names) does not name."""

    suffixes: tuple[str, ...]
    in_use: Callable[[asyncpg.Pool, RetentionSettings], Awaitable[set[str]]]


async def collect_artifacts(
    store: ArtifactStore, use: ArtifactUse, pool: asyncpg.Pool, settings: RetentionSettings
) -> list[StoredFile]:
    """Delete the unreferenced artifacts of ``store``'s namespace older than the grace period; what was deleted.

    The store is listed before the database is asked: a file that a transaction references
    after the listing was young at the listing or is rewritten by ``put`` (which renews its
    time), and each file's time is checked again just before it goes.
    """
    if settings.artifacts_grace_s is None or not store.namespace:
        return []
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.artifacts_grace_s)
    listed = await asyncio.to_thread(store.files)
    old = [f for f in listed if f.modified < cutoff and f.digest is not None and f.suffix in use.suffixes]
    if not old:
        return []
    used = await use.in_use(pool, settings)
    doomed = [f for f in old if f.temporary or f.digest not in used]
    return [f for f in doomed if await asyncio.to_thread(store.remove_if_older, f, cutoff)]


class Pruner:
    """Runs :func:`prune` every ``settings.interval_s`` for one service's schema."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        rules: tuple[Rule, ...],
        settings: RetentionSettings,
        telemetry: Telemetry,
        *,
        first_after_s: float = 60.0,
        store: ArtifactStore | None = None,
        artifacts: ArtifactUse | None = None,
    ) -> None:
        self.pool = pool
        self.rules = rules
        self.settings = settings
        self.first_after_s = first_after_s
        self.store = store
        self.artifacts = artifacts
        self.deleted = Counter(
            "driftloop_retention_deleted_total",
            "Rows deleted by the retention pass (table 'artifacts': files the artifact GC deleted).", ["table"],
            registry=telemetry.registry,
        )  # fmt: skip

    async def run(self) -> None:
        await asyncio.sleep(self.first_after_s)
        while True:
            await self.once()
            await asyncio.sleep(self.settings.interval_s)

    async def once(self) -> dict[str, int]:
        try:
            deleted = await prune(self.pool, self.rules, self.settings)
            if self.store is not None and self.artifacts is not None:
                collected = await collect_artifacts(self.store, self.artifacts, self.pool, self.settings)
                deleted["artifacts"] = len(collected)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("retention pass failed, next try in %.0fs: %r", self.settings.interval_s, exc)
            return {}
        for table, count in deleted.items():
            self.deleted.labels(table).inc(count)
        if any(deleted.values()):
            log.info("retention pass deleted %s", {t: n for t, n in deleted.items() if n})
        return deleted
