"""predictions.logged: fill the model's window; judge it when full; raise drift.detected.

The monitor's hot path. Messages come in batches (:class:`libs.common.kafka.PipelinedConsumer`: one
transaction and one offset commit a batch, the next batch fetched and decoded meanwhile), are read as
columns (:func:`libs.common.logged.decode_logged`, no object per prediction), stored with one COPY a
batch, and binned into the window column by column (:class:`Handler`: in the background, after the store).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import propagate, trace

from libs.common import outbox, topics
from libs.common.events import DriftDetected, FeatureDrift
from libs.common.kafka import Delivery, PipelinedConsumer
from libs.common.logged import LoggedPredictions, decode_logged
from libs.common.service import Runtime
from services.monitor.adapters import repository, versions
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors
from services.monitor.domain.decision import AlarmState, WindowReport, evaluate_window, should_alarm
from services.monitor.domain.groups import input_groups, row_groups
from services.monitor.domain.histograms import window_histograms
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.domain.windows import Window
from services.monitor.handlers import labels_arrived
from services.monitor.settings import MonitorSettings

log = logging.getLogger(__name__)
CONSUMER = "monitor.predictions-logged"


def consumer(rt: Runtime, handle: Handler, settings: MonitorSettings) -> PipelinedConsumer[LoggedPredictions]:
    """The topic consumed in batches (one transaction and one offset commit a batch), read as columns."""
    return PipelinedConsumer(topic=topics.PREDICTIONS_LOGGED, group="monitor", handler=handle, decode=decode_logged,
                             settings=settings.kafka, telemetry=rt.telemetry, broker=rt.broker,
                             max_records=settings.batch_messages, max_wait_s=settings.batch_wait_ms / 1000)  # fmt: skip


Batch = list[tuple[LoggedPredictions, Delivery]]


class Handler:
    """A batch is stored first; it is binned into the windows, and the windows it fills judged, after.

    A batch's predictions are durable once its transaction commits, and that is all its offsets wait
    for. Binning and judging are CPU work on the event loop, plus one write (the reports) nothing
    behind the offsets needs. They run in the background, in batch order, while the next batch is
    fetched, decoded and stored: its COPY then runs in PostgreSQL, on another core, instead of after
    them. One batch is binned at a time: each batch waits, after its own store, for the previous one's
    binning, which also bounds the work in flight to one batch. Binning a batch that failed to store
    never happens (it is retried, or dead-lettered, first). A batch whose binning or reports fail is
    logged and counted (``driftloop_drift_windows_lost_total``); as before, its windows are not
    judged again, and an alarm whose write failed is raised by the next flagged window (the alarm
    state moves only once written).
    """

    def __init__(self, rt: Runtime, monitors: Monitors, metrics: MonitorMetrics, compare_every: int = 50) -> None:
        self.rt = rt
        self.monitors = monitors
        self.metrics = metrics
        self.compare_every = compare_every
        self._binning: asyncio.Task[None] | None = None

    async def __call__(self, batch: Batch) -> None:
        """Keep the predictions for label matching (every message of the batch in one transaction), then,
        in the background, add them to the windows message by message in their order."""
        events = [event for event, _ in batch]
        causes = {event.event_id: _cause(delivery) for event, delivery in batch}
        stored = await outbox.once_each(self.rt.db, CONSUMER, events, lambda conn, fresh: _store(
            conn, self.monitors, fresh, self.compare_every))  # fmt: skip
        await self.drain()  # the windows fill in batch order
        if stored:
            self._binning = asyncio.create_task(self._bin(stored, causes), name="monitor-binning")

    async def drain(self) -> None:
        """Wait until every batch stored so far is binned and its windows judged."""
        if self._binning is not None:
            await asyncio.shield(self._binning)  # a caller cancelled meanwhile leaves the binning to finish
            self._binning = None

    async def _bin(self, stored: list[Stored], causes: dict[Any, trace.SpanContext]) -> None:
        """Add the stored predictions to the windows; judge the windows they fill together. Never raises."""
        try:
            full: list[tuple[ModelMonitor, Window]] = []
            for event, early, monitor in stored:
                if early:
                    _score_early_labels(event, early, monitor, self.metrics)
                if monitor is None or monitor.version != event.version:
                    continue  # traffic of a version no longer (or not yet) monitored
                monitor.causes.append(causes[event.event_id])
                full += [(monitor, window) for window in monitor.observe_columns(event.features, event.predictions)]
            if full:
                await _judge(self.rt, full, self.metrics)
        except Exception:  # nothing behind it to retry it: the offsets are committed already
            self.metrics.windows_lost.inc()
            log.exception("binning or judging a stored batch of predictions.logged failed")


def _cause(delivery: Delivery) -> trace.SpanContext:
    """The span that published a message (its trace headers), or the batch's span when it carried none:
    a drift alarm links to the messages behind its window."""
    published = trace.get_current_span(propagate.extract(delivery.headers)).get_span_context()
    return published if published.is_valid else trace.get_current_span().get_span_context()


Stored = tuple[LoggedPredictions, list[repository.EarlyLabel], ModelMonitor | None]


Watched = dict[tuple[str, int | None], "ModelMonitor | None"]
"""(model, version) → its monitor (None: not monitored), looked up once per batch: a version the monitor
does not watch (a canary's, or the old one's just after a swap) costs a query each time it is asked for."""


async def _store(
    conn: asyncpg.Connection, monitors: Monitors, events: list[LoggedPredictions], compare_every: int
) -> list[Stored]:
    """The effects of the events seen for the first time: a shadow's predictions are kept to be scored once
    labelled (never in a window); served ones are stored with one COPY, and the labels that overtook them
    scored. Returns each served event with its early labels and its model's monitor."""
    await repository.lock_labels(conn, [e.model for e in events])  # ordered with label matching
    watched: Watched = {}
    served = [e for e in events if not e.shadow]
    stored = await _store_served(conn, monitors, watched, served, compare_every) if served else []
    for event in events:  # after the served ones: a shadow is scored on the labels its served twin matched
        if event.shadow:
            await _shadow(conn, monitors, watched, event, compare_every)
    return stored


