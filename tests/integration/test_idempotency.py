"""Idempotency-Key on the mutating edges, on the real stack: a retry gets the first
answer and stores nothing; the same key with another body is a 409; a failed
request leaves no artifact behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import parse_event
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from services.serving.app import create_app as serving_app
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, serve
from tests.factories import promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_hardening import assert_error
from tests.integration.test_ingest import SCHEMA, _row
from tests.integration.test_registry import _has, trained
from tests.integration.test_serving import instances
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


async def test_a_retried_submission_is_stored_once(isolated: Isolation) -> None:
    # a burst of 16 rows, hardly refilled: what the requests below spend, and then too little for 5 more
    app, runtime = ingest_app(isolated.settings(IngestSettings, records_rate_per_s=0.01, records_burst=16))
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        url = "/v1/datasets/customers/records"
        rows = [_row(age=20 + i) for i in range(5)]
        first = await client.post(url, json=rows, headers={"Idempotency-Key": "batch-1"})
        retry = await client.post(url, json=rows, headers={"Idempotency-Key": "batch-1"})
        assert first.status_code == retry.status_code == 200
        assert retry.json() == first.json()  # the original answer, submission id included
        assert retry.headers["idempotent-replayed"] == "true"
        assert_error(await client.post(url, json=rows[:4], headers={"Idempotency-Key": "batch-1"}), 409, "batch-1")

        racing = await asyncio.gather(
            *(client.post(url, json=[_row(age=60)], headers={"Idempotency-Key": "batch-2"}) for _ in range(4))
        )
        assert {a.status_code for a in racing} == {200}
        assert len({a.json()["submission_id"] for a in racing}) == 1
        assert (await client.post(url, json=rows)).json()["version"] == 3  # no key: stored again, as asked

        shown = (await client.get("/v1/datasets/customers")).json()
        assert shown["version"] == 3
        assert shown["records"]["received"] == 11  # 5 + 1 + 5: the retries stored nothing
        assert await runtime.db.fetchval("SELECT count(*) FROM submissions") == 3

        # 14 of 16 rows are spent: a retry is answered from the stored answer, before its rows would be
        # charged again (it was a 429); a new request of 5 rows is charged, and refused
        late = await client.post(url, json=rows, headers={"Idempotency-Key": "batch-1"})
        assert (late.status_code, late.json()) == (200, first.json())
        assert (await client.post(url, json=rows, headers={"Idempotency-Key": "batch-3"})).status_code == 429


async def test_a_failed_submission_leaves_no_artifact(isolated: Isolation) -> None:
    app, runtime = ingest_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        # the last statement of a submission fails, after its Parquet batch and manifest were written
        await runtime.db.execute("ALTER TABLE submissions ADD CONSTRAINT refuse_all CHECK (received < 0) NOT VALID")
        with pytest.raises(asyncpg.CheckViolationError):  # a 500 to a client; the test transport re-raises it
            await client.post("/v1/datasets/customers/records", json=[_row()])
        assert artifact_files(isolated.artifacts_root) == []
        await runtime.db.execute("ALTER TABLE submissions DROP CONSTRAINT refuse_all")
        stored = await client.post("/v1/datasets/customers/records", json=[_row()])
        assert stored.json()["version"] == 1


def artifact_files(root: str) -> list[Path]:
    return [p for p in Path(root.removeprefix("file://")).rglob("*") if p.is_file()]


async def test_an_alias_move_retried_is_audited_once(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    app, runtime = registry_app(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    async with serve(app) as client:
        await publish(isolated, trained(store, 0.7), trained(store, 0.8, 0.7, 1))
        await wait_until(lambda: _has(client, 2), message="v2")
        url = "/v1/models/churn/aliases/champion"
        move = {"version": 1, "reason": "roll back v2", "actor": "alice"}
        answers = [await client.put(url, json=move, headers={"Idempotency-Key": "rb-1"}) for _ in range(3)]
        assert [a.json()["from_version"] for a in answers] == [2, 2, 2]
        assert_error(await client.put(url, json={**move, "version": 2}, headers={"Idempotency-Key": "rb-1"}), 409)
        rollbacks = await runtime.db.fetchval("SELECT count(*) FROM audit WHERE reason = 'roll back v2'")
        assert rollbacks == 1
        outbox = await runtime.db.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", topics.MODEL_PROMOTED)
        assert outbox == 3  # v1 and v2 promoted by policy, one manual move


async def test_retried_feedback_publishes_one_event_id(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    app, _ = serving_app(isolated.settings(ServingSettings, registry_url="http://127.0.0.1:9"))
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, trained_model(store, rows=600)))

        async def served() -> bool:
            return (await client.get("/v1/models/churn")).status_code == 200

        await wait_until(served, message="v1 to be served")
        served_ids = await client.post("/v1/models/churn/predict", json={"instances": instances(2)})
        r1, r2 = (p["request_id"] for p in served_ids.json()["predictions"])
        body = {"model": "churn", "labels": [{"request_id": r1, "label": "yes"}, {"request_id": r2, "label": "no"}]}
        for _ in range(2):
            assert (
                await client.post("/v1/feedback", json=body, headers={"Idempotency-Key": "fb-1"})
            ).status_code == 202
        other = {**body, "labels": body["labels"][:1]}
        assert_error(await client.post("/v1/feedback", json=other, headers={"Idempotency-Key": "fb-1"}), 409)
        bad = {"model": "churn", "labels": [{"request_id": r1, "label": "maybe"}]}
        assert_error(await client.post("/v1/feedback", json=bad), 422, "labels.0.label")
    published = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.LABELS_ARRIVED), expect=1)
    assert len({parse_event(r.value).event_id for r in published}) == 1
