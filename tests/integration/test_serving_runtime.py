"""Serving's runtimes, micro-batching and the Open Inference Protocol, on the real broker.

One model is trained for the module (the trainer's own code) and promoted in
different guises; its artifacts live in one store every test serves from.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http.aio as triton
import uvicorn
from fastapi import FastAPI
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from cli.churn_stream import FEATURES
from devstack.embedded import free_port
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import AliasMove, ArtifactRef, ModelPromoted, OnnxExport, PredictionsLogged, parse_event
from libs.common.frames import features_frame
from libs.common.schema import DType
from libs.common.settings import ArtifactSettings
from services.serving.app import create_app
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, serve
from tests.factories import CHURN, TrainedModel, promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_serving import instances
from tests.integration.test_trainer import publish
from tests.keys import signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactStore, TrainedModel]:
    store = ArtifactStore((tmp_path_factory.mktemp("serving-artifacts") / "store").as_uri())
    return store, trained_model(store, seed=3, rows=600, onnx=True)


def settings_for(isolated: Isolation, store: ArtifactStore, **overrides: Any) -> ServingSettings:
    return isolated.settings(
        ServingSettings, registry_url="http://127.0.0.1:9", artifacts=ArtifactSettings(root=store.root), **overrides
    )


def tampered_artifact(store: ArtifactStore) -> ArtifactRef:
    """An artifact whose bytes were changed after it was stored (its digest no longer matches)."""
    ref = store.put(b"an onnx graph that will be tampered with", suffix=".onnx")
    Path(ref.uri.removeprefix("file://")).write_bytes(b"something else entirely")
    return signed(ref)  # signed by the trainer's key: only the bytes were swapped


def with_onnx(event: ModelPromoted, onnx: OnnxExport) -> ModelPromoted:
    return event.model_copy(update={"onnx": onnx})


async def version_served(client: Any, version: int) -> dict[str, Any] | None:
    answer = await client.get("/v1/models/churn")
    body: dict[str, Any] = answer.json()
    return body if answer.status_code == 200 and body["version"] == version else None


def expected(model: TrainedModel, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    frame = features_frame(CHURN, rows)
    return model.pipeline.predict(frame), model.pipeline.predict_proba(frame)


async def test_runtime_is_sklearn_unless_onnx_parity_held_and_says_why(
    isolated: Isolation, model_store: tuple[ArtifactStore, TrainedModel]
) -> None:
    store, model = model_store
    app, _ = create_app(settings_for(isolated, store))
    rows = instances(5, seed=11)
    labels, probabilities = expected(model, rows)
    tampered = tampered_artifact(store)
    cases = [
        (None, "no ONNX export"),
        (OnnxExport(artifact=None, parity=False, detail="TreeEnsemble converter failed"), "export failed"),
        (OnnxExport(artifact=tampered, parity=False, detail="max |dp| 0.29 > 1e-4"), "failed the parity check"),
        (OnnxExport(artifact=tampered, parity=True, detail="labels equal"), "corrupted"),
    ]
    async with serve(app) as client:
        for version, (onnx, why) in enumerate(cases, start=1):
            event = promoted("churn", version, model, previous=version - 1 or None)
            await publish(isolated, with_onnx(event, onnx) if onnx is not None else event)
            shown = await wait_until(functools.partial(version_served, client, version), message=f"v{version}")
            assert shown["runtime"] == "sklearn"
            assert why in shown["runtime_reason"]
            if onnx is not None:
                assert shown["onnx"]["detail"] == onnx.detail
            if onnx is not None and not onnx.parity:
                assert onnx.detail in shown["runtime_reason"]
            answer = await client.post("/v1/models/churn/predict", json={"instances": rows})
            assert [p["prediction"] for p in answer.json()["predictions"]] == list(labels)
        listing = (await client.get("/v1/models")).json()
        assert [(m["model"], m["runtime"]) for m in listing] == [("churn", "sklearn")]

        # The trainer's own export, parity held: onnxruntime serves, with the same answers.
        assert model.onnx is not None
        assert model.onnx.parity, model.onnx.detail
        await publish(isolated, with_onnx(promoted("churn", 9, model, previous=4), model.onnx))
        shown = await wait_until(functools.partial(version_served, client, 9), message="v9 on onnxruntime")
        assert shown["runtime"] == "onnxruntime"
        assert shown["runtime_reason"] == f"onnxruntime: parity held ({model.onnx.detail})"
        assert shown["memory_bytes"] is None or shown["memory_bytes"] >= 0
        answer = await client.post("/v1/models/churn/predict", json={"instances": rows})
        served = answer.json()["predictions"]
        assert [p["prediction"] for p in served] == list(labels)
        assert np.allclose([[p["probabilities"][c] for c in model.pipeline.classes_] for p in served],
                           probabilities, atol=1e-4)  # fmt: skip
        # V2 requests run on the same runtime.
        v2 = await client.post("/v2/models/churn/infer", json={"inputs": [
            {"name": k, "shape": [1], "datatype": "BYTES" if isinstance(rows[0][k], str) else "FP64",
             "data": [rows[0][k]]} for k in FEATURES]})  # fmt: skip
        assert v2.status_code == 200, v2.text
        assert v2.json()["parameters"]["runtime"] == "onnxruntime"


async def test_a_version_announced_again_with_its_export_switches_to_onnxruntime(
    isolated: Isolation, model_store: tuple[ArtifactStore, TrainedModel]
) -> None:
    """The trainer exports after publishing: the registry announces the champion again, carrying the export."""
    store, model = model_store
    assert model.onnx is not None
    app, _ = create_app(settings_for(isolated, store))
    rows = instances(5, seed=12)
    labels, _ = expected(model, rows)
    first = promoted("churn", 1, model)
    again = first.model_copy(update={"event_id": uuid.uuid4(), "onnx": model.onnx,
                                     "move": AliasMove(alias="champion", from_version=1, to_version=1)})  # fmt: skip
    async with serve(app) as client:
        await publish(isolated, first)
        shown = await wait_until(functools.partial(version_served, client, 1), message="v1")
        assert shown["runtime"] == "sklearn"
        await publish(isolated, again)

        async def on_onnxruntime() -> dict[str, Any] | None:
            body = await version_served(client, 1)
            return body if body is not None and body["runtime"] == "onnxruntime" else None

        shown = await wait_until(on_onnxruntime, message="v1 reloaded on onnxruntime")
        assert shown["onnx"]["detail"] == model.onnx.detail
        answer = await client.post("/v1/models/churn/predict", json={"instances": rows})
        assert answer.json()["version"] == 1
        assert [p["prediction"] for p in answer.json()["predictions"]] == list(labels)


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    isolated: Isolation, model_store: tuple[ArtifactStore, TrainedModel]
) -> None:
    store, model = model_store
    app, _ = create_app(settings_for(isolated, store, log_batch_size=1000, log_flush_s=0.2))
    rows = instances(60, seed=12)
    labels, probabilities = expected(model, rows)
    # Requests of 1 to 3 rows each, cut from the same 60 rows.
    cuts = [0]
    while cuts[-1] < len(rows):
        cuts.append(min(len(rows), cuts[-1] + 1 + len(cuts) % 3))
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: version_served(client, 1), message="v1")
        answers = await asyncio.gather(*(
            client.post("/v1/models/churn/predict", json={"instances": rows[a:b]})
            for a, b in itertools.pairwise(cuts)
        ))  # fmt: skip
        ids: list[str] = []
        for (a, b), answer in zip(itertools.pairwise(cuts), answers, strict=True):
            body = answer.json()
            assert answer.status_code == 200
            assert body["version"] == 1
            assert len(body["predictions"]) == b - a
            for offset, prediction in enumerate(body["predictions"]):
                assert prediction["prediction"] == labels[a + offset]
                served = [prediction["probabilities"][c] for c in model.pipeline.classes_]
                assert np.allclose(served, probabilities[a + offset], atol=1e-6)
                ids.append(prediction["request_id"])
        assert len(set(ids)) == len(rows)
        metrics = (await client.get("/metrics")).text
        calls = _metric(metrics, 'driftloop_inference_batch_requests_count{model="churn"}')
        batched = _metric(metrics, 'driftloop_inference_batch_requests_sum{model="churn"}')
        assert batched == len(answers)  # every request went through the batcher …
        assert calls < len(answers)  # … and fewer inference calls than requests were made
    logged = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.PREDICTIONS_LOGGED), expect=1)
    records = [r for e in map(parse_event, (m.value for m in logged)) if isinstance(e, PredictionsLogged)
               for r in e.records]  # fmt: skip
    assert sorted(r.request_id for r in records) == sorted(ids)
    by_id = {r.request_id: r for r in records}
    assert by_id[ids[7]].features == {k: rows[7][k] for k in FEATURES}


async def test_unbatched_setting_answers_the_same(
    isolated: Isolation, model_store: tuple[ArtifactStore, TrainedModel]
) -> None:
    store, model = model_store
    app, _ = create_app(settings_for(isolated, store, batching=False))
    rows = instances(8, seed=13)
    labels, _ = expected(model, rows)
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))
        shown = await wait_until(lambda: version_served(client, 1), message="v1")
        assert shown["batching"]["enabled"] is False
        answers = await asyncio.gather(
            *(client.post("/v1/models/churn/predict", json={"instances": [r]}) for r in rows)
        )
        assert [a.json()["predictions"][0]["prediction"] for a in answers] == list(labels)
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, 'driftloop_inference_batch_requests_count{model="churn"}') == len(rows)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not exported"
    return float(match.group(1))


def _free_port() -> int:
    return free_port()


@contextlib.asynccontextmanager
async def listening(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` over real HTTP on a free loopback port (a V2 client library needs a socket).

    The app's lifespan is run by :func:`serve`; uvicorn here only carries requests.
    """
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done(), message="uvicorn to listen")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def pandas_inputs(rows: list[dict[str, Any]]) -> list[InferInput]:
    """One V2 input per feature, as an MLServer client sends a DataFrame (pandas codec)."""
    inputs = []
    for spec in CHURN.features:
        if spec.dtype is DType.CATEGORICAL:
            values, datatype = np.array([[r[spec.name]] for r in rows], dtype=object), "BYTES"
        elif spec.dtype is DType.INTEGER:
            values, datatype = np.array([[r[spec.name]] for r in rows], dtype=np.int64), "INT64"
        else:
            values, datatype = np.array([[r[spec.name]] for r in rows], dtype=np.float64), "FP64"
        tensor = InferInput(spec.name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=False)
        inputs.append(tensor)
    return inputs


