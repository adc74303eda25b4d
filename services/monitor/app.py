"""The monitor service: live windows against reference profiles, drift.detected."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from libs.common import topics
from libs.common.events import DriftDetected, LabelsArrived, ModelCompared, ModelPromoted, PredictionsLogged
from libs.common.kafka import LagExporter, PipelinedConsumer, Route, subscribe
from libs.common.logged import LoggedPredictions
from libs.common.request_ids import RequestIds
from libs.common.retention import Rule
from libs.common.service import Runtime, ServiceSpec, build
from libs.common.telemetry import Telemetry
from services.monitor import api, api_dead_letters, api_groups
from services.monitor.adapters import group_metrics
from services.monitor.adapters.group_gauges import GroupGauges
from services.monitor.adapters.metrics import MonitorMetrics
from services.monitor.adapters.state import Monitors
from services.monitor.domain.decision import DriftConfig
from services.monitor.handlers import labels_arrived, model_promoted, predictions_logged
from services.monitor.report.render import render
from services.monitor.settings import MonitorSettings

log = logging.getLogger(__name__)


def drift_config(s: MonitorSettings) -> DriftConfig:
    return DriftConfig(
        min_window=s.min_window, alpha=s.alpha, correction=s.correction, psi_threshold=s.psi_threshold,
        js_threshold=s.js_threshold, wasserstein_threshold=s.wasserstein_threshold, drift_share=s.drift_share,
        key_features=tuple(s.key_features), min_labels=s.min_labels, performance_margin=s.performance_margin,
        persistence_k=s.persistence_k, persistence_n=s.persistence_n, decisive_z=s.decisive_z,
        cooldown=timedelta(seconds=s.cooldown_s), baseline_labels=s.baseline_labels,
        baseline_margin=s.baseline_margin, baseline_z=s.baseline_z,
    )  # fmt: skip


def spec(settings: MonitorSettings) -> ServiceSpec:
    holder: list[Monitors] = []
    gauges: list[GroupGauges] = []
    logged: list[tuple[PipelinedConsumer[LoggedPredictions], predictions_logged.Handler]] = []

    def monitors(rt: Runtime) -> Monitors:
        if not holder:
            holder.append(Monitors(rt.store, drift_config(settings), window_size=settings.window_size,
                                   label_window=settings.label_window, sample_size=settings.sample_size,
                                   window_step=settings.window_step))  # fmt: skip
        return holder[0]

    def group_gauges(rt: Runtime) -> GroupGauges:
        if not gauges:
            gauges.append(GroupGauges(rt.telemetry.registry, settings.group_gauges))
        return gauges[0]

    def routes(app: FastAPI, rt: Runtime) -> None:
        api.mount(app, rt, monitors(rt), render, lambda m: group_metrics.compute(rt, m, settings, m.version,
                                                                            settings.group_window))  # fmt: skip
        api_groups.mount(app, rt, monitors(rt), settings, group_gauges(rt))
        api_dead_letters.mount(app, settings.kafka)

    def register(rt: Runtime) -> None:
        metrics = MonitorMetrics(rt.telemetry.registry)
        m = monitors(rt)
        labels = labels_arrived.handler(rt, m, metrics, request_ids(settings), settings.compare_every)
        routes = {
            topics.MODEL_PROMOTED: Route(model_promoted.handler(rt, m), (ModelPromoted,)),
            topics.LABELS_ARRIVED: Route(labels, (LabelsArrived,)),
        }
        subscribe(rt.broker, routes, group="monitor", settings=settings.kafka, telemetry=rt.telemetry)
        handle = predictions_logged.Handler(rt, m, metrics, settings.compare_every)
        logged.append((predictions_logged.consumer(rt, handle, settings), handle))

    async def on_start(rt: Runtime) -> None:
        for consumer, _ in logged:
            consumer.start()
        # The monitor watches the plumbing too: consumer lag of every driftloop group.
        rt.spawn(LagExporter(settings.kafka, rt.telemetry, settings.lag_interval_s).run(), "consumer-lag")
        rt.spawn(group_metrics.export(rt, monitors(rt), settings, group_gauges(rt)), "group-metrics")

    async def on_stop(rt: Runtime) -> None:
        for consumer, handle in logged:
            await consumer.stop()
            await handle.drain()  # the windows of the batches stored so far (their reports, their alarms)

    return ServiceSpec(
        name="monitor",
        verify_artifacts=True,
        retention=(
            Rule("predictions", "at", "predictions_days"),
            Rule("pending_labels", "at", "predictions_days"),
            Rule("reports", "at", "reports_days"),
            Rule("shadow_predictions", "at", "predictions_days"),
            Rule("outcomes", "at", "predictions_days"),
            Rule("group_outcomes", "at", "predictions_days"),
        ),
        on_start=on_start,
        on_stop=on_stop,
        publishes=(DriftDetected, ModelCompared),
        receives=(PredictionsLogged,),
        migrations=Path(__file__).parent / "migrations",
        register=register,
        routes=routes,
        description="Compares live prediction windows with reference profiles; raises drift.detected.",
    )


def request_ids(settings: MonitorSettings) -> RequestIds | None:
    """The verifier of serving's request ids, or None (with a warning) when no key is configured."""
    secret = settings.request_id_secret
    if secret is None or not secret.get_secret_value():
        log.warning("no request-id secret configured: labels.arrived is scored without checking that serving "
                    "issued its request ids (set DRIFTLOOP_MONITOR_REQUEST_ID_SECRET to serving's key)")  # fmt: skip
        return None
    previous = [s.get_secret_value().encode() for s in settings.request_id_previous_secrets]
    return RequestIds(secret.get_secret_value().encode(), previous)


def create_app(settings: MonitorSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    return build(spec(settings), settings, telemetry)
