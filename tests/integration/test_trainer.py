"""The trainer on the real stack: policy-driven jobs, model.trained, restarts."""

from __future__ import annotations

import uuid
from typing import Any

import onnxruntime as ort
import pytest

from cli.churn_stream import ChurnStream
from libs.common import models, topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import ModelExported, ModelTrained, TrainingRequested, parse_event
from libs.common.kafka import BrokerPublisher, create_broker
from libs.common.profile import ReferenceProfile
from libs.common.settings import TelemetrySettings
from libs.common.telemetry import setup_telemetry
from services.trainer.app import create_app
from services.trainer.settings import TrainerSettings
from tests.conftest import Isolation, serve
from tests.factories import data_arrived, promoted, trained_model
from tests.helpers import read_topic, wait_until

pytestmark = pytest.mark.integration


def settings(isolated: Isolation, **overrides: Any) -> TrainerSettings:
    values: dict[str, Any] = {"min_rows_first_model": 600, "min_new_rows": 10**6, "search_iterations": 2}
    values.update(overrides)
    return isolated.settings(TrainerSettings, **values)


async def publish(isolated: Isolation, *events: Any) -> None:
    broker = create_broker(isolated.kafka, setup_telemetry("upstream", TelemetrySettings()))
    async with broker:
        await broker.start()
        publisher = BrokerPublisher(broker, isolated.kafka.topic_prefix)
        for event in events:
            await publisher.publish_event(event)


async def jobs(client: Any, **params: str) -> list[dict[str, Any]]:
    return (await client.get("/v1/training-jobs", params=params)).json()  # type: ignore[no-any-return]


async def test_enough_data_trains_a_first_model_and_emits_model_trained(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    stream = ChurnStream(seed=3)
    arrived = data_arrived(store, "churn", [stream.batch(400), stream.batch(400)])
    app, _ = create_app(settings(isolated))
    async with serve(app) as client:
        await publish(isolated, arrived[0])  # 400 rows: below the first-model minimum
        await wait_until(lambda: _known_rows(client, 400), message="the trainer to see version 1")
        assert await jobs(client) == []
        await publish(isolated, arrived[1], arrived[1])  # 800 rows, and a redelivery
        done = await wait_until(lambda: _succeeded(client), timeout=120, message="a succeeded job")
        assert len(await jobs(client)) == 1  # the redelivered event queued nothing more
        assert done["trigger"] == "new_data"
        assert done["dataset_version"] == 2
        # Where the job's time went, step by step, in the order the steps ran (bench/critical_path.py reads it).
        stages = [s["stage"] for s in done["stages"]]
        assert stages == ["hand-over", "worker_wait", "read", "load champion", "search and evaluate", "profile",
                          "governance", "store", "hand-back", "cards"]  # fmt: skip
        assert all(s["seconds"] >= 0 for s in done["stages"])

        exported = await wait_until(lambda: _exported(client), timeout=60, message="the job's ONNX export")
        assert exported["export_seconds"] > 0

    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_TRAINED), expect=1)
    event = parse_event(records[0].value)
    exports = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_EXPORTED), expect=1)
    after = parse_event(exports[0].value)
    assert isinstance(event, ModelTrained)
    assert event.onnx is None  # published before the export: it serves on its pipeline at once
    assert event.model == "churn"
    assert event.trigger == "new_data"
    assert event.primary_metric == "accuracy"
    assert event.metrics["accuracy"] > 0.6
    assert event.champion_metrics is None
    assert event.training_rows == 640  # 800 rows, the newest 20% held out
    assert event.seed == 42
    assert event.code_version
    pipeline = models.load(store, event.artifact)  # the artifact verifies and loads
    assert set(pipeline.classes_) == {"no", "yes"}
    profile = ReferenceProfile.from_bytes(store.get(event.profile))
    assert set(profile.features) == {f.name for f in event.dataset_schema.features}
    assert profile.metrics["accuracy"] == event.metrics["accuracy"]
    # Then the ONNX export of that version, content-addressed next to the pipeline, with its parity.
    assert isinstance(after, ModelExported)
    assert (after.job_id, after.artifact) == (event.job_id, event.artifact)
    assert after.onnx.parity, after.onnx.detail
    assert after.onnx.detail.startswith("labels equal on 160 holdout rows")
    assert exported["onnx"] == after.onnx.model_dump(mode="json")  # the job's record says the same
    assert after.onnx.artifact is not None
    assert after.onnx.artifact.signature is not None
    assert after.onnx.artifact.uri.endswith(".onnx")
    session = ort.InferenceSession(store.get(after.onnx.artifact), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [f.name for f in event.dataset_schema.features]


async def test_requests_compare_with_the_champion_and_conflict_while_busy(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    champion = trained_model(store, seed=5, rows=800)
    arrived = data_arrived(store, "churn", [ChurnStream(seed=4).batch(300)])
    app, _ = create_app(settings(isolated))
    async with serve(app) as client:
        answer = await client.post("/v1/training-jobs", json={"model": "churn"})
        assert answer.status_code == 404  # no data yet
        await publish(isolated, promoted("churn", 1, champion), arrived[0])
        await wait_until(lambda: _known_rows(client, 300, champion=1), message="the trainer to see data and champion")
        first = await client.post("/v1/training-jobs", json={"model": "churn", "reason": "test"})
        assert first.status_code == 202, first.text
        assert first.json()["reason"] == "test (by test-admin)"  # the caller is the token's principal
        second = await client.post("/v1/training-jobs", json={"model": "churn"})
        assert second.status_code == 409
        assert "already queued or running" in second.json()["message"]
        bad = await client.post("/v1/training-jobs", json={"model": "Not A Name"})
        assert bad.status_code == 422
        await wait_until(lambda: _succeeded(client), timeout=120, message="the requested job")
    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_TRAINED), expect=1)
    event = parse_event(records[0].value)
    assert isinstance(event, ModelTrained)
    assert event.trigger == "request"
    assert event.champion_version == 1
    assert event.champion_metrics is not None
    assert set(event.champion_metrics) == set(event.metrics)


