"""Retention against real PostgreSQL: old rows go in batches, what must stay stays."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from libs.common import retention
from libs.common.retention import RetentionSettings
from services.ingest import app as ingest
from services.ingest.settings import IngestSettings
from services.monitor import app as monitor
from services.monitor.settings import MonitorSettings
from tests.conftest import Isolation, serve

pytestmark = pytest.mark.integration

OLD = "now() - interval '40 days'"


async def _outbox(pool: asyncpg.Pool, *, at: str, sent: bool, n: int = 1) -> None:
    for _ in range(n):
        await pool.execute(
            f"INSERT INTO outbox (topic, payload, created_at, sent_at) VALUES ('t', 'x', {at}, "
            f"{at if sent else 'NULL'})"
        )


async def test_old_rows_of_the_shared_tables_go_and_the_rest_stays(pool: asyncpg.Pool) -> None:
    await _outbox(pool, at=OLD, sent=True, n=7)
    await _outbox(pool, at=OLD, sent=False)  # never published: never pruned, however old
    await _outbox(pool, at="now()", sent=True)
    for at in (OLD, OLD, "now()"):
        await pool.execute(f"INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ('c', $1, {at})",
                           uuid.uuid4())  # fmt: skip
        await pool.execute(
            f"INSERT INTO idempotency_keys (scope, key, fingerprint, created_at) VALUES ('s', $1, 'f', {at})",
            uuid.uuid4().hex,
        )
    settings = RetentionSettings(batch_rows=2)  # several statements per table

    deleted = await retention.prune(pool, retention.SHARED, settings)

    assert deleted == {"outbox": 7, "processed_events": 2, "idempotency_keys": 2}
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    assert await retention.prune(pool, retention.SHARED, settings) == {
        "outbox": 0, "processed_events": 0, "idempotency_keys": 0,
    }  # fmt: skip


async def test_an_unset_setting_keeps_rows_for_ever(pool: asyncpg.Pool) -> None:
    await _outbox(pool, at=OLD, sent=True)
    kept = RetentionSettings(outbox_days=None)
    assert "outbox" not in await retention.prune(pool, retention.SHARED, kept)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


def test_a_rule_names_a_real_setting_and_plain_sql_names() -> None:
    with pytest.raises(ValueError, match="no retention setting"):
        retention.Rule("outbox", "sent_at", "outbox_hours")
    with pytest.raises(ValueError, match="not a plain SQL name"):
        retention.Rule("outbox; DROP TABLE x", "sent_at", "outbox_days")


async def test_the_monitor_and_ingest_prune_their_own_tables(isolated: Isolation) -> None:
    """The rules the services declare match their migrations (tables, columns)."""
    for module, settings in (
        (monitor, isolated.settings(MonitorSettings)),
        (ingest, isolated.settings(IngestSettings)),
    ):
        app, rt = module.create_app(settings)
        rules = module.spec(settings).retention
        async with serve(app):
            if module is monitor:
                await rt.db.execute(
                    f"INSERT INTO predictions (request_id, model, version, prediction, at) VALUES "
                    f"('old', 'm', 1, '1', {OLD}), ('new', 'm', 1, '1', now())"
                )
            deleted = await retention.prune(rt.db, retention.SHARED + rules, RetentionSettings())
            assert set(deleted) == {"outbox", "processed_events", "idempotency_keys"} | {r.table for r in rules}
            if module is monitor:
                assert deleted["predictions"] == 1
                assert await rt.db.fetchval("SELECT request_id FROM predictions") == "new"