async def _monitor(
    conn: asyncpg.Connection, monitors: Monitors, watched: Watched, model: str, version: int | None
) -> ModelMonitor | None:
    """The monitor of ``model`` at ``version`` (any version when None), asked of ``monitors`` once a batch."""
    if (model, version) not in watched:
        watched[model, version] = await monitors.load(conn, model, version=version)
    return watched[model, version]


async def _store_served(
    conn: asyncpg.Connection, monitors: Monitors, watched: Watched, served: list[LoggedPredictions],
    compare_every: int,
) -> list[Stored]:  # fmt: skip
    models = [await _monitor(conn, monitors, watched, e.model, e.version) for e in served]
    inputs = [
        [input_groups(m.schema, row) for row in _sensitive_rows(m, e)] if m is not None and m.schema.sensitive
        else None
        for e, m in zip(served, models, strict=True)
    ]  # fmt: skip
    early = await repository.store_predictions(conn, served, inputs)
    owner = {rid: i for i, e in enumerate(served) for rid in e.request_ids} if early else {}
    answered: list[list[repository.EarlyLabel]] = [[] for _ in served]
    for label in early:
        answered[owner[label.request_id]].append(label)
    for event, monitor, labels, groups_in in zip(served, models, answered, inputs, strict=True):
        if labels and monitor is not None:  # labels that overtook their predictions, scored for this version
            await _score_early(conn, event, monitor, labels, groups_in, compare_every)
    return list(zip(served, answered, models, strict=True))


async def _score_early(
    conn: asyncpg.Connection,
    event: LoggedPredictions,
    monitor: ModelMonitor,
    early: list[repository.EarlyLabel],
    inputs: list[dict[str, str] | None] | None,
    compare_every: int,
) -> None:
    predicted = dict(zip(event.request_ids, event.predictions, strict=True))
    scored = [(e.request_id, event.version, predicted[e.request_id], e.label) for e in early]
    groups = {}
    if inputs is not None:
        logged = dict(zip(event.request_ids, inputs, strict=True))
        groups = {e.request_id: row_groups(monitor.schema, logged[e.request_id], e.attributes) for e in early}
    await labels_arrived.score_live(conn, monitor, scored, compare_every, groups)


def _sensitive_rows(monitor: ModelMonitor, event: LoggedPredictions) -> list[dict[str, Any]]:
    """Each prediction's sensitive inputs (those logged), one dict a row: built only for models that declare
    sensitive features, and only of those columns."""
    return event.logged(monitor.schema.sensitive)