async def test_a_restarted_trainer_resumes_queued_and_orphaned_jobs(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    arrived = data_arrived(store, "churn", [ChurnStream(seed=4).batch(300)])
    # A queue-only replica takes the request and stops before any worker ran it.
    app, _ = create_app(settings(isolated, workers=0))
    async with serve(app) as client:
        await publish(isolated, arrived[0])
        await wait_until(lambda: _known_rows(client, 300), message="the trainer to see the data")
        await publish(isolated, TrainingRequested(producer="test", model="churn", dataset="churn", reason="resume"))
        queued = await wait_until(lambda: jobs(client, status="queued"), message="a queued job")
        assert queued[0]["started_at"] is None  # nothing ran it on the queue-only replica
    # A worker replica starts and finishes it.
    app2, runtime2 = create_app(settings(isolated, job_lease_s=3))
    async with serve(app2) as client2:
        done = await wait_until(lambda: _succeeded(client2), timeout=120, message="the job after a restart")
        assert done["id"] == queued[0]["id"]
        assert done["reason"].startswith("resume")
        assert done["attempts"] == 1
        # A job whose worker died mid-run (stale heartbeat) is taken up again after its lease.
        await runtime2.db.execute(
            "INSERT INTO jobs (id, model, dataset, dataset_version, manifest, trigger, reason, status, attempts, "
            "started_at, heartbeat_at) SELECT gen_random_uuid(), model, dataset, dataset_version, manifest, "
            "'request', 'orphaned', 'running', 1, now() - interval '1 hour', now() - interval '1 hour' "
            "FROM jobs WHERE id = $1",
            uuid.UUID(done["id"]),
        )

        async def orphan_done() -> dict[str, Any] | None:
            return next((j for j in await jobs(client2) if j["reason"] == "orphaned" and j["status"] == "succeeded"),
                        None)  # fmt: skip

        orphan = await wait_until(orphan_done, timeout=120, message="the orphaned job to be re-run")
        assert orphan["attempts"] == 2  # the lost attempt, then the one that finished


async def _known_rows(client: Any, rows: int, champion: int | None = None) -> bool:
    answer = await client.get("/v1/models/churn")
    if answer.status_code != 200:
        return False
    state = answer.json()
    return bool(state["total_rows"] >= rows and (champion is None or state["champion_version"] == champion))


async def _exported(client: Any) -> dict[str, Any] | None:
    return next((j for j in await jobs(client) if j["onnx"] is not None), None)


async def _succeeded(client: Any) -> dict[str, Any] | None:
    for job in await jobs(client):
        if job["status"] == "succeeded":
            return job
        assert job["status"] != "failed", job["error"]
    return None
