"""The ingest service on the real stack: schemas, validation, versions, events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest, read_batches
from libs.common.events import DataArrived, RecordsSubmitted, parse_event
from libs.common.kafka import BrokerPublisher, create_broker
from libs.common.settings import TelemetrySettings
from libs.common.telemetry import setup_telemetry
from services.ingest.app import create_app
from services.ingest.domain import quarantine
from services.ingest.settings import IngestSettings
from tests.conftest import Isolation, serve
from tests.helpers import outbox_drained, read_topic, wait_until

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "services" / "ingest" / "migrations"

SCHEMA: dict[str, Any] = {
    "features": [
        {"name": "age", "dtype": "numeric", "min": 18, "max": 100},
        {"name": "plan", "dtype": "categorical", "categories": ["basic", "pro"]},
        {"name": "visits", "dtype": "integer", "nullable": True},
    ],
    "target": {"name": "churned", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
}


def _row(age: Any = 30, plan: Any = "basic", visits: Any = 3, churned: Any = "no") -> dict[str, Any]:
    return {"age": age, "plan": plan, "visits": visits, "churned": churned}


async def test_declare_submit_and_version(isolated: Isolation) -> None:
    settings = isolated.settings(IngestSettings)
    app, runtime = create_app(settings)
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 200
        rows = [_row(age=20 + i) for i in range(5)] + [
            _row(age=12),  # below the minimum
            _row(plan="gold"),  # closed category
            {"age": 40, "plan": "pro", "churned": "yes"},  # nullable column may be absent
            {"age": 40, "plan": "pro", "churned": "yes"},  # identical to the previous row: data all the same
            _row(age="41"),  # a string is not a number in JSON
            {"plan": "pro", "churned": "no"},  # missing feature
        ]
        answer = await client.post("/v1/datasets/customers/records", json=rows)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["received"], body["accepted"], body["rejected"], body["version"]) == (11, 7, 4, 1)
        reasons = {r["row"]: (r["field"], r["reason"]) for r in body["rejections"]}
        assert reasons[5] == ("age", "age: 12.0 is below the minimum 18.0")
        assert reasons[6][0] == "plan"
        assert "unknown category 'gold'" in reasons[6][1]
        assert 8 not in reasons  # no key declared: identical rows are repeated observations
        assert reasons[9] == ("age", "age: expected a number, got a string")
        assert reasons[10] == ("age", "age: missing column")

        csv_body = "age,plan,visits,churned\n55,pro,,yes\n61,basic,2,no\n"
        answer = await client.post(
            "/v1/datasets/customers/records", content=csv_body, headers={"content-type": "text/csv"}
        )
        assert answer.json()["version"] == 2
        assert answer.json()["total_rows"] == 9

        shown = (await client.get("/v1/datasets/customers")).json()
        assert shown["records"] == {"received": 13, "accepted": 9, "rejected": 4}
        stored = (await client.get("/v1/datasets/customers/rejections")).json()
        assert stored["total"] == 4
        assert {r["row"] for r in stored["rejections"]} == {5, 6, 9, 10}
        await outbox_drained(runtime.db)

    # data.arrived went out through the outbox, one per version, with a verifiable manifest.
    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.DATA_ARRIVED), expect=2)
    arrived = sorted((parse_event(r.value) for r in records), key=lambda e: e.version)  # type: ignore[attr-defined]
    assert [e.version for e in arrived if isinstance(e, DataArrived)] == [1, 2]
    last = arrived[-1]
    assert isinstance(last, DataArrived)
    store = ArtifactStore(isolated.artifacts_root)
    manifest = DatasetManifest.model_validate_json(store.get(last.manifest))
    table = read_batches(store, manifest.batches)
    assert table.num_rows == 9
    assert sorted(table.column("age").to_pylist())[:2] == [20.0, 21.0]


async def test_duplicates_are_decided_by_the_declared_key_only(isolated: Isolation) -> None:
    app, _ = create_app(isolated.settings(IngestSettings))
    keyed = {**SCHEMA, "key": "id"}
    async with serve(app) as client:
        bad = await client.put("/v1/datasets/k", json={**SCHEMA, "key": "age"})
        assert bad.status_code == 422  # a feature cannot be the key
        assert (await client.put("/v1/datasets/k", json=keyed)).status_code == 201
        same = _row()
        first = [{**same, "id": "a"}, {**same, "id": "b"}, {**same, "id": "a"}, same]
        body = (await client.post("/v1/datasets/k/records", json=first)).json()
        assert (body["accepted"], body["rejected"]) == (2, 2)  # identical rows with distinct keys are both kept
        reasons = {r["row"]: r["reason"] for r in body["rejections"]}
        assert reasons == {2: "duplicate key 'a' of row 0", 3: "id: missing record key"}
        # Across submissions: a key stored before is refused (a retried or replayed record), new keys pass.
        body = (await client.post("/v1/datasets/k/records", json=[{**same, "id": "b"}, {**same, "id": "c"}])).json()
        assert (body["accepted"], body["rejected"], body["total_rows"]) == (1, 1, 3)
        assert body["rejections"] == [
            {"row": 0, "field": "id", "reason": "duplicate key 'b': an earlier submission stored it"}
        ]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"", {}, 400, "empty"),
        (b"{", {}, 400, "not valid JSON"),
        (b'{"a": 1}', {}, 400, "JSON array"),
        (b"age\n1", {"content-type": "application/xml"}, 415, "unsupported content type"),
    ],
)
async def test_bad_bodies_get_clear_json_errors(
    isolated: Isolation, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    app, _ = create_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        await client.put("/v1/datasets/customers", json=SCHEMA)
        answer = await client.post("/v1/datasets/customers/records", content=body, headers=headers)
        assert answer.status_code == status
        assert message in answer.json()["message"]


async def test_strict_mode_unknown_dataset_and_size_limit(isolated: Isolation) -> None:
    app, runtime = create_app(isolated.settings(IngestSettings, max_body_bytes=4096))
    async with serve(app) as client:
        await client.put("/v1/datasets/customers", json=SCHEMA)
        nan_row = json.dumps([_row(), _row(age=float("nan"))])  # Python writes the NaN token JSON clients send
        answer = await client.post("/v1/datasets/customers/records?mode=strict", content=nan_row)
        assert answer.status_code == 422
        assert answer.json()["message"].startswith("row 1: age: NaN where the column is not nullable")
        assert (await client.get("/v1/datasets/customers")).json()["total_rows"] == 0  # nothing half-written

        answer = await client.post("/v1/datasets/nope/records", json=[_row()])
        assert answer.status_code == 404
        assert "not declared" in answer.json()["message"]

        answer = await client.post("/v1/datasets/customers/records", json=[_row(age=20 + i) for i in range(200)])
        assert answer.status_code == 413
        assert answer.json()["error"] == "payload_too_large"

        answer = await client.put("/v1/datasets/Bad Name!", json=SCHEMA)
        assert answer.status_code == 422
        answer = await client.put("/v1/datasets/x", json={"features": [], "target": {}, "task": "magic"})
        assert answer.status_code == 422
        assert "features" in answer.json()["message"]
        assert await runtime.db.fetchval("SELECT count(*) FROM versions") == 0

        # partial: the NaN row is quarantined, and read back with its NaN as JSON can say it (not as null)
        answer = await client.post("/v1/datasets/customers/records", content=nan_row)
        assert (answer.status_code, answer.json()["accepted"], answer.json()["rejected"]) == (200, 1, 1)
        (kept,) = (await client.get("/v1/datasets/customers/rejections")).json()["rejections"]
        assert (kept["row"], kept["field"], kept["record"]["age"]) == (1, "age", "NaN")


async def test_records_submitted_on_kafka_are_micro_batched(isolated: Isolation) -> None:
    settings = isolated.settings(IngestSettings, micro_batch_records=50, micro_batch_wait_s=0.5)
    app, runtime = create_app(settings)
    async with serve(app) as client:
        await client.put("/v1/datasets/customers", json=SCHEMA)
        producer = create_broker(isolated.kafka, setup_telemetry("upstream", TelemetrySettings()))
        async with producer:
            await producer.start()
            publisher = BrokerPublisher(producer, isolated.kafka.topic_prefix)
            for i in range(10):
                records = [_row(age=20 + i, visits=j) for j in range(10)] + [_row(age=5)]
                await publisher.publish_event(RecordsSubmitted(producer="crm", dataset="customers", records=records,
                                                               entity_id=f"e{i}"))  # fmt: skip
            await producer.publish(b"not an event", isolated.kafka.topic(topics.RECORDS_SUBMITTED))
            unknown = RecordsSubmitted(producer="crm", dataset="unknown-dataset", records=[_row()])
            await publisher.publish_event(unknown)

        async def shown() -> dict[str, Any]:
            return (await client.get("/v1/datasets/customers")).json()["records"]  # type: ignore[no-any-return]

        await wait_until(lambda: _received(shown, 110), timeout=60, message="110 records from Kafka")
        assert await shown() == {"received": 110, "accepted": 100, "rejected": 10}
        versions = await runtime.db.fetchval("SELECT count(*) FROM versions")
        assert 1 <= versions <= 4  # micro-batches, not one version per message

    dead = await read_topic(
        isolated.kafka.bootstrap, topics.dlq(isolated.kafka.topic(topics.RECORDS_SUBMITTED)), expect=2
    )
    reasons = {r.value: bytes(dict(r.headers)[topics.HEADER_DLQ_REASON]).decode() for r in dead}
    assert "not JSON" in reasons[b"not an event"]
    assert "'unknown-dataset' is not declared" in reasons[unknown.to_bytes()]


async def _received(shown: Any, n: int) -> bool:
    return bool((await shown())["received"] >= n)


async def test_rejections_are_paged_newest_first_across_submissions_and_older_rows(
    isolated: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission's rejected rows are quarantine blocks (of 2 rows here); a page crosses blocks, then
    reaches the rows stored one by one before the blocks existed (their ids are below, as the migration
    makes sure)."""
    monkeypatch.setattr(quarantine, "BLOCK_ROWS", 2)
    app, runtime = create_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        # Two rejections stored the old way, and the counter the migration sets from them.
        async with runtime.db.acquire() as conn:
            old = await conn.fetchval(
                "INSERT INTO submissions (id, dataset, source, received, accepted, rejected) "
                "VALUES (gen_random_uuid(), 'customers', 'http', 2, 0, 2) RETURNING id"
            )
            await conn.executemany(
                "INSERT INTO rejections (id, dataset, submission_id, row_index, field, reason, record) "
                "VALUES ($1, 'customers', $2, $3, 'age', 'old', $4)",
                [(7, old, 0, json.dumps(_row(age=1))), (9, old, 1, None)],
            )
            migration = (MIGRATIONS / "006_quarantine_blocks_lead.sql").read_text()
            await conn.execute(next(line for line in migration.splitlines() if line.startswith("UPDATE datasets")))
        sizes = [3, 1, 2]
        for n, size in enumerate(sizes):
            rows = [_row(age=1000 + 10 * n + i) for i in range(size)] + [_row()]
            body = (await client.post("/v1/datasets/customers/records", json=rows)).json()
            assert (body["accepted"], body["rejected"]) == (1, size)

        pages: list[list[dict[str, Any]]] = []
        before: int | None = None
        while True:
            query = "" if before is None else f"&before_id={before}"
            page = (await client.get(f"/v1/datasets/customers/rejections?limit=2{query}")).json()
            assert page["total"] == sum(sizes) + 2
            if not page["rejections"]:
                break
            pages.append(page["rejections"])
            before = page["rejections"][-1]["id"]
        blocks = await runtime.db.fetchval("SELECT count(*) FROM rejection_blocks")
    seen = [r for page in pages for r in page]
    assert [len(p) for p in pages] == [2, 2, 2, 2]
    ids = [r["id"] for r in seen]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == len(ids)
    assert ids[-2:] == [9, 7]
    assert ids[0] == 9 + sum(sizes)  # new ids continue above the old ones
    # Newest submission first, its last row first; the record as sent comes back with its reason.
    assert [r["record"]["age"] for r in seen[:6]] == [1021, 1020, 1010, 1002, 1001, 1000]
    assert all(r["field"] == "age" and "above the maximum" in r["reason"] for r in seen[:6])
    assert [r["row"] for r in seen[:6]] == [1, 0, 0, 2, 1, 0]
    assert len({r["submission_id"] for r in seen}) == 4
    assert blocks == 4  # 3 rejections made 2 blocks
    assert (seen[-2]["record"], seen[-1]["record"]) == (None, _row(age=1))