async def _shadow(
    conn: asyncpg.Connection, monitors: Monitors, watched: Watched, event: LoggedPredictions, compare_every: int
) -> None:
    """Keep a shadow's predictions; those whose request is labelled already are scored now."""
    await versions.store_shadow(conn, event)
    monitor = await _monitor(conn, monitors, watched, event.model, None)
    if monitor is not None and await versions.score_shadows(conn, event.model, event.request_ids, monitor.outcome):
        await labels_arrived.publish_comparisons(conn, monitor, compare_every)


def _score_early_labels(
    event: LoggedPredictions, early: list[repository.EarlyLabel], monitor: ModelMonitor | None, metrics: MonitorMetrics
) -> None:
    """Score the labels that were waiting for these predictions, per sender."""
    predicted = dict(zip(event.request_ids, event.predictions, strict=True))
    by_source: dict[tuple[str, bool] | None, list[tuple[int, Any, Any]]] = {}
    for label in early:
        by_source.setdefault(label.source, []).append((event.version, predicted[label.request_id], label.label))
    metrics.labels.labels(event.model, "true").inc(len(early))
    if monitor is not None:
        for source, matched in by_source.items():
            metrics.record_live(monitor.model, monitor.score(matched, source))


async def _judge(rt: Runtime, full: list[tuple[ModelMonitor, Window]], metrics: MonitorMetrics) -> None:
    """Judge the windows a batch filled, in their order, and store their reports (and alarms) in one transaction."""
    # Decide on copies: the live alarm state moves only once the reports (and alarms) are committed,
    # so a failed write neither loses an alarm nor starts a cool-down for an alarm nobody received.
    states: dict[int, tuple[ModelMonitor, AlarmState]] = {}
    judged: list[tuple[ModelMonitor, WindowReport, dict[str, Any], DriftDetected | None]] = []
    for monitor, window in full:
        report = evaluate_window(window, monitor.judged_performance(), monitor.config)
        monitor.last_report = report
        metrics.record(monitor, report)
        _, alarms = states.setdefault(id(monitor), (monitor, monitor.alarms.copy()))
        alarm, since = should_alarm(alarms, report, datetime.now(UTC), monitor.config)
        judged.append((monitor, report, window_histograms(window), _drift_event(monitor, report, since) if alarm
                       else None))  # fmt: skip
    async with rt.db.acquire() as conn, conn.transaction():
        await repository.store_reports(conn, [(m.model, m.version, report, drawn) for m, report, drawn, _ in judged])
        for monitor, _, _, event in judged:
            if event is not None:
                await _raise(rt, conn, monitor, event)
    for monitor, alarms in states.values():
        monitor.alarms = alarms  # committed: now the cool-down may start
    for monitor, report, _, event in judged:
        if event is not None:
            metrics.alarms.labels(monitor.model).inc()
            log.warning("drift detected for %s v%d: %s", monitor.model, monitor.version, report.reason)


async def _raise(rt: Runtime, conn: asyncpg.Connection, monitor: ModelMonitor, event: DriftDetected) -> None:
    """drift.detected through the outbox, and the alarm row, in the caller's transaction."""
    with rt.telemetry.tracer.start_as_current_span(
        "drift detected",
        attributes={"driftloop.model": monitor.model, "driftloop.version": monitor.version},
        links=[trace.Link(c) for c in monitor.causes if c.is_valid],  # many causes: links, not one parent
    ):
        await outbox.add(conn, event)
    await repository.store_alarm(conn, monitor.model, monitor.version, event.event_id, event.kinds, event.summary)


def _drift_event(monitor: ModelMonitor, report: WindowReport, since: datetime | None) -> DriftDetected:
    live = {}
    if report.performance is not None:
        reference = "holdout" if report.performance.against == "holdout" else "baseline"
        live = {f"live_{report.performance.metric}": report.performance.live,
                f"{reference}_{report.performance.metric}": report.performance.reference,
                "labels": float(report.performance.labels)}  # fmt: skip
    return DriftDetected(
        producer="monitor",
        model=monitor.model,
        version=monitor.version,
        dataset=monitor.dataset,
        kinds=report.kinds,
        window_size=report.records,
        window_started_at=since or report.started_at,
        features=[
            FeatureDrift(feature=v.feature, statistics=v.statistics, thresholds=v.thresholds, drifted=v.drifted)
            for v in [*report.features, *([report.prediction] if report.prediction else [])]
        ],
        metrics=live,
        summary=report.reason,
        label_sources=monitor.label_provenance(),
    )
