"""Background tasks stop when cancelled at any moment, against the real broker.

aiokafka's client ``close()`` swallows a cancellation that arrives while it waits for
its metadata task. The broker watch closes an admin client every few seconds, so a
service stopped at that moment waited for the watch for ever (its stop hung until the
45 s watchdog, then leaked the relay and the consumers). These tests cancel exactly
there: the task's await chain (libs.common.tasks.where) says when it is inside close."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from libs.common import topics
from libs.common.brokerwatch import BrokerWatch
from libs.common.settings import KafkaSettings, TelemetrySettings
from libs.common.tasks import shielded, where
from libs.common.telemetry import setup_telemetry

pytestmark = pytest.mark.integration


async def _cancel_inside(task: asyncio.Task[object], *steps: str, timeout: float = 20) -> None:
    """Cancel ``task`` in the loop iteration in which it is suspended in one of ``steps``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(step in where(task) for step in steps):
        assert not task.done(), "the task ended before reaching the step"
        assert loop.time() < deadline, f"the task never reached {steps}"
        await asyncio.sleep(0)
    task.cancel()


async def test_aiokafka_close_swallows_a_cancel_and_shielded_does_not(kafka_settings: KafkaSettings) -> None:
    """Why the shield: the bare close carries on after a cancel, the shielded one does not."""

    async def close(shield: bool) -> str:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
        await admin.start()
        await admin.list_topics()
        await (shielded(admin.close()) if shield else admin.close())
        return "carried on"

    bare = asyncio.create_task(close(shield=False))
    await _cancel_inside(bare, "close (client.py")
    assert await bare == "carried on"  # aiokafka's behaviour, the reason for this module

    guarded = asyncio.create_task(close(shield=True))
    await _cancel_inside(guarded, "shielded (tasks.py")
    with pytest.raises(asyncio.CancelledError):
        await guarded


async def test_the_broker_watch_stops_when_cancelled_while_closing_its_client(kafka_settings: KafkaSettings) -> None:
    settings = kafka_settings.model_copy(update={"topic_prefix": "stopping."})
    watch = BrokerWatch(settings, setup_telemetry("watch", TelemetrySettings()), [topics.TOPICS[0]], interval_s=0.01)
    for _ in range(3):
        task = asyncio.create_task(watch.run())
        await _cancel_inside(task, "close (client.py", "shielded (tasks.py")  # closing its admin client
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, f"the watch ran on after its cancel: {where(task)}"
        assert task.cancelled()
