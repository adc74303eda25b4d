"""Live group metrics on the real broker and PostgreSQL: labels for a model whose dataset declares a
sensitive input (region) and a sensitive attribute that is not an input (sex, sent with the label) give
the hand-computed group figures at GET /v1/models/{m}/groups and in /metrics."""

from __future__ import annotations

from typing import Any

import pytest

from cli.churn_stream import FEATURES, SCHEMA, ChurnStream
from libs.common.artifacts import ArtifactStore
from libs.common.events import Label, LabelsArrived, PredictionRecord, PredictionsLogged
from libs.common.schema import DatasetSchema
from services.monitor.app import create_app
from services.monitor.settings import MonitorSettings
from tests.conftest import Isolation, serve
from tests.factories import promoted, trained_model
from tests.helpers import wait_until
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration

GOVERNED = DatasetSchema.model_validate(
    SCHEMA | {"attributes": [{"name": "sex", "dtype": "categorical", "nullable": True}], "sensitive": ["region", "sex"]}
)
BASE = ChurnStream(seed=3).batch(1)[0]


def case(i: int, region: str, prediction: str, label: str, sex: str | None) -> tuple[PredictionRecord, Label]:
    features = {k: BASE[k] for k in FEATURES} | {"region": region}
    record = PredictionRecord(request_id=f"g{i}", features=features, prediction=prediction)
    return record, Label(request_id=f"g{i}", label=label, attributes={"sex": sex} if sex else None)


async def test_labels_give_live_group_figures_per_sensitive_feature(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=600)
    app, _ = create_app(isolated.settings(MonitorSettings, min_group_rows=10, group_window=1000))
    # f (north): always "yes", right half the time; m (south): always "no", right half the time;
    # ten more in the north whose labels carry no sex: they are "(unknown)", right every time.
    f = [case(i, "north", "yes", "yes" if i % 2 else "no", "f") for i in range(20)]
    m = [case(i, "south", "no", "yes" if i % 2 else "no", "m") for i in range(20, 40)]
    unknown = [case(i, "north", "yes", "yes", None) for i in range(40, 50)]
    logged = PredictionsLogged(producer="test", model="churn", version=1, records=[r for r, _ in f + m + unknown])

    def labels(cases: list[tuple[PredictionRecord, Label]]) -> LabelsArrived:
        return LabelsArrived(producer="test", model="churn", labels=[label for _, label in cases])

    async with serve(app) as client:
        missing = await client.get("/v1/models/churn/groups")
        assert missing.status_code == 404
        assert "not monitored" in missing.json()["message"]
        await publish(isolated, promoted("churn", 1, model).model_copy(update={"dataset_schema": GOVERNED}))
        await wait_until(lambda: _status(client, 200), message="the monitor to take the reference")
        # m's labels overtake their predictions: they wait, with their attributes, and are matched later.
        await publish(isolated, labels(m))
        await publish(isolated, logged, labels(f + unknown))
        await publish(isolated, labels(f))  # a redelivered label changes nothing
        live = await wait_until(lambda: _labelled(client, 50), timeout=60, message="50 labelled predictions")

        assert (live["version"], live["champion"], live["positive_class"]) == (1, 1, "yes")
        sex = _feature(live, "sex")
        assert (sex["source"], sex["unknown"]) == ("attribute", 10)
        groups = {g["group"]: g for g in sex["groups"]}
        assert groups["f"]["count"] == groups["m"]["count"] == 20
        assert groups["f"]["metrics"]["selection_rate"] == 1.0
        assert groups["m"]["metrics"]["selection_rate"] == 0.0
        assert groups["f"]["metrics"]["accuracy"] == groups["m"]["metrics"]["accuracy"] == 0.5
        assert (groups["(unknown)"]["count"], groups["(unknown)"]["compared"]) == (10, False)
        assert sex["differences"] == {
            "demographic_parity_difference": 1.0, "equalized_odds_difference": 1.0, "accuracy_difference": 0.0,
        }  # fmt: skip
        region = _feature(live, "region")
        north = next(g for g in region["groups"] if g["group"] == "north")
        assert (region["source"], north["count"]) == ("input", 30)
        assert north["metrics"]["accuracy"] == pytest.approx(20 / 30)
        assert region["differences"]["accuracy_difference"] == pytest.approx(20 / 30 - 0.5)
        assert live["differences"]["demographic_parity_difference:region"] == 1.0

        metrics = (await client.get("/metrics")).text
        assert ('driftloop_live_fairness_difference{difference="demographic_parity_difference",feature="sex",'
                'model="churn"} 1.0') in metrics  # fmt: skip
        assert 'driftloop_live_group_labels{feature="sex",group="f",model="churn"} 20.0' in metrics

        report = (await client.get("/v1/models/churn/drift/report")).text
        assert "<h2>Live group metrics</h2>" in report
        section = report[report.index('data-feature="sex"') :]  # region comes first, as declared
        assert '<tr class="group" data-group="f"><td>f</td><td class="n">20</td>' in section
        assert "(unknown)" in section
        assert "not compared" in section

        other = (await client.get("/v1/models/churn/groups", params={"version": 2})).json()
        assert other["labels"] == 0  # a version with no labelled predictions: no groups yet, not an error
        small = await client.get("/v1/models/churn/groups", params={"window": 1})
        assert small.status_code == 422
        assert small.json()["details"]["problems"][0]["field"] == "query.window"


async def _status(client: Any, status: int) -> bool:
    return bool((await client.get("/v1/models/churn/groups")).status_code == status)


async def _labelled(client: Any, n: int) -> dict[str, Any] | None:
    answer = (await client.get("/v1/models/churn/groups")).json()
    return answer if answer.get("labels") == n else None


def _feature(live: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in live["features"] if f["feature"] == name)


async def test_a_record_without_its_sensitive_input_is_unknown_and_one_with_null_missing(isolated: Isolation) -> None:
    """The records form of predictions.logged (other producers than serving): a record that does not carry
    the sensitive input is in the group "(unknown)", as a columnar batch without that column is; one that
    logged it as null is in "(missing)"."""
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=600)
    app, _ = create_app(isolated.settings(MonitorSettings, min_group_rows=5))
    inputs = {k: BASE[k] for k in FEATURES if k != "region"}
    given = [{"region": "north"}] * 6 + [{"region": None}] * 5 + [{}] * 4
    records = [PredictionRecord(request_id=f"n{i}", features=inputs | region, prediction="yes")
               for i, region in enumerate(given)]  # fmt: skip
    logged = PredictionsLogged(producer="test", model="churn", version=1, records=records)
    labels = LabelsArrived(producer="test", model="churn", labels=[Label(request_id=r.request_id, label="yes")
                                                                   for r in records])  # fmt: skip
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model).model_copy(update={"dataset_schema": GOVERNED}))
        await wait_until(lambda: _status(client, 200), message="the monitor to take the reference")
        await publish(isolated, logged, labels)
        live = await wait_until(lambda: _labelled(client, 15), timeout=60, message="15 labelled predictions")
    region = _feature(live, "region")
    assert {g["group"]: g["count"] for g in region["groups"]} == {"north": 6, "(missing)": 5, "(unknown)": 4}
    assert region["unknown"] == 4