async def test_open_inference_protocol_with_a_real_v2_client(
    isolated: Isolation, model_store: tuple[ArtifactStore, TrainedModel]
) -> None:
    store, model = model_store
    app, _ = create_app(settings_for(isolated, store, log_batch_size=1000, log_flush_s=0.2))
    rows = instances(6, seed=14)
    labels, probabilities = expected(model, rows)
    async with serve(app) as client, listening(app) as url:
        v2 = triton.InferenceServerClient(url)
        auth = {"Authorization": client.headers["Authorization"]}  # the V2 routes need a token too
        try:
            assert await v2.is_server_live()
            assert await v2.is_server_ready()
            assert not await v2.is_model_ready("churn", headers=auth)
            await publish(isolated, promoted("churn", 1, model))
            await wait_until(lambda: v2.is_model_ready("churn", headers=auth), message="churn ready over V2")
            meta = await v2.get_model_metadata("churn", headers=auth)
            assert [i["name"] for i in meta["inputs"]] == FEATURES
            assert {o["name"] for o in meta["outputs"]} == {"predict", "predict_proba"}
            assert meta["versions"] == ["1"]

            outputs = [InferRequestedOutput("predict", binary_data=False),
                       InferRequestedOutput("predict_proba", binary_data=False)]  # fmt: skip
            result = await v2.infer(
                "churn", pandas_inputs(rows), outputs=outputs, parameters={"content_type": "pd"}, headers=auth
            )
            assert list(result.as_numpy("predict").reshape(-1)) == list(labels)
            proba = result.as_numpy("predict_proba")
            assert proba.shape == (len(rows), 2)
            assert np.allclose(proba, probabilities, atol=1e-6)
            answer = result.get_response()
            assert answer["model_name"] == "churn"
            assert answer["model_version"] == "1"
            request_ids = answer["parameters"]["request_ids"]
            assert len(set(request_ids)) == len(rows)

            # Without outputs: predict only (MLServer's default); a pinned version works too.
            plain = await v2.infer("churn", pandas_inputs(rows[:2]), model_version="1", headers=auth)
            assert list(plain.as_numpy("predict").reshape(-1)) == list(labels[:2])
            assert plain.as_numpy("predict_proba") is None

            # The client sees the protocol's error message.
            with pytest.raises(InferenceServerException, match="unknown output 'transform'"):
                await v2.infer(
                    "churn", pandas_inputs(rows[:1]), outputs=[InferRequestedOutput("transform", False)], headers=auth
                )
        finally:
            await v2.close()

        # The row-major form (one [N, F] input, features in schema order), as plain JSON.
        row_major = {"inputs": [{"name": "input-0", "shape": [2, len(FEATURES)], "datatype": "BYTES",
                                 "data": [[r[k] for k in FEATURES] for r in rows[:2]]}],
                     "outputs": [{"name": "predict_proba"}]}  # fmt: skip
        answer = await client.post("/v2/models/churn/infer", json=row_major)
        assert answer.status_code == 200, answer.text
        assert np.allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(2, 2), probabilities[:2], atol=1e-6)
    logged = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.PREDICTIONS_LOGGED), expect=1)
    records = [r for e in map(parse_event, (m.value for m in logged)) if isinstance(e, PredictionsLogged)
               for r in e.records]  # fmt: skip
    assert set(request_ids) <= {r.request_id for r in records}  # V2 predictions are logged like the others
    assert len(records) == len(rows) + 2 + 2


