"""The monitor's alarm state on the real stack: it moves only once an alarm is durable.

An alarm whose write fails must not count as raised: neither the persistence
history it consumed nor the cool-down it would start may change, or the drift
would go unreported for a whole cool-down while nobody received the alarm.
"""

from __future__ import annotations

from typing import Any

import pytest

from cli.churn_stream import ChurnStream
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import DriftDetected, parse_event
from services.monitor.app import create_app
from services.monitor.settings import MonitorSettings
from tests.conftest import Isolation, serve
from tests.factories import promoted, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_monitor import drift_state, traffic
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


async def windows(client: Any, n: int) -> dict[str, Any] | None:
    state = await drift_state(client)
    return state if state.get("windows_evaluated", 0) >= n else None


async def failed_once(client: Any) -> bool:
    """The windows of a stored batch could not be judged and stored (from /metrics: the drift API reads the
    alarms table)."""
    text = (await client.get("/metrics")).text
    return any(line.startswith("driftloop_drift_windows_lost_total ") and not line.endswith(" 0.0")
               for line in text.splitlines())  # fmt: skip


async def test_an_alarm_whose_write_failed_is_raised_by_the_next_flagged_window(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    # decisive_z=0: persistence alone decides, whether a window's own labels arrive before or after it is judged.
    settings = isolated.settings(MonitorSettings, window_size=300, min_window=100, min_labels=100, label_window=300,
                                 persistence_k=2, persistence_n=3, decisive_z=0, cooldown_s=600)  # fmt: skip
    app, runtime = create_app(settings)
    stream = ChurnStream(seed=11)
    async with serve(app) as client:
        await publish(isolated, promoted("churn", 1, model))
        await wait_until(lambda: drift_state(client), message="the monitor to take the reference")
        for i in range(2):
            logged, labels = traffic(model, stream, 300, i * 300)
            await publish(isolated, logged, labels)
        await wait_until(lambda: windows(client, 2), timeout=60, message="2 quiet windows")

        stream.drifted = True
        logged, labels = traffic(model, stream, 300, 600)
        await publish(isolated, logged, labels)
        state = await wait_until(lambda: windows(client, 3), timeout=60, message="a first flagged window")
        assert state["report"]["flagged"]
        assert state["alarms"] == []  # one flagged window of the two persistence asks for
        # The second flagged window makes an alarm, but its write fails.
        async with runtime.db.acquire() as conn:
            await conn.execute("ALTER TABLE alarms RENAME TO alarms_away")
        logged, labels = traffic(model, stream, 300, 900)
        await publish(isolated, logged, labels)
        await wait_until(lambda: failed_once(client), timeout=60, message="the write of the alarm to fail")
        async with runtime.db.acquire() as conn:
            await conn.execute("ALTER TABLE alarms_away RENAME TO alarms")
        assert (await drift_state(client))["alarms"] == []

        # Next flagged window: the alarm comes now, not after a 10-minute cool-down nobody was told of.
        logged, labels = traffic(model, stream, 300, 1200)
        await publish(isolated, logged, labels)

        async def alarmed() -> dict[str, Any] | None:
            found = await drift_state(client)
            return found if found.get("alarms") else None

        state = await wait_until(alarmed, timeout=60, message="the alarm, raised by the next flagged window")
        assert state["windows_evaluated"] == 5
        assert len(state["alarms"]) == 1

    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.DRIFT_DETECTED), expect=1)
    assert len(records) == 1  # the failed alarm never left: its outbox row was rolled back with it
    event = parse_event(records[0].value)
    assert isinstance(event, DriftDetected)
    assert event.version == 1
