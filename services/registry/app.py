"""The registry service: versions, promotion policy, aliases, audit."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from libs.common import topics
from libs.common.events import (
    DriftDetected,
    ModelCompared,
    ModelExported,
    ModelPromoted,
    ModelRejudged,
    ModelTrained,
    RejudgementRequested,
)
from libs.common.kafka import Route, subscribe
from libs.common.service import Runtime, ServiceSpec, build
from libs.common.signing import Verifier
from libs.common.telemetry import Telemetry
from services.registry import api, api_cards, api_explain
from services.registry.domain.canary import CanaryConfig
from services.registry.domain.promotion import PromotionConfig
from services.registry.domain.provenance import TrustConfig
from services.registry.handlers import drift_detected, model_compared, model_exported, model_trained
from services.registry.settings import RegistrySettings

log = logging.getLogger(__name__)


def spec(settings: RegistrySettings) -> ServiceSpec:
    config = PromotionConfig(
        min_metric=settings.min_metric,
        min_gain=settings.min_gain,
        significance=settings.promotion_significance,
        gain_significance=settings.promotion_gain_significance,
        require_approval=settings.require_approval,
        fairness_tolerance=settings.fairness_tolerance,
    )

    canary = CanaryConfig(min_labels=settings.canary_min_labels, margin=settings.canary_margin,
                          deadline=timedelta(seconds=settings.canary_deadline_s))  # fmt: skip

    def register(rt: Runtime) -> None:
        trust = TrustConfig(max_untrusted_share=settings.max_untrusted_share)
        release = None
        if settings.drift_retrain == "canary":
            release = model_trained.CanaryRelease(settings.canary_share, canary.deadline)
        handle = model_trained.handler(rt, config, trust, release)
        routes = {
            topics.MODEL_TRAINED: Route(handle, (ModelTrained,)),
            topics.MODEL_EXPORTED: Route(model_exported.handler(rt), (ModelExported,)),
            topics.MODEL_REJUDGED: Route(handle, (ModelRejudged,)),
            topics.DRIFT_DETECTED: Route(drift_detected.handler(rt), (DriftDetected,)),
            topics.MODEL_COMPARED: Route(model_compared.handler(rt, canary), (ModelCompared,)),
        }
        subscribe(rt.broker, routes, group="registry", settings=settings.kafka, telemetry=rt.telemetry)

    return ServiceSpec(
        name="registry",
        publishes=(ModelPromoted, RejudgementRequested),
        migrations=Path(__file__).parent / "migrations",
        register=register,
        on_start=lambda rt: _start_sweeper(rt, canary, settings.canary_sweep_s),
        routes=lambda app, rt: _routes(app, rt, settings, canary),
        description="Registers trained versions, applies the promotion policy, moves aliases, keeps the audit log.",
    )


def _routes(app: FastAPI, rt: Runtime, settings: RegistrySettings, canary: CanaryConfig) -> None:
    api.mount(app, rt, api.CanaryDefaults(settings.canary_share, canary))
    api_cards.mount(app, rt, settings.artifacts.root)
    api_explain.mount(app, rt, settings.artifacts.root, Verifier.from_settings(settings.signing))


async def _start_sweeper(rt: Runtime, config: CanaryConfig, every_s: float) -> None:
    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                for model in await model_compared.sweep(rt, config):
                    log.warning("canary of %s rolled back: deadline passed with no decision", model)
            except Exception as exc:  # the database may be restarting: try again next round
                log.warning("canary deadline sweep failed: %r", exc)

    rt.spawn(sweep_forever(), "canary-deadlines")


def create_app(settings: RegistrySettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    return build(spec(settings), settings, telemetry)
