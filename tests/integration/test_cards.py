"""Cards on the real stack: ingest stores a non-input sensitive attribute, the trainer builds the model
and data cards for the version, the registry links them and renders the alias trail when read; the
cards' content is checked against the registry's own record of the version."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Any

import numpy as np
import pytest

from cli.churn_stream import SCHEMA, ChurnStream
from libs.common.artifacts import ArtifactStore
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from services.trainer.app import create_app as trainer_app
from tests.conftest import Isolation, serve
from tests.helpers import wait_until
from tests.integration.test_registry import trained
from tests.integration.test_trainer import publish
from tests.integration.test_trainer import settings as trainer_settings

pytestmark = pytest.mark.integration

DESCRIPTION = "Churn risk of retail customers, to choose who gets a retention offer. Not for pricing."
DECLARED = SCHEMA | {
    "attributes": [{"name": "sex", "dtype": "categorical", "nullable": True}],
    "sensitive": ["sex", "region"],
    "description": DESCRIPTION,
}


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Churn records with a sex attribute the model never sees (missing in a tenth of the rows)."""
    rng = np.random.default_rng(seed)
    out = ChurnStream(seed=seed).batch(n)
    for r in out:
        r["sex"] = None if rng.random() < 0.1 else str(rng.choice(["f", "m"]))
    return out


async def test_every_version_gets_cards_that_match_the_registry(isolated: Isolation) -> None:
    async with AsyncExitStack() as stack:
        ingest = await stack.enter_async_context(serve(ingest_app(isolated.settings(IngestSettings))[0]))
        registry = await stack.enter_async_context(serve(registry_app(isolated.settings(RegistrySettings))[0]))
        await stack.enter_async_context(serve(trainer_app(trainer_settings(isolated))[0]))

        unknown = await ingest.put("/v1/datasets/loans", json=DECLARED | {"sensitive": ["race"]})
        assert unknown.status_code == 422, unknown.text
        assert "race" in unknown.json()["message"]
        assert (await ingest.put("/v1/datasets/churn", json=DECLARED)).status_code == 201
        for seed in (1, 2):
            stored = await ingest.post("/v1/datasets/churn/records", json=rows(400, seed))
            assert stored.status_code == 200, stored.text
            assert stored.json()["rejected"] == 0

        version = await wait_until(lambda: _version(registry), timeout=120, message="v1 registered")
        answer = await registry.get("/v1/models/churn/versions/1/card")
        assert answer.status_code == 200, answer.text
        cards = answer.json()

    model, data = cards["model_card"], cards["data_card"]
    assert version["card_error"] is None
    assert set(version["cards"]) == {"model_markdown", "model_json", "data_markdown", "data_json"}
    # The model card says what the registry recorded for the version.
    assert model["intended_use"] == DESCRIPTION
    assert model["job_id"] == version["run"]["job_id"]
    assert model["params"] == version["run"]["params"]
    assert model["training_data"]["dataset_version"] == version["lineage"]["dataset_version"] == 2
    assert model["training_data"]["training_rows"] == version["run"]["training_rows"] == 640
    assert {k: m["value"] for k, m in model["metrics"].items()} == version["metrics"]
    assert all(m["low"] <= m["value"] <= m["high"] for m in model["metrics"].values())
    assert model["fairness"]["differences"] == version["fairness"]
    assert set(version["fairness"]) == {f"{m}:{f}" for f in ("sex", "region") for m in
                                        ("demographic_parity_difference", "equalized_odds_difference",
                                         "accuracy_difference")}  # fmt: skip
    groups = {r["group"] for r in model["fairness"]["groups"]["sex"]}
    assert groups == {"f", "m", "(missing)"}  # the attribute was stored by ingest though no feature
    assert sum(r["count"] for r in model["fairness"]["groups"]["sex"]) == 160
    assert {f["feature"] for f in model["importance"]["features"]} == {f["name"] for f in SCHEMA["features"]}
    assert model["champion"] is None
    assert version["run"]["champion_version"] is None  # nothing to compare with: the registry agrees
    assert (model["model"], model["version"]) == (version["model"], version["version"]) == ("churn", 1)
    assert model["training_data"]["dataset"] == version["lineage"]["dataset"] == "churn"
    assert model["training_data"]["trigger"] == version["lineage"]["trigger"]
    assert model["primary_metric"] == version["primary_metric"]
    primary = version["primary_metric"]
    assert f"| {primary} | {version['metrics'][primary]:.4f} |" in cards["model_markdown"]
    assert f"version {version['lineage']['dataset_version']}, trigger `{version['lineage']['trigger']}`" in (
        cards["model_markdown"])  # fmt: skip
    # What changed after training comes from the registry's audit when the card is read.
    assert model["aliases"] == cards["aliases"] == ["champion"]
    assert [(a["action"], a["alias"], a["to_version"]) for a in model["alias_trail"]] == [("promote", "champion", 1)]
    assert cards["model_markdown"].startswith("# Model card: v1 of churn")
    assert "| promote | champion | None | 1 | policy |" in cards["model_markdown"]
    assert DESCRIPTION in cards["model_markdown"]
    # The data card: schema with roles, row counts, distributions, lineage.
    columns = {c["name"]: c for c in data["columns"]}
    assert columns["sex"]["role"] == "attribute"
    assert columns["sex"]["sensitive"]
    assert 0.03 < columns["sex"]["missing_rate"] < 0.2
    assert data["rows"]["in_version"] == 800
    assert (data["dataset"], data["dataset_version"]) == (version["lineage"]["dataset"], 2)
    assert data["rows"]["training"] == version["run"]["training_rows"]
    assert {c["name"]: c["dtype"] for c in data["columns"] if c["role"] == "feature"} == {
        f["name"]: f["dtype"] for f in version["schema"]["features"]}  # fmt: skip
    assert [c["name"] for c in data["columns"] if c["sensitive"]] == ["region", "sex"]
    assert data["lineage"]["batches"] == 2
    assert sum(b["rows"] for b in data["lineage"]["listed"]) == 800
    assert set(data["distributions"]) == {f["name"] for f in SCHEMA["features"]}
    assert data["distributions"]["plan"]["count"] == 640


async def test_a_version_without_cards_says_why(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    event = trained(store, 0.8).model_copy(update={"card_error": "card facts failed: ValueError: boom"})
    async with serve(registry_app(isolated.settings(RegistrySettings))[0]) as client:
        await publish(isolated, event)
        await wait_until(lambda: _version(client), message="v1 registered")
        missing = await client.get("/v1/models/churn/versions/1/card")
        assert missing.status_code == 404
        assert missing.json()["message"] == "churn v1 has no cards: card facts failed: ValueError: boom"
        assert (await client.get("/v1/models/churn/versions/1")).json()["decision"] == "promoted"
        assert (await client.get(f"/v1/models/churn/versions/{uuid.uuid4().int % 9 + 2}/card")).status_code == 404


async def _version(client: Any) -> dict[str, Any] | None:
    answer = await client.get("/v1/models/churn/versions/1")
    return answer.json() if answer.status_code == 200 else None
