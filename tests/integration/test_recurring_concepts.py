"""A concept that returns: the drift job reuses the earlier champion that learnt it (real broker, PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest

from cli.churn_stream import ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest
from libs.common.events import ArtifactRef, DriftDetected, ModelTrained, parse_event
from services.trainer.adapters import repository
from services.trainer.app import create_app
from tests.conftest import Isolation, serve
from tests.factories import data_arrived, promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_trainer import jobs, publish, settings

pytestmark = pytest.mark.integration


async def test_a_drift_back_to_an_earlier_concept_registers_the_champion_that_learnt_it(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    learnt_a = trained_model(store, seed=5, rows=3000)  # v2: the first concept, on many rows
    learnt_b = trained_model(store, seed=6, rows=3000, drifted=True)  # v3: the second one, serving now
    gone = replace(learnt_a, artifact=_ref(99))  # v1: its file is gone; the drift job goes on without it
    # The first concept is back. Seeded: on these 300 rows (no search, so no clock in the outcome) the model
    # v2 learnt on 3,000 rows beats one trained on the 240 non-holdout rows (0.85 vs 0.67 offline).
    stream = ChurnStream(seed=15)
    arrived = data_arrived(store, "churn", [stream.batch(700), stream.batch(300)])
    post_drift = DatasetManifest.model_validate_json(store.get(arrived[1].manifest)).batches[1].created_at
    app, _ = create_app(settings(isolated, min_rows_first_model=10**6, drift_min_rows=300, search_iterations=1,
                                    quick_importance_rows=50))  # fmt: skip
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, gone), promoted("churn", 2, learnt_a, previous=1),
                      promoted("churn", 3, learnt_b, previous=2), *arrived)  # fmt: skip

        async def seen() -> bool:
            state = (await client.get("/v1/models/churn")).json()
            return bool(state.get("total_rows") == 1000 and state.get("champion_version") == 3)

        await wait_until(seen, message="the trainer to see both champions and the rows")
        drift = DriftDetected(producer="monitor", model="churn", version=3, dataset="churn", kinds=["performance"],
                              window_size=300, window_started_at=post_drift, summary="live accuracy fell")  # fmt: skip
        await publish(isolated, drift)

        async def drift_done() -> dict[str, Any] | None:
            found = [j for j in await jobs(client) if j["trigger"] == "drift"]
            assert all(j["status"] != "failed" for j in found), found
            return next((j for j in found if j["status"] == "succeeded"), None)

        done = await wait_until(drift_done, timeout=120, message="the drift job")
    assert done["quick"] is True  # a drift answer: the short search budget, brief importance
    assert done["reused_version"] == 2, done["search"]
    assert "earlier champion v2 reused" in done["search"]
    assert done["metrics"]["accuracy"] > done["champion_metrics"]["accuracy"] + 0.2  # judged like any challenger
    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_TRAINED), expect=1)
    event = parse_event(records[0].value)
    assert isinstance(event, ModelTrained)
    assert event.artifact.sha256 == learnt_a.artifact.sha256  # v2's pipeline, unchanged
    assert event.params["reused_version"] == 2
    assert event.champion_version == 3
    # A job answering a drift measures its card's permutation importance briefly: few rows, one shuffle.
    assert event.cards is not None
    card = json.loads(store.get(event.cards.model_json))
    assert card["importance"]["repeats"] == 1
    assert card["importance"]["rows"] <= 50


def _ref(n: int) -> ArtifactRef:
    return ArtifactRef(uri=f"file:///a/{n}.skops", sha256=f"{n:064x}", size=1)


async def test_earlier_champions_keep_each_concepts_last_model_and_never_a_newer_version(isolated: Isolation) -> None:
    app, runtime = create_app(settings(isolated, min_rows_first_model=10**6))
    async with serve(app), runtime.db.acquire() as conn:

        async def promote(version: int, artifact: int) -> None:
            await repository.set_champion(conn, "m", version, _ref(artifact), "m")

        async def drift_job() -> None:
            await conn.execute(
                "INSERT INTO jobs (id, model, dataset, dataset_version, manifest, trigger, reason, status) "
                "VALUES ($1, 'm', 'm', 1, '{}', 'drift', 'test', 'succeeded')", uuid.uuid4(),
            )  # fmt: skip

        await promote(1, 1)  # concept A, its last model: a drift job was queued while it served
        await drift_job()
        for version in (2, 3, 4, 5):  # concept B: its drift model and three post-drift refreshes
            await promote(version, version)
        await promote(6, 1)  # v1's pipeline reused (a drift back to A was answered by it)
        await promote(7, 7)  # a newer version, rolled back below: it may have trained on the newest rows
        await promote(5, 5)  # the rollback: v5 serves again
        await drift_job()
        picked = await repository.earlier_champions(conn, "m", 5, 3)
    # v1's pipeline first (it ended a concept; as v1, v6 not being older than the champion), then B's newest;
    # never the champion's own pipeline, nor v7 or v6.
    assert [e["version"] for e in picked] == [1, 4, 3]
    assert picked[0]["artifact"]["sha256"] == _ref(1).sha256
