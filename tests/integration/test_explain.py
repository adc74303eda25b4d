"""POST /v1/models/{m}/explain on the registry, with a real signed pipeline and its holdout."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from cli.churn_stream import ChurnStream
from libs.common import models
from libs.common.artifacts import ArtifactStore
from libs.common.frames import features_frame
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from services.trainer.adapters.rejudge import holdout_parquet
from tests.conftest import Isolation, serve
from tests.factories import CHURN
from tests.helpers import wait_until
from tests.integration.test_registry import trained
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


async def test_explanations_add_up_to_the_prediction_and_bad_instances_are_named(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    holdout = store.put(holdout_parquet(pd.DataFrame(ChurnStream(seed=9).batch(300))), suffix=".holdout.parquet")
    event = trained(store, 0.8).model_copy(update={"holdout": holdout})
    instances = ChurnStream(seed=11).batch(3)
    for row in instances:
        del row["churned"]
    async with serve(create_app(isolated.settings(RegistrySettings))[0]) as client:
        await publish(isolated, event)
        await wait_until(lambda: _registered(client), message="v1 registered")
        answer = await client.post("/v1/models/churn/explain", json={"instances": instances, "samples": 32})
        assert answer.status_code == 200, answer.text
        body = answer.json()

        bad = [instances[0], {**instances[1], "age": "old", "colour": "red"}, {k: v for k, v in instances[2].items()
                                                                              if k != "plan"}]  # fmt: skip
        refused = await client.post("/v1/models/churn/explain", json={"instances": bad})
        assert refused.status_code == 422, refused.text
        fields = refused.json()["details"]["fields"]
        assert set(fields) == {"instances[1].age", "instances[1].colour", "instances[2].plan"}
        assert "instances[1].age" in refused.json()["message"]
        assert (await client.post("/v1/models/churn/explain", json={"instances": []})).status_code == 422
        assert (await client.post("/v1/models/nope/explain", json={"instances": instances})).status_code == 404
        assert (await client.post("/v1/models/churn/explain",
                                  json={"instances": instances, "version": 9})).status_code == 404  # fmt: skip

    pipeline = models.load(store, event.artifact)
    x = features_frame(CHURN, instances)
    probabilities = pipeline.predict_proba(x)
    assert body["version"] == 1
    assert body["background_rows"] == 100
    for i, explanation in enumerate(body["explanations"]):
        predicted = pipeline.predict(x)[i]
        assert explanation["prediction"] == predicted
        assert explanation["explained"] == f"probability of {predicted}"
        assert explanation["output"] == pytest.approx(probabilities[i][list(pipeline.classes_).index(predicted)])
        assert set(explanation["contributions"]) == {f.name for f in CHURN.features}
        total = explanation["base_value"] + sum(explanation["contributions"].values())
        assert total == pytest.approx(explanation["output"], abs=1e-9)


async def _registered(client: Any) -> bool:
    return bool((await client.get("/v1/models/churn/versions/1")).status_code == 200)
