"""The monitor consumes predictions.logged in batches: one poison message is dead-lettered while its
neighbours in the batch are stored and binned, a message delivered twice counts once, and labels that
overtook their predictions are still matched."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from cli.churn_stream import FEATURES, TARGET, ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import Label, LabelsArrived
from libs.common.kafka import Delivery
from libs.common.logged import decode_logged
from services.monitor.adapters import repository
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors
from services.monitor.app import create_app, drift_config
from services.monitor.handlers import predictions_logged
from services.monitor.settings import MonitorSettings
from services.serving.adapters.prediction_log import encode
from tests.conftest import Isolation, serve
from tests.factories import promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


def logged(rows: list[dict[str, Any]], first: int, version: int = 1) -> bytes:
    """A predictions.logged message as serving encodes it (columns), for ``rows``."""
    columns = {
        "request_ids": [f"r{first + i}" for i in range(len(rows))], "at": datetime.now(UTC),
        "predictions": ["no"] * len(rows), "probabilities": None,
        "features": {name: [r[name] for r in rows] for name in FEATURES},
    }  # fmt: skip
    return encode("churn", version, columns, len(rows)).payload


async def test_a_batch_with_a_poison_message_and_a_repeat_stores_the_rest_once(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=1000)
    app, _ = create_app(isolated.settings(MonitorSettings, window_size=300, min_window=100))
    stream = ChurnStream(seed=4)
    rows = [stream.batch(200) for _ in range(3)]
    good = [logged(batch, 1000 * i) for i, batch in enumerate(rows)]
    poison = logged(stream.batch(5), 9000).replace(b'"request_ids":["r9000",', b'"request_ids":[')
    early = LabelsArrived(producer="crm", model="churn", labels=[
        Label(request_id=f"r{1000 + i}", label=rows[1][i][TARGET]) for i in range(10)])  # fmt: skip
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: _state(client), message="the monitor to take the reference")
        await publish(isolated, early)  # labels first: parked until their predictions come
        producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka.bootstrap)
        await producer.start()
        try:
            for payload in (good[0], poison, good[1], good[0], good[2]):  # good[0] twice: delivered again
                await producer.send(isolated.kafka.topic(topics.PREDICTIONS_LOGGED), payload, key=b"churn")
            await producer.flush()
        finally:
            await producer.stop()
        state = await wait_until(lambda: _state(client, records=600, labels=10), timeout=60,
                                 message="600 predictions binned and 10 early labels scored")  # fmt: skip
        assert (state["windows_evaluated"], state["current_window_records"]) == (2, 0)  # 600 = 3 x 200, not 800

    dead = await read_topic(isolated.kafka.bootstrap, topics.dlq(isolated.kafka.topic(topics.PREDICTIONS_LOGGED)),
                            expect=1)  # fmt: skip
    headers = {k: bytes(v).decode() for k, v in dead[0].headers}
    assert headers[topics.HEADER_DLQ_ERROR_TYPE] == "InvalidEvent"
    assert "expected a list of 4 values" in headers[topics.HEADER_DLQ_REASON]
    assert headers[topics.HEADER_DLQ_CONSUMER_GROUP] == isolated.kafka.group("monitor")


async def _state(client: Any, records: int = 0, labels: int = 0) -> dict[str, Any] | None:
    answer = await client.get("/v1/models/churn/drift")
    if answer.status_code != 200:
        return None
    state: dict[str, Any] = answer.json()
    binned = state["windows_evaluated"] * 300 + state["current_window_records"]
    return state if binned >= records and state["labels_seen"] >= labels else None


async def test_a_batch_asks_for_an_unwatched_versions_monitor_once(
    isolated: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of a version the monitor does not watch (a canary's) looks its reference up once, not once
    a message: each lookup of a version not in memory is a query."""
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=1000)
    settings = isolated.settings(MonitorSettings, window_size=300, min_window=100)
    app, rt = create_app(settings)
    lookups: list[str] = []
    monitored_reference = repository.monitored_reference

    async def counted(conn: Any, model: str) -> Any:
        lookups.append(model)
        return await monitored_reference(conn, model)

    stream = ChurnStream(seed=5)
    canary = [decode_logged(logged(stream.batch(20), 100 * i, version=2)) for i in range(4)]
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: _state(client), message="the monitor to take the reference")
        monitors = Monitors(rt.store, drift_config(settings), window_size=300, label_window=300, sample_size=2000)
        handle = predictions_logged.Handler(rt, monitors, MonitorMetrics(CollectorRegistry()))
        monkeypatch.setattr(repository, "monitored_reference", counted)
        await handle([(event, Delivery("t", 0, i, b"churn")) for i, event in
                      enumerate(canary)])  # fmt: skip
        await handle.drain()
        stored = await rt.db.fetchval("SELECT count(*) FROM predictions WHERE version = 2")
    assert stored == 80
    assert lookups == ["churn"]
