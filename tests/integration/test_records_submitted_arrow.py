"""records.submitted with Arrow IPC payloads, on the real broker and PostgreSQL: stored with the same
reasons as JSON records, mixed with JSON events in one micro-batch, bad payloads dead-lettered alone."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from cli.records import send
from libs.common import topics
from libs.common.arrow_records import arrow_stream
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest, read_batches
from libs.common.events import ArtifactRef, RecordsSubmitted
from libs.common.kafka import BrokerPublisher, create_broker
from libs.common.settings import TelemetrySettings
from libs.common.telemetry import setup_telemetry
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.conftest import Isolation, serve
from tests.helpers import read_topic, wait_until
from tests.integration.test_ingest import SCHEMA as INGEST_SCHEMA

pytestmark = pytest.mark.integration

SCHEMA: dict[str, Any] = {**INGEST_SCHEMA, "key": "id"}  # test_ingest's customers, with a record key
TYPES = pa.schema([("id", pa.string()), ("age", pa.float64()), ("plan", pa.string()), ("visits", pa.int32()),
                   ("churned", pa.string())])  # fmt: skip


def _rows(ids: range, **change: Any) -> list[dict[str, Any]]:
    return [{"id": str(i), "age": 20.0 + i % 50, "plan": "basic", "visits": i % 4, "churned": "no", **change}
            for i in ids]  # fmt: skip


def _arrow(rows: list[dict[str, Any]], compression: Any = "zstd") -> bytes:
    return arrow_stream(pa.Table.from_pylist(rows, schema=TYPES), compression)


async def test_arrow_and_json_events_share_a_micro_batch_and_bad_payloads_are_dead_lettered(
    isolated: Isolation,
) -> None:
    settings = isolated.settings(IngestSettings, micro_batch_records=50, micro_batch_wait_s=0.5,
                                 max_decoded_bytes=256 * 1024)  # fmt: skip
    app, runtime = create_app(settings)
    json_rows = _rows(range(10))
    json_rows[3]["age"] = 12  # below the minimum
    arrow_rows = _rows(range(10, 30))
    arrow_rows[4]["plan"] = "gold"  # row 14 of the micro-batch: closed category
    arrow_rows[7]["age"] = None  # row 17: not nullable
    again = _rows(range(30, 34)) + _rows(range(5, 6))  # key '5' came in the JSON event
    malformed = RecordsSubmitted(producer="crm", dataset="customers", arrow=b"\xff\xff\xff\xffnot an arrow stream")
    mismatch = RecordsSubmitted(producer="crm", dataset="customers", arrow=arrow_stream(
        pa.table({"id": ["m"], "age": [30.0], "plan": [1], "churned": ["no"]})))  # fmt: skip
    expanding = RecordsSubmitted(producer="crm", dataset="customers",
                                 arrow=arrow_stream(pa.table({"age": [30.0] * 100_000}), "zstd"))  # fmt: skip
    assert len(expanding.to_bytes()) < 10_000  # small on the wire, 800 kB once read
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        producer = create_broker(isolated.kafka, setup_telemetry("upstream", TelemetrySettings()))
        async with producer:
            await producer.start()
            publisher = BrokerPublisher(producer, isolated.kafka.topic_prefix)
            # one partition (keyed by dataset), so the consumer sees them in this order
            await publisher.publish_event(RecordsSubmitted(producer="crm", dataset="customers", records=json_rows))
            await publisher.publish_event(malformed)
            await publisher.publish_event(RecordsSubmitted(producer="crm", dataset="customers",
                                                           arrow=_arrow(arrow_rows, "lz4")))  # fmt: skip
            await publisher.publish_event(mismatch)
            await publisher.publish_event(expanding)
        # the CLI's path (`driftloop records send`); cutting a table into events is unit-tested
        sent = await send(pa.Table.from_pylist(again, schema=TYPES), dataset="customers", kafka=isolated.kafka,
                          principal="upstream-crm")  # fmt: skip
        assert (sent["events"], sent["rows"]) == (1, 5)

        async def received() -> dict[str, Any]:
            return (await client.get("/v1/datasets/customers")).json()["records"]  # type: ignore[no-any-return]

        await wait_until(lambda: _at_least(received, 35), timeout=60, message="35 rows from Kafka")
        assert await received() == {"received": 35, "accepted": 31, "rejected": 4}
        rejections = (await client.get("/v1/datasets/customers/rejections")).json()["rejections"]
        reasons = {r["record"]["id"]: (r["field"], r["reason"]) for r in rejections}
        assert reasons["3"] == ("age", "age: 12.0 is below the minimum 18.0")
        assert reasons["14"][0] == "plan"
        assert "unknown category 'gold'" in reasons["14"][1]
        assert reasons["17"] == ("age", "age: missing value where the column is not nullable")
        assert reasons["5"][0] == "id"
        assert reasons["5"][1].startswith("duplicate key '5'")
        versions = await runtime.db.fetch("SELECT rows, principal FROM versions ORDER BY version")
        assert sum(v["rows"] for v in versions) == 31
        assert len(versions) <= 3  # micro-batches, JSON and Arrow events together
        assert "upstream-crm" in {p for v in versions for p in v["principal"].split(",")}

    dead = await read_topic(
        isolated.kafka.bootstrap, topics.dlq(isolated.kafka.topic(topics.RECORDS_SUBMITTED)), expect=3
    )
    why = {r.value: bytes(dict(r.headers)[topics.HEADER_DLQ_REASON]).decode() for r in dead}
    assert "not a readable Arrow IPC stream" in why[malformed.to_bytes()]
    assert "column 'plan' is int64" in why[mismatch.to_bytes()]
    assert f"expands past the limit of {256 * 1024} bytes" in why[expanding.to_bytes()]


async def _at_least(received: Any, n: int) -> bool:
    return bool((await received())["received"] >= n)


@pytest.mark.parametrize("failing", [False, True], ids=["stored", "a-run-fails-once"])
async def test_a_micro_batch_past_the_cap_becomes_several_versions_each_row_stored_once_in_order(
    isolated: Isolation, failing: bool
) -> None:
    """Seven events in ONE micro-batch (it waits for seven), 60 rows against a cap of 25 rows a submission:
    three versions of two events each, in event order, and the malformed event among them dead-lettered.
    ``failing``: PostgreSQL refuses the second version once (a trigger), so the micro-batch is handled
    again after the first version was committed: its events are skipped as delivered, none stored twice."""
    settings = isolated.settings(IngestSettings, micro_batch_records=7, micro_batch_wait_s=10.0,
                                 micro_batch_submission_rows=25, compact_interval_s=0)  # fmt: skip
    app, runtime = create_app(settings)
    rows = [_rows(range(start, start + 10)) for start in range(0, 60, 10)]
    rows[1][4]["age"] = None  # id 14, row 14 of the first submission: not nullable
    rows[3][2]["id"] = "21"  # row 12 of the second submission repeats its row 1 (id 21)
    rows[4][0]["id"] = "5"  # the first submission stored id 5
    refused = {(1, 4), (3, 2), (4, 0)}  # (event, row in it)
    malformed = RecordsSubmitted(producer="crm", dataset="customers", arrow=b"\xff\xff\xff\xffnot an arrow stream")
    events = [RecordsSubmitted(producer="crm", dataset="customers", records=r) if n in (0, 3)
              else RecordsSubmitted(producer="crm", dataset="customers", arrow=_arrow(r))
              for n, r in enumerate(rows)]  # fmt: skip
    events.insert(2, malformed)
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/customers", json=SCHEMA)).status_code == 201
        if failing:
            await runtime.db.execute(_FAIL_VERSION_2_ONCE)
        producer = create_broker(isolated.kafka, setup_telemetry("upstream", TelemetrySettings()))
        async with producer:
            await producer.start()
            publisher = BrokerPublisher(producer, isolated.kafka.topic_prefix)
            for event in events:  # one partition (keyed by dataset): the consumer sees them in this order
                await publisher.publish_event(event)

        async def received() -> dict[str, Any]:
            return (await client.get("/v1/datasets/customers")).json()["records"]  # type: ignore[no-any-return]

        await wait_until(lambda: _at_least(received, 60), timeout=60, message="60 rows from Kafka")
        assert await received() == {"received": 60, "accepted": 57, "rejected": 3}
        versions = await runtime.db.fetch("SELECT version, rows, total_rows FROM versions ORDER BY version")
        assert [tuple(v) for v in versions] == [(1, 19, 19), (2, 19, 38), (3, 19, 57)]
        submissions = await runtime.db.fetch("SELECT version, received FROM submissions ORDER BY version")
        assert [tuple(s) for s in submissions] == [(1, 20), (2, 20), (3, 20)]
        delivered = "SELECT count(*) FROM processed_events WHERE consumer = 'ingest.records-submitted'"
        assert await runtime.db.fetchval(delivered) == 6  # not the malformed one: a replay is processed
        if failing:
            assert await runtime.db.fetchval("SELECT last_value FROM fail_once") == 2  # refused, then stored

        store = ArtifactStore(isolated.artifacts_root)
        shown = (await client.get("/v1/datasets/customers/versions/3")).json()
        manifest = DatasetManifest.model_validate_json(store.get(ArtifactRef.model_validate(shown["manifest"])))
        stored = read_batches(store, manifest.batches).select(["age", "visits"]).to_pylist()  # the key is not a column
        expected = [{"age": r["age"], "visits": r["visits"]}
                    for n, event in enumerate(rows) for i, r in enumerate(event) if (n, i) not in refused]  # fmt: skip
        assert stored == expected  # each row once, in event order (ages 20-69, then 20-29)
        rejections = (await client.get("/v1/datasets/customers/rejections")).json()["rejections"]
        assert sorted((r["row"], r["field"], r["reason"]) for r in rejections) == [
            (0, "id", "duplicate key '5': an earlier submission stored it"),  # the third submission's row 0
            (12, "id", "duplicate key '21' of row 1"),  # rows are numbered within a submission
            (14, "age", "age: missing value where the column is not nullable"),
        ]

    dead = await read_topic(
        isolated.kafka.bootstrap, topics.dlq(isolated.kafka.topic(topics.RECORDS_SUBMITTED)), expect=1
    )
    assert [r.value for r in dead] == [malformed.to_bytes()]
    assert "not a readable Arrow IPC stream" in bytes(dict(dead[0].headers)[topics.HEADER_DLQ_REASON]).decode()


#: PostgreSQL refuses the first attempt to insert version 2 (a sequence counts the attempts: it is not
#: rolled back with the transaction that failed).
_FAIL_VERSION_2_ONCE = """
CREATE SEQUENCE fail_once;
CREATE FUNCTION fail_version_2_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version = 2 THEN
        IF nextval('fail_once') = 1 THEN
            RAISE EXCEPTION 'injected: version 2 refused once';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_version_2_once BEFORE INSERT ON versions FOR EACH ROW EXECUTE FUNCTION fail_version_2_once();
"""
