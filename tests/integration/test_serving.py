"""Serving on the real stack: hot swap with no failed request, validation, logs, feedback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cli.churn_stream import FEATURES, ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import LabelsArrived, PredictionsLogged, parse_event
from services.serving.app import create_app
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, serve
from tests.factories import promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


def instances(n: int, seed: int = 1) -> list[dict[str, Any]]:
    return [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=seed).batch(n)]


async def served_version(client: Any) -> int | None:
    answer = await client.get("/v1/models/churn")
    return answer.json()["version"] if answer.status_code == 200 else None


async def test_promotions_swap_models_without_a_failed_request(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    v1, v2 = trained_model(store, seed=1, rows=600), trained_model(store, seed=2, rows=600, drifted=True)
    settings = isolated.settings(ServingSettings, registry_url="http://127.0.0.1:9", log_batch_size=50, log_flush_s=0.2)
    app, _ = create_app(settings)
    async with serve(app) as client:
        assert (await client.post("/v1/models/churn/predict", json={"instances": instances(1)})).status_code == 404
        await publish(isolated, promoted("churn", 1, v1))
        await wait_until(lambda: served_version(client), message="v1 to be served")

        statuses: list[int] = []
        versions: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                answer = await client.post("/v1/models/churn/predict", json={"instances": instances(20)})
                statuses.append(answer.status_code)
                versions.append(answer.json().get("version", -1))
                # In-process (ASGI) calls never wait on a socket; yield so the swap can happen.
                await asyncio.sleep(0.005)

        load = [asyncio.create_task(traffic()) for _ in range(4)]
        await asyncio.sleep(0.5)
        await publish(isolated, promoted("churn", 2, v2, previous=1))
        await wait_until(lambda: versions and versions[-1] == 2, timeout=30, message="v2 to answer")
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*load)
        assert set(statuses) == {200}  # nothing failed during the swap
        assert versions[0] == 1
        assert versions[-1] == 2
        assert versions == sorted(versions)  # once v2 answers, v1 never answers again

        answer = await client.post("/v1/models/churn/predict", json={"instances": instances(3)})
        body = answer.json()
        assert len({p["request_id"] for p in body["predictions"]}) == 3
        assert all(set(p["probabilities"]) == {"no", "yes"} for p in body["predictions"])
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in body["predictions"])
        request_id = body["predictions"][0]["request_id"]
        metrics = (await client.get("/metrics")).text
        assert "driftloop_models_loaded 1.0" in metrics
        assert 'driftloop_model_version_served{model="churn"} 2.0' in metrics
        feedback = await client.post(
            "/v1/feedback", json={"model": "churn", "labels": [{"request_id": request_id, "label": "yes"}]}
        )
        assert feedback.status_code == 202

    logged = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.PREDICTIONS_LOGGED), expect=1)
    events = [parse_event(r.value) for r in logged]
    assert all(isinstance(e, PredictionsLogged) for e in events)
    total = sum(len(e.records) for e in events if isinstance(e, PredictionsLogged))
    assert total == len(statuses) * 20 + 3  # every prediction served is logged (the last batch flushed on stop)
    labels = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.LABELS_ARRIVED), expect=1)
    label_event = parse_event(labels[0].value)
    assert isinstance(label_event, LabelsArrived)
    assert label_event.labels[0].request_id == request_id


async def test_bad_requests_name_the_instance_and_field(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    settings = isolated.settings(ServingSettings, registry_url="http://127.0.0.1:9", max_instances=10)
    app, _ = create_app(settings)
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, trained_model(store, rows=600)))
        await wait_until(lambda: served_version(client), message="v1 to be served")
        good = instances(3)

        async def predict(body: Any) -> tuple[int, str]:
            answer = await client.post("/v1/models/churn/predict", json=body)
            return answer.status_code, answer.json().get("message", "")

        assert await predict({"instances": [good[0], {**good[1], "age": 150}]}) == (
            422, "instance 1: age: 150.0 is above the maximum 100.0",
        )  # fmt: skip
        assert (await predict({"instances": [{**good[0], "plan": "gold"}]}))[1].startswith("instance 0: plan: unknown")
        missing = {k: v for k, v in good[2].items() if k != "tenure_months"}
        assert await predict({"instances": [missing]}) == (422, "instance 0: tenure_months: missing column")
        assert (await predict({"instances": []}))[0] == 422
        assert (await predict({"rows": good}))[0] == 422
        assert (await predict({"instances": instances(11)}))[1].startswith("11 instances")
        unknown = await client.post("/v1/models/other/predict", json={"instances": good})
        assert unknown.status_code == 404
        assert "not served" in unknown.json()["message"]
        empty = await client.post("/v1/models/churn/predict", content=b"", headers={"content-type": "application/json"})
        assert empty.status_code == 400
        assert "empty" in empty.json()["message"]
        garbled = await client.post(
            "/v1/models/churn/predict", content=b"{", headers={"content-type": "application/json"}
        )
        assert garbled.status_code == 400
        feedback = await client.post(
            "/v1/feedback", json={"model": "other", "labels": [{"request_id": "x", "label": 1}]}
        )
        assert feedback.status_code == 404
        attributed = await client.post("/v1/feedback", json={"model": "churn", "labels": [
            {"request_id": "x", "label": "yes", "attributes": {"sex": "f"}}]})  # fmt: skip
        assert attributed.status_code == 422  # only the schema's sensitive columns travel with a label
        assert attributed.json()["message"].startswith("labels.0.attributes.sex: not a sensitive column")
