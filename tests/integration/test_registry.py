"""The registry on the real stack: versions, the promotion policy, aliases, audit."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from cli.churn_stream import ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.auth import Role
from libs.common.events import ModelExported, ModelPromoted, ModelTrained, OnnxExport, parse_event
from libs.common.frames import features_frame
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from services.trainer.domain.export import export
from tests.conftest import Isolation, bearer, serve
from tests.factories import CHURN, trained_model
from tests.helpers import outbox_drained, read_topic, wait_until
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


def trained(
    store: ArtifactStore, accuracy: float, champion: float | None = None, against: int | None = None
) -> ModelTrained:
    model = trained_model(store, rows=600)
    return ModelTrained(
        producer="test", model="churn", dataset="churn", dataset_version=3, job_id=str(uuid.uuid4()), trigger="drift",
        params={"max_depth": 3}, metrics={"accuracy": accuracy}, primary_metric="accuracy", seed=1, code_version="t",
        champion_metrics=None if champion is None else {"accuracy": champion}, champion_version=against,
        training_rows=100, artifact=model.artifact, profile=model.profile, dataset_schema=CHURN,
    )  # fmt: skip


async def versions(client: Any) -> list[dict[str, Any]]:
    answer = await client.get("/v1/models/churn/versions")
    return answer.json() if answer.status_code == 200 else []


async def test_policy_promotes_and_rejects_with_an_audit_trail(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    app, _ = create_app(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    first, weak, better = trained(store, 0.7), trained(store, 0.705, 0.7, 1), trained(store, 0.8, 0.7, 1)
    async with serve(app) as client:
        await publish(isolated, first, first)  # a redelivery registers nothing new
        await wait_until(lambda: _has(client, 1), message="v1")
        await publish(isolated, weak, better)
        await wait_until(lambda: _has(client, 3), message="v3")
        listed = await versions(client)
        assert [(v["version"], v["decision"], v["aliases"]) for v in listed] == [
            (3, "promoted", ["champion"]), (2, "rejected", []), (1, "promoted", []),
        ]  # fmt: skip
        v3 = (await client.get("/v1/models/churn/versions/3")).json()
        assert v3["lineage"]["dataset_version"] == 3
        assert v3["run"]["params"] == {"max_depth": 3}
        assert v3["run"]["champion_metrics"] == {"accuracy": 0.7}
        assert (await client.get("/v1/models/churn/aliases/champion")).json()["version"] == 3

        # The audit's actor is the token's principal; an actor in the body is ignored.
        alice = await bearer(app, Role.OPERATOR, principal="alice")
        forged = {"version": 1, "reason": "v3 misbehaves", "actor": "security-team@bank.example"}
        rollback = await client.put("/v1/models/churn/aliases/champion", json=forged, headers=alice)
        assert rollback.status_code == 200
        assert rollback.json() == {"model": "churn", "alias": "champion", "from_version": 3, "to_version": 1}
        audit = (await client.get("/v1/models/churn/audit")).json()
        assert [(a["action"], a["actor"]) for a in audit[:2]] == [("rollback", "alice"), ("promote", "policy")]
        assert audit[0]["reason"] == "v3 misbehaves"
        # Moving champion forward is an approval: an operator may not, an approver may.
        forward = {"version": 3, "reason": "v3 fixed", "actor": "policy"}
        refused = await client.put("/v1/models/churn/aliases/champion", json=forward, headers=alice)
        assert refused.status_code == 403, refused.text
        assert refused.json()["details"]["required_role"] == "approver"
        bob = await bearer(app, Role.APPROVER, principal="bob")
        assert (await client.put("/v1/models/churn/aliases/champion", json=forward, headers=bob)).status_code == 200
        assert (await client.get("/v1/models/churn/audit")).json()[0]["actor"] == "bob"
        assert any(a["action"] == "reject" and "gain +0.0050" in a["reason"] for a in audit)

        assert (await client.get("/v1/models/nope/versions")).status_code == 404
        assert (await client.get("/v1/models/churn/versions/99")).status_code == 404
        bad = await client.put("/v1/models/churn/aliases/champion", json={"version": 99, "reason": "why not"})
        assert bad.status_code == 404
        assert "no version 99" in bad.json()["message"]
        assert (
            await client.put("/v1/models/churn/aliases/king", json={"version": 1, "reason": "x y"})
        ).status_code == 404
        missing_reason = await client.put("/v1/models/churn/aliases/champion", json={"version": 1})
        assert missing_reason.status_code == 422
        assert "reason" in missing_reason.json()["message"]

    promotions = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=4)
    moves = {(e.move.from_version, e.move.to_version, e.actor) for e in map(_promoted, promotions)}
    assert moves == {(None, 1, "policy"), (1, 3, "policy"), (3, 1, "alice"), (1, 3, "bob")}


def _promoted(record: Any) -> ModelPromoted:
    event = parse_event(record.value)
    assert isinstance(event, ModelPromoted)
    return event


async def _has(client: Any, n: int) -> bool:
    return len(await versions(client)) >= n


async def test_versions_record_their_onnx_export_and_the_runtime_that_serves_them(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    exported = trained_model(store, rows=600, onnx=True)
    assert exported.onnx is not None
    assert exported.onnx.parity, exported.onnx.detail
    # A pipeline skl2onnx cannot convert: the export says why, and the version still registers.
    frame = features_frame(CHURN, ChurnStream(seed=2).batch(300))[["tenure_months", "age"]]
    unconvertible = Pipeline([
        ("preprocess", ColumnTransformer([("squash", FunctionTransformer(np.tanh), ["tenure_months", "age"])])),
        ("model", HistGradientBoostingClassifier(max_iter=5)),
    ]).fit(frame, ["yes" if t > 30 else "no" for t in frame["tenure_months"]])  # fmt: skip
    failed = export(CHURN, unconvertible, frame)
    first = trained(store, 0.7).model_copy(update={"onnx": exported.onnx})
    second = trained(store, 0.8, 0.7, 1).model_copy(
        update={"onnx": OnnxExport(artifact=None, parity=failed.parity, detail=failed.detail)}
    )
    app, runtime = create_app(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    async with serve(app) as client:
        await publish(isolated, first)
        await wait_until(lambda: _has(client, 1), message="v1")
        champion = (await client.get("/v1/models/churn/aliases/champion")).json()  # what serving reads at start-up
        assert champion["version"] == 1
        assert champion["runtime"] == "onnxruntime"
        assert champion["onnx"] == exported.onnx.model_dump(mode="json")

        await publish(isolated, second)
        await wait_until(lambda: _has(client, 2), message="v2")
        v2 = (await client.get("/v1/models/churn/versions/2")).json()
        assert v2["decision"] == "promoted"
        assert v2["runtime"] == "sklearn"
        assert v2["onnx"]["parity"] is False
        assert v2["onnx"]["artifact"] is None
        assert v2["onnx"]["detail"].startswith("not convertible: ")
        listed = (await client.get("/v1/models")).json()
        assert [(m["model"], m["aliases"], m["runtime"]) for m in listed] == [("churn", {"champion": 2}, "sklearn")]

        back = await client.put("/v1/models/churn/aliases/champion", json={"version": 1, "reason": "back to onnx"})
        assert back.status_code == 200
        await outbox_drained(runtime.db)  # published before the app stops
    promotions = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=3)
    onnx_by_move = {(e.move.to_version, e.actor): e.onnx for e in map(_promoted, promotions)}
    assert onnx_by_move[(1, "policy")] == exported.onnx
    assert onnx_by_move[(2, "policy")] is not None
    assert onnx_by_move[(2, "policy")].parity is False
    assert onnx_by_move[(1, "test-admin")] == exported.onnx  # the caller: the token principal of serve()


async def test_an_export_that_overtakes_its_version_is_kept_and_registered_with_it(isolated: Isolation) -> None:
    """model.exported and model.trained travel on different topics: the export may be read first."""
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=600, onnx=True)
    assert model.onnx is not None
    first = trained(store, 0.7)
    early = ModelExported(producer="test", model="churn", job_id=first.job_id, artifact=first.artifact,
                          onnx=model.onnx)  # fmt: skip
    app, runtime = create_app(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    async with serve(app) as client:
        await publish(isolated, early, early)  # and a redelivery

        async def kept() -> bool:
            return bool(await runtime.db.fetchval("SELECT count(*) FROM pending_exports") == 1)

        await wait_until(kept, message="the early export to be kept")
        await publish(isolated, first)
        await wait_until(lambda: _has(client, 1), message="v1")
        version = (await client.get("/v1/models/churn/versions/1")).json()
        assert version["runtime"] == "onnxruntime"
        audit = (await client.get("/v1/models/churn/audit")).json()
        assert [(a["action"], a["to_version"]) for a in audit] == [("promote", 1), ("export", 1), ("register", 1)]
        assert await runtime.db.fetchval("SELECT count(*) FROM pending_exports") == 0
        await outbox_drained(runtime.db)
    promotions = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=1)
    assert _promoted(promotions[0]).onnx == model.onnx  # serving loads it on onnxruntime from the start


async def test_an_export_after_the_version_switches_its_runtime_where_it_serves(isolated: Isolation) -> None:
    """The trainer publishes a version first and its ONNX export after: the champion is announced again."""
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=600, onnx=True)
    assert model.onnx is not None
    first = trained(store, 0.7)  # no export yet: it serves on its pipeline at once
    later = ModelExported(producer="test", model="churn", job_id=first.job_id, artifact=first.artifact,
                          onnx=model.onnx)  # fmt: skip
    app, runtime = create_app(isolated.settings(RegistrySettings, min_metric=0.6, min_gain=0.01))
    async with serve(app) as client:
        await publish(isolated, first)
        await wait_until(lambda: _has(client, 1), message="v1")
        assert (await client.get("/v1/models/churn/versions/1")).json()["runtime"] == "sklearn"
        await publish(isolated, later, later)  # the export, and a redelivery

        async def switched() -> bool:
            return bool((await client.get("/v1/models/churn/versions/1")).json()["runtime"] == "onnxruntime")

        await wait_until(switched, message="v1 to run on onnxruntime")
        audit = (await client.get("/v1/models/churn/audit")).json()
        assert [(a["action"], a["to_version"]) for a in audit] == [("export", 1), ("promote", 1), ("register", 1)]
        assert audit[0]["reason"].startswith("runs on onnxruntime: labels equal on")
        await outbox_drained(runtime.db)
    promotions = [
        _promoted(r)
        for r in await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=2)
    ]
    assert [(e.version, e.move.from_version, e.move.to_version, e.onnx) for e in promotions] == [
        (1, None, 1, None), (1, 1, 1, model.onnx),  # the same version again, carrying its export; no alias moved
    ]  # fmt: skip
