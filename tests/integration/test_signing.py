"""Forged promotions are refused: serving and the monitor load only artifacts the
trainer signed, and count, log and dead-letter everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import ModelPromoted
from libs.common.signing import Signer
from services.monitor.app import create_app as monitor_app
from services.monitor.settings import MonitorSettings
from services.serving.app import create_app as serving_app
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, serve
from tests.factories import TrainedModel, promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_serving import instances
from tests.integration.test_trainer import publish
from tests.keys import signed

pytestmark = pytest.mark.integration


def _forgeries(store: ArtifactStore, good: TrainedModel) -> dict[str, TrainedModel]:
    """Three ways to point a promotion at bytes the trainer did not sign."""
    attacker = Signer(Ed25519PrivateKey.generate())
    unsigned = good.artifact.model_copy(update={"signature": None})
    replaced = signed(store.put(b"placeholder the attacker swaps later", suffix=".skops"))
    Path(replaced.uri.removeprefix("file://")).write_bytes(b"the attacker's model")
    unsigned_profile = good.profile.model_copy(update={"signature": None})
    return {
        "unsigned": TrainedModel(unsigned, unsigned_profile, good.metrics, good.pipeline),
        "attacker-signed": TrainedModel(attacker.sign(unsigned), attacker.sign(unsigned_profile), good.metrics,
                                        good.pipeline),
        "replaced-file": TrainedModel(replaced, replaced, good.metrics, good.pipeline),
    }  # fmt: skip


def _failures(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("driftloop_artifact_verification_failures_total{")
    )


async def _forge(isolated: Isolation, forged: dict[str, TrainedModel]) -> list[ModelPromoted]:
    events = [promoted("churn", 2 + i, model, previous=1) for i, model in enumerate(forged.values())]
    await publish(isolated, *events)
    return events


async def test_serving_refuses_forged_promotions(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    good = trained_model(store, seed=1, rows=600)
    app, _ = serving_app(isolated.settings(ServingSettings, registry_url="http://127.0.0.1:9"))
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, good))
        await wait_until(lambda: _served(client, 1), message="the signed v1 to be served")
        await _forge(isolated, _forgeries(store, good))
        await wait_until(lambda: _metric(client, 3), message="three refusals counted")
        assert (await client.get("/v1/models/churn")).json()["version"] == 1  # still the signed model
        answer = await client.post("/v1/models/churn/predict", json={"instances": instances(1)})
        assert answer.json()["version"] == 1
    dead = await read_topic(isolated.kafka.bootstrap, topics.dlq(isolated.kafka.topic(topics.MODEL_PROMOTED)), expect=3)
    reasons = sorted(bytes(dict(r.headers)[topics.HEADER_DLQ_REASON]).decode() for r in dead)
    assert any("carries no signature" in r for r in reasons), reasons
    assert any("not an accepted one" in r for r in reasons), reasons
    assert any("does not hash" in r or "digest" in r or "sha256" in r for r in reasons), reasons


async def test_the_monitor_refuses_forged_profiles(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    good = trained_model(store, seed=1, rows=600)
    app, _ = monitor_app(isolated.settings(MonitorSettings))
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, good))
        await wait_until(lambda: _monitored(client, 1), message="v1 monitored")
        forged = _forgeries(store, good)
        del forged["replaced-file"]  # a profile's replaced bytes fail like a model's (digest)
        await _forge(isolated, forged)
        await wait_until(lambda: _metric(client, 2), message="two refusals counted")
        assert (await client.get("/v1/models/churn/drift")).json()["version"] == 1


async def _served(client: Any, version: int) -> bool:
    answer = await client.get("/v1/models/churn")
    return bool(answer.status_code == 200 and answer.json()["version"] == version)


async def _monitored(client: Any, version: int) -> bool:
    answer = await client.get("/v1/models/churn/drift")
    return bool(answer.status_code == 200 and answer.json()["version"] == version)


async def _metric(client: Any, at_least: float) -> bool:
    return _failures((await client.get("/metrics")).text) >= at_least
