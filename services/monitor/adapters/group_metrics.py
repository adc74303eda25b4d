"""The live group metrics of the monitored models: computed on request (the API) and every
``group_interval_s`` for Prometheus, over the latest labelled predictions kept in PostgreSQL (so every
replica, and a restarted monitor, sees the same window)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from libs.common.service import Runtime
from services.monitor.adapters import groups as group_window
from services.monitor.adapters.group_gauges import GroupGauges
from services.monitor.adapters.state import Monitors
from services.monitor.domain.groups import LiveGroups, live_groups
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.settings import MonitorSettings

log = logging.getLogger(__name__)


async def compute(
    rt: Runtime, monitor: ModelMonitor, settings: MonitorSettings, version: int, window: int
) -> LiveGroups:
    """The live group figures of ``version`` over its latest ``window`` labelled predictions (computed off
    the event loop: fairlearn's MetricFrame costs tens of milliseconds per feature)."""
    rows = await group_window.window(rt.db, monitor.model, version, window) if monitor.schema.sensitive else []
    return await asyncio.to_thread(live_groups, monitor.schema, version, rows, settings.min_group_rows)


async def export(rt: Runtime, monitors: Monitors, settings: MonitorSettings, gauges: GroupGauges) -> None:
    """Recompute the champions' live group figures for /metrics, every ``group_interval_s``."""
    while True:
        await asyncio.sleep(settings.group_interval_s)
        for monitor in monitors.all():
            if not monitor.schema.sensitive:
                continue
            try:
                gauges.record(monitor.model, await compute(rt, monitor, settings, monitor.version,
                                                           settings.group_window))  # fmt: skip
            except (OSError, asyncpg.PostgresError) as exc:  # the next round tries again
                log.warning("live group metrics of %s not refreshed: %s", monitor.model, exc)
