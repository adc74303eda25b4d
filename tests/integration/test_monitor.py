"""The monitor on the real stack: windows, drift.detected with evidence, live accuracy from labels."""

from __future__ import annotations

from typing import Any

import pytest

from cli.churn_stream import FEATURES, TARGET, ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import DriftDetected, Label, LabelsArrived, PredictionRecord, PredictionsLogged, parse_event
from libs.common.frames import features_frame
from services.monitor.app import create_app
from services.monitor.settings import MonitorSettings
from tests.conftest import Isolation, serve
from tests.factories import CHURN, promoted, trained_model
from tests.helpers import outbox_drained, read_topic, wait_until
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


def traffic(model: Any, stream: ChurnStream, n: int, start: int) -> tuple[PredictionsLogged, LabelsArrived]:
    rows = stream.batch(n)
    predicted = model.pipeline.predict(features_frame(CHURN, rows))
    records = [
        PredictionRecord(request_id=f"r{start + i}", features={k: r[k] for k in FEATURES}, prediction=str(p))
        for i, (r, p) in enumerate(zip(rows, predicted, strict=True))
    ]
    labels = [Label(request_id=f"r{start + i}", label=r[TARGET]) for i, r in enumerate(rows)]
    return (
        PredictionsLogged(producer="test", model="churn", version=1, records=records),
        LabelsArrived(producer="test", model="churn", labels=labels),
    )


async def drift_state(client: Any) -> dict[str, Any]:
    answer = await client.get("/v1/models/churn/drift")
    return answer.json() if answer.status_code == 200 else {}


async def test_stationary_traffic_is_quiet_and_drift_is_detected_with_evidence(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    settings = isolated.settings(
        MonitorSettings, window_size=300, min_window=100, min_labels=100, label_window=300, lag_interval_s=2
    )
    app, runtime = create_app(settings)
    stream = ChurnStream(seed=11)
    async with serve(app) as client:
        assert (await client.get("/v1/models/churn/drift")).status_code == 404
        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: drift_state(client), message="the monitor to take the reference")
        for i in range(4):  # 4 stationary windows of 300, labelled
            logged, labels = traffic(model, stream, 300, i * 300)
            await publish(isolated, logged, labels)
        state = await wait_until(lambda: _windows(client, 4), timeout=60, message="4 windows")
        assert state["report"]["flagged"] is False
        assert state["alarms"] == []
        assert state["live"]["labels"] == 300
        assert state["live"]["value"] > 0.65

        stream.drifted = True
        for i in range(4, 8):
            logged, labels = traffic(model, stream, 300, i * 300)
            await publish(isolated, labels, logged)  # labels may come first: they are matched later
            await publish(isolated, logged)  # a redelivery changes nothing
        state = await wait_until(lambda: _alarmed(client), timeout=60, message="a drift alarm")
        assert state["windows_evaluated"] == 8
        report = state["report"]
        assert report["flagged"]
        assert "data_drift" in report["kinds"]
        drifted = {f["feature"] for f in report["features"] if f["drifted"]}
        assert {"monthly_charges", "support_calls", "plan"} <= drifted
        assert "age" not in drifted
        assert "region" not in drifted
        await outbox_drained(runtime.db)
        metrics = (await client.get("/metrics")).text
        assert 'driftloop_drift_score{feature="plan",model="churn",statistic="psi"}' in metrics
        assert 'driftloop_drift_alarms_total{model="churn"} 1.0' in metrics

        async def lag_exported() -> bool:  # the monitor exports every group's lag
            return 'driftloop_consumer_lag{group="' in (await client.get("/metrics")).text

        await wait_until(lag_exported, timeout=30, message="the consumer lag gauge")

    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.DRIFT_DETECTED), expect=1)
    assert len(records) == 1  # persistence + cool-down: one alarm, not one per window
    event = parse_event(records[0].value)
    assert isinstance(event, DriftDetected)
    assert event.model == "churn"
    assert event.version == 1
    assert event.dataset == "churn"
    assert {f.feature for f in event.features if f.drifted} >= {"monthly_charges", "plan"}
    psi = next(f for f in event.features if f.feature == "monthly_charges").statistics["psi"]
    assert psi > 0.1


async def _windows(client: Any, n: int) -> dict[str, Any] | None:
    state = await drift_state(client)
    return state if state.get("windows_evaluated", 0) >= n and state.get("live") else None


async def _alarmed(client: Any) -> dict[str, Any] | None:
    state = await drift_state(client)
    return state if state.get("alarms") and state.get("windows_evaluated") == 8 else None
