"""Re-judgement on the real broker: registry → trainer → registry.

A challenger compared with a champion that has since been replaced is stale.
The registry asks the trainer (rejudgement.requested) to score it and the
current champion on the challenger's own holdout; the trainer answers
(model.rejudged); the registry then decides on those figures. A better
challenger is promoted; one worse on the same holdout never is, whatever its
stale comparison said.
"""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
import pytest

from cli.churn_stream import ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef, ModelRejudged, ModelTrained, RejudgementRequested, parse_event
from libs.common.frames import features_frame
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.trainer.adapters.rejudge import holdout_parquet
from services.trainer.app import create_app as create_trainer
from tests.conftest import Isolation, serve
from tests.factories import CHURN, TrainedModel, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_trainer import publish, settings
from tests.keys import signed

pytestmark = pytest.mark.integration


def holdout(store: ArtifactStore, rows: list[dict[str, Any]]) -> ArtifactRef:
    return signed(store.put(holdout_parquet(pd.DataFrame(rows)), suffix=".holdout.parquet"))


def trained(
    model: TrainedModel, accuracy: float, *, champion: float | None = None, against: int | None = None,
    kept: ArtifactRef | None = None,
) -> ModelTrained:  # fmt: skip
    return ModelTrained(
        producer="test", model="churn", dataset="churn", dataset_version=3, job_id=str(uuid.uuid4()), trigger="drift",
        params={}, metrics={"accuracy": accuracy}, primary_metric="accuracy", seed=1, code_version="t",
        champion_metrics=None if champion is None else {"accuracy": champion}, champion_version=against,
        training_rows=800, artifact=model.artifact, profile=model.profile, dataset_schema=CHURN, holdout=kept,
    )  # fmt: skip


def accuracy(model: TrainedModel, rows: list[dict[str, Any]]) -> float:
    frame = pd.DataFrame(rows)
    return float((model.pipeline.predict(features_frame(CHURN, frame)) == frame[CHURN.target.name]).mean())


async def version(client: Any, n: int) -> dict[str, Any] | None:
    answer = await client.get(f"/v1/models/churn/versions/{n}")
    return answer.json() if answer.status_code == 200 else None


async def decided(client: Any, n: int) -> dict[str, Any] | None:
    found = await version(client, n)
    return found if found and found["decision"] not in ("rejudging", "registered") else None


async def test_a_stale_challenger_is_rejudged_by_the_trainer_and_promoted_only_when_better(
    isolated: Isolation,
) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    first, second = trained_model(store, seed=5, rows=800), trained_model(store, seed=6, rows=800)
    drifted = trained_model(store, seed=7, rows=800, drifted=True)
    new_rows = ChurnStream(seed=11, drifted=True).batch(500)
    old_rows = ChurnStream(seed=12).batch(500)
    # The figures the re-judgement must reproduce: both models on each challenger's holdout.
    assert accuracy(drifted, new_rows) > accuracy(second, new_rows) + 0.05
    assert accuracy(drifted, old_rows) < accuracy(second, old_rows) - 0.05

    registry, _ = create_registry(isolated.settings(RegistrySettings, min_metric=0.5, min_gain=0.01))
    trainer, _ = create_trainer(settings(isolated))
    async with serve(registry) as reg, serve(trainer) as tr:
        await publish(isolated, trained(first, 0.70))
        await wait_until(lambda: decided(reg, 1), message="v1")
        await publish(isolated, trained(second, 0.80, champion=0.70, against=1))
        assert (await wait_until(lambda: decided(reg, 2), message="v2"))["decision"] == "promoted"

        async def trainer_knows_v2() -> bool:
            return bool((await tr.get("/v1/models/churn")).json().get("champion_version") == 2)

        await wait_until(trainer_knows_v2, message="the trainer to hear of champion v2")
        # Both compared with v1, which no longer serves; both claim a large gain over it. The worse one
        # first: it must be re-judged against v2 and rejected before the better one can replace v2.
        await publish(isolated, trained(drifted, 0.90, champion=0.70, against=1, kept=holdout(store, old_rows)))
        worse = await wait_until(lambda: decided(reg, 3), timeout=120, message="v3's re-judgement")
        await publish(isolated, trained(drifted, 0.90, champion=0.70, against=1, kept=holdout(store, new_rows)))
        better = await wait_until(lambda: decided(reg, 4), timeout=120, message="v4's re-judgement")

        assert better["decision"] == "promoted"
        assert worse["decision"] == "rejected"
        assert (await reg.get("/v1/models/churn/aliases/champion")).json()["version"] == 4
        for found, rows in ((better, new_rows), (worse, old_rows)):
            rejudged = found["run"]["rejudged"]
            assert rejudged["stale_champion_version"] == 1
            assert rejudged["champion_version"] == 2
            assert rejudged["metrics"]["accuracy"] == pytest.approx(accuracy(drifted, rows))
            assert rejudged["champion_metrics"]["accuracy"] == pytest.approx(accuracy(second, rows))
        audit = (await reg.get("/v1/models/churn/audit", params={"limit": 100})).json()
        trail = [(a["action"], a["to_version"]) for a in sorted(audit, key=lambda a: a["id"]) if a["to_version"] >= 3]
        assert trail.index(("rejudge-requested", 3)) < trail.index(("rejudge", 3)) < trail.index(("reject", 3))
        assert trail.index(("rejudge-requested", 4)) < trail.index(("rejudge", 4)) < trail.index(("promote", 4))
        assert ("promote", 3) not in trail
        figures = next(a["reason"] for a in audit if a["action"] == "rejudge" and a["to_version"] == 3)
        assert f"vs champion v2 {accuracy(second, old_rows):.4f}" in figures
        assert "first compared with v1 0.7000" in figures

    asked = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.REJUDGEMENT_REQUESTED), expect=2)
    answered = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_REJUDGED), expect=2)
    assert sorted(e.version for r in asked if isinstance(e := parse_event(r.value), RejudgementRequested)) == [3, 4]
    assert sorted(e.version for r in answered if isinstance(e := parse_event(r.value), ModelRejudged)) == [3, 4]
