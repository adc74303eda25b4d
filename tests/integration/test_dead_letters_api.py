"""GET /v1/dead-letters on the monitor, on the real broker: the latest dead letters of each dead-letter
topic with their reasons, bounded, newest first, bodies only previewed."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaError

from devstack.embedded import free_port
from libs.common import topics
from libs.common.auth import Role
from libs.common.kafka.dead_letters import latest_dead_letters
from libs.common.settings import KafkaSettings
from services.monitor.app import create_app
from services.monitor.settings import MonitorSettings
from tests.conftest import Isolation, bearer, serve
from tests.helpers import send_raw, wait_until

pytestmark = pytest.mark.integration


async def test_the_latest_dead_letters_come_with_their_reasons(isolated: Isolation) -> None:
    app, _ = create_app(isolated.settings(MonitorSettings))
    async with serve(app) as client:
        assert (await client.get("/v1/dead-letters")).json()["topics"] == []
        labels_topic = isolated.kafka.topic(topics.LABELS_ARRIVED)
        for i in range(3):
            await send_raw(isolated.kafka.bootstrap, labels_topic, b"\x00not json %d " % i + b"x" * 400)

        async def three() -> dict[str, Any] | None:
            seen = (await client.get("/v1/dead-letters", params={"per_topic": 50})).json()
            if sum(len(t["messages"]) for t in seen["topics"]) != 3:
                return None
            answer: dict[str, Any] = (await client.get("/v1/dead-letters", params={"per_topic": 2})).json()
            return answer  # asked once all three are there: bounded to the newest two

        listed = await wait_until(three, timeout=60, message="three dead letters")
        (dlq,) = listed["topics"]
        assert dlq["topic"] == labels_topic + topics.DLQ_SUFFIX
        newest, older = dlq["messages"]  # bounded by per_topic, newest first
        assert newest["preview"].startswith("\\x00not json 2")
        assert older["preview"].startswith("\\x00not json 1")
        assert newest["preview"].endswith("…")
        assert len(newest["preview"]) <= 121
        assert newest["size"] == len(b"\x00not json 2 ") + 400
        assert newest["source_topic"] == labels_topic
        assert newest["group"]
        assert newest["reason"]
        assert newest["error_type"]
        assert newest["ref"] == f"{dlq['topic']}:0:2"

        reader = await client.get("/v1/dead-letters", headers=await bearer(app, Role.READER))
        assert reader.status_code == 200  # a reader reads everything, rejected rows with their reasons too
        assert reader.json()["topics"][0]["messages"][0]["reason"] == newest["reason"]
        bad = await client.get("/v1/dead-letters", params={"per_topic": 0})
        assert bad.status_code == 422
        assert bad.json()["details"]["problems"][0]["field"] == "query.per_topic"


async def test_a_broker_that_does_not_answer_is_an_error_not_a_hang() -> None:
    closed = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens: the API answers 503
    with pytest.raises(KafkaError):
        await latest_dead_letters(closed, per_topic=5, timeout_s=5)