async def test_bad_v2_requests_get_4xx_in_the_protocol_error_shape(
    isolated: Isolation, model_store: tuple[ArtifactStore, TrainedModel]
) -> None:
    store, model = model_store
    app, _ = create_app(settings_for(isolated, store, max_instances=10))
    rows = instances(2, seed=15)

    def column(name: str, datatype: str, values: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
        return {"name": name, "datatype": datatype, "shape": shape or [len(values), 1], "data": values}

    def good() -> list[dict[str, Any]]:
        kinds = {f.name: f.dtype for f in CHURN.features}
        return [column(k, {DType.CATEGORICAL: "BYTES", DType.INTEGER: "INT64"}.get(kinds[k], "FP64"),
                       [r[k] for r in rows]) for k in FEATURES]  # fmt: skip

    def replace(name: str, tensor: dict[str, Any] | None) -> list[dict[str, Any]]:
        inputs = [t for t in good() if t["name"] != name]
        return [*inputs, tensor] if tensor is not None else inputs

    cases: list[tuple[Any, int, str]] = [
        ({"inputs": replace("plan", column("plan", "FP32", [1.0, 2.0]))}, 400, "datatype FP32"),
        ({"inputs": replace("age", column("age", "FP64", [40.0], shape=[2, 1]))}, 400, "holds 2 values but data has 1"),
        ({"inputs": replace("age", column("age", "FP64", [40.0, 41.0, 42.0], shape=[3, 1]))}, 400, "disagree"),
        ({"inputs": replace("age", column("age", "FP64", [40.0, 41.0], shape=[1, 2]))}, 400, "[N] or [N, 1]"),
        ({"inputs": [*good(), column("colour", "BYTES", ["red", "blue"])]}, 400, "unknown input 'colour'"),
        ({"inputs": replace("tenure_months", None)}, 400, "missing input for feature 'tenure_months'"),
        ({"inputs": replace("age", column("age", "FP64", [40.0, 150.0]))}, 400, "instance 1: age: 150.0 is above"),
        ({"inputs": replace("plan", column("plan", "BYTES", ["basic", "gold"]))}, 400, "unknown category 'gold'"),
        ({"inputs": replace("age", column("age", "FP128", [40.0, 41.0]))}, 400, "unknown datatype 'FP128'"),
        ({"inputs": good(), "outputs": [{"name": "transform"}]}, 400, "unknown output 'transform'"),
        ({"inputs": [column("input-0", "FP64", [1.0] * 6, shape=[2, 3])]}, 400, "whole rows need shape [N, 7]"),
        ({"inputs": []}, 400, "non-empty list"),
        ({"inputs": replace("age", column("age", "FP64", [1.0] * 11))}, 400, "disagree"),
        ({"rows": rows}, 400, "non-empty list"),
        ([1, 2], 400, "JSON object"),
    ]
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: version_served(client, 1), message="v1")
        ok = await client.post("/v2/models/churn/infer", json={"inputs": good()})
        assert ok.status_code == 200, ok.text
        for body, status, message in cases:
            answer = await client.post("/v2/models/churn/infer", json=body)
            assert (answer.status_code, list(answer.json())) == (status, ["error"]), (body, answer.text)
            assert message in answer.json()["error"], (message, answer.json())
        too_many = [column(k, t["datatype"], t["data"] * 6) for k, t in zip(FEATURES, good(), strict=True)]
        answer = await client.post("/v2/models/churn/infer", json={"inputs": too_many})
        assert answer.status_code == 413
        assert "limit is 10" in answer.json()["error"]
        garbled = await client.post(
            "/v2/models/churn/infer", content=b"{", headers={"content-type": "application/json"}
        )
        assert (garbled.status_code, list(garbled.json())) == (400, ["error"])
        for path in ("/v2/models/other", "/v2/models/other/ready"):
            assert (await client.get(path)).status_code == 404
        unknown = await client.post("/v2/models/other/infer", json={"inputs": good()})
        assert unknown.status_code == 404
        assert "not served" in unknown.json()["error"]
        wrong_version = await client.post("/v2/models/churn/versions/9/infer", json={"inputs": good()})
        assert wrong_version.status_code == 404
