"""The prediction log on the real broker: a batch whose publish failed after the broker
stored it (the acknowledgement was lost) is sent again as the same event, so the
monitor dedupes it instead of seeing its request ids twice under a new id."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import KafkaTimeoutError

from cli.churn_stream import FEATURES, ChurnStream
from libs.common import topics
from libs.common.events import PredictionsLogged, parse_event
from libs.common.kafka import BrokerPublisher, create_broker
from libs.common.settings import TelemetrySettings
from libs.common.telemetry import setup_telemetry
from services.serving.adapters.prediction_log import PredictionLog
from services.serving.domain.features import CompiledSchema
from services.serving.domain.models import Inference
from services.serving.domain.predictions import Served
from tests.conftest import Isolation
from tests.factories import CHURN
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


class AckLost:
    """Publishes for real, then reports a timeout the first ``failures`` times:
    the broker has the message, the producer never heard back."""

    def __init__(self, publisher: BrokerPublisher, failures: int) -> None:
        self.publisher = publisher
        self.failures = failures

    async def send(
        self, topic: str, payload: bytes, *, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        sent = await self.publisher.send(topic, payload, key=key, headers=headers)
        if self.failures > 0:
            self.failures -= 1
            await sent  # stored
            raise KafkaTimeoutError("acknowledgement lost")
        return sent


def served(n: int) -> Served:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=3).batch(n)]
    return Served(
        request_ids=[f"req-{i}" for i in range(n)],
        columns=CompiledSchema(CHURN).from_instances(rows),
        inference=Inference(np.array(["no"] * n), None),
        classes=None,
        features=list(CHURN.features),
        at=datetime.now(UTC),
    )


async def test_a_retried_batch_keeps_its_event_id(isolated: Isolation) -> None:
    telemetry = setup_telemetry("serving", TelemetrySettings(json_logs=False))
    broker = create_broker(isolated.kafka, telemetry)
    async with broker:
        await broker.start()
        flaky: Any = AckLost(BrokerPublisher(broker, isolated.kafka.topic_prefix), failures=1)
        log = PredictionLog(flaky, telemetry, batch_size=10, flush_s=60)
        log.add("churn", 1, served(10))
        await log.flush()  # stored by the broker, reported as failed: kept for the next flush
        log.add("churn", 1, served(5))
        await log.flush()
    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.PREDICTIONS_LOGGED), expect=3)
    events = [parse_event(r.value) for r in records]
    assert all(isinstance(e, PredictionsLogged) for e in events)
    first, retried, later = events
    assert retried.event_id == first.event_id  # the same event again: the monitor counts it once
    assert later.event_id != first.event_id
    assert [len(e.records) for e in events if isinstance(e, PredictionsLogged)] == [10, 10, 5]
