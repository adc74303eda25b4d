"""Operator tools against the real broker and PostgreSQL: lag, topics, DLQ replay."""

from __future__ import annotations

import asyncio

import pytest

from cli import ops
from libs.common import topics
from libs.common.errors import Conflict, NotFound
from libs.common.events import TrainingRequested
from libs.common.kafka import (
    Delivery,
    LagRow,
    Route,
    consumer_lag,
    create_broker,
    dead_letter,
    ensure_topics,
    subscribe,
)
from libs.common.settings import DatabaseSettings, TelemetrySettings
from libs.common.telemetry import setup_telemetry
from tests.conftest import Isolation
from tests.helpers import read_topic, wait_until

pytestmark = pytest.mark.integration


async def test_lag_shows_a_stuck_consumer_and_returns_to_zero(isolated: Isolation) -> None:
    settings = isolated.kafka
    topic = topics.TRAINING_REQUESTED
    await ensure_topics(settings)
    seen: list[str] = []
    release = asyncio.Event()

    async def handle(event: object, delivery: Delivery) -> None:
        assert isinstance(event, TrainingRequested)
        if seen:  # the first message goes through; the rest wait for the release
            await release.wait()
        seen.append(event.reason)

    telemetry = setup_telemetry("lag", TelemetrySettings())
    broker = create_broker(settings, telemetry)
    subscribe(broker, {topic: Route(handle, (TrainingRequested,))}, group="lagged", settings=settings,
              telemetry=telemetry)  # fmt: skip
    async with broker:
        await broker.start()
        for i in range(5):
            event = TrainingRequested(producer="t", model="m", dataset="d", reason=str(i))
            await broker.publish(event.to_bytes(), settings.topic(topic), key=b"m")

        async def lag_of(total: int) -> list[LagRow]:
            rows = await consumer_lag(settings.bootstrap, settings.topic_prefix)
            return rows if rows and sum(r.lag for r in rows) == total else []

        stuck = await wait_until(lambda: lag_of(4), timeout=60, message="a lag of 4 behind the stuck handler")
        assert [(r.committed, r.end) for r in stuck if r.lag] == [(1, 5)]
        release.set()
        rows = await wait_until(lambda: lag_of(0), timeout=60, message="lag back to zero")
    assert {r.group for r in rows} == {settings.group("lagged")}
    assert sum(r.end for r in rows) == 5
    assert len(seen) == 5


async def test_dead_letters_are_listed_and_replayed_once(isolated: Isolation, db_settings: DatabaseSettings) -> None:
    settings = isolated.kafka
    await ensure_topics(settings)
    original = settings.topic(topics.TRAINING_REQUESTED)
    body = TrainingRequested(producer="t", model="m", dataset="d", reason="poison").to_bytes()
    broker = create_broker(settings, setup_telemetry("dlq", TelemetrySettings()))
    async with broker:
        await broker.start()
        delivery = Delivery(topic=original, partition=2, offset=41, key=b"m", headers={"traceparent": "00-x"})
        await dead_letter(broker, body, delivery, group="trainer", error=RuntimeError("model store down"), attempts=4)

    letters = await ops.dead_letters(settings.bootstrap, settings.topic_prefix)
    assert len(letters) == 1
    summary = letters[0].summary()
    assert summary["original"] == f"{original}:2:41"
    assert summary["reason"] == "model store down"
    assert summary["group"] == "trainer"
    rows = {r["topic"]: r for r in await ops.topic_table(settings.bootstrap, settings.topic_prefix)}
    assert rows[topics.dlq(original)]["messages"] == 1

    database = DatabaseSettings(url=db_settings.url)
    result = await ops.replay(settings.bootstrap, database, letters[0].ref, actor="alice")
    assert result["replayed_to"].startswith(original + ":")
    replayed = await read_topic(settings.bootstrap, original, expect=1)
    assert replayed[0].value == body  # byte for byte
    headers = {k: bytes(v).decode() for k, v in replayed[0].headers}
    assert headers["x-replayed-from"] == letters[0].ref
    assert not any(k.startswith("x-dlq-") for k in headers)
    with pytest.raises(Conflict, match="already replayed"):
        await ops.replay(settings.bootstrap, database, letters[0].ref)
    assert letters[0].ref in await ops.replayed_refs(database)
    with pytest.raises(NotFound):
        await ops.replay(settings.bootstrap, database, f"{topics.dlq(original)}:0:999")
    with pytest.raises(NotFound, match="topic:partition:offset"):
        await ops.replay(settings.bootstrap, database, "nonsense")
