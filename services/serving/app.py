"""The serving service: champions loaded from the registry, hot-swapped on model.promoted."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from faststream.kafka.subscriber.usecase import LogicSubscriber
from prometheus_client import Gauge, Histogram
from starlette.types import ASGIApp

from libs.common import auth, models, topics
from libs.common.auth import Role
from libs.common.errors import ArtifactError
from libs.common.events import ArtifactRef, LabelsArrived, ModelPromoted, OnnxExport, PredictionsLogged
from libs.common.kafka import Route, positioned, subscribe
from libs.common.request_ids import RequestIds
from libs.common.retry import Backoff, retry
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime, ServiceSpec, build
from libs.common.telemetry import Telemetry
from services.serving import api, api_v2, hotpath
from services.serving.adapters.loader import champions_from_registry, load, registry_client
from services.serving.adapters.prediction_log import PredictionLog
from services.serving.admission import Admission, ByteBudget, MemoryTrim
from services.serving.domain.models import BatchPolicy, LoadedModel, ModelTable
from services.serving.domain.routing import Splits
from services.serving.handlers import model_promoted
from services.serving.settings import ServingSettings

log = logging.getLogger(__name__)


def spec(settings: ServingSettings) -> ServiceSpec:
    replica = Replica(settings)
    return ServiceSpec(
        name="serving",
        verify_artifacts=True,
        publishes=(PredictionsLogged, LabelsArrived),
        migrations=None,
        register=replica.register,
        routes=replica.routes,
        on_start=replica.on_start,
        on_stop=replica.on_stop,
        readiness=replica.readiness,
        front=replica.front,
        description="Serves champion models over HTTP, hot-swaps on promotion, logs predictions and feedback.",
    )


class Replica:
    """One serving process: the champions it serves (``table``), their canaries and shadows (``splits``),
    its prediction logs and metrics. Its methods are the service's hooks (:class:`ServiceSpec`), each
    called once: the metrics and logs live in lists filled when the runtime that owns them exists."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.table = ModelTable(on_change=self._loaded)
        self.splits: Splits[LoadedModel] = Splits(settings.routing_seed)
        self.batching = BatchPolicy(settings.batching, settings.batch_max_rows, settings.batch_max_wait_s,
                                    self._batched)  # fmt: skip
        self.gauges: list[tuple[Gauge, Gauge]] = []
        self.admission_waiting: list[Gauge] = []
        self.batch_requests: list[Histogram] = []
        self.subscribers: list[LogicSubscriber[Any]] = []
        self.hot_routes: list[hotpath.HotRoute] = []
        self.runtimes: list[Runtime] = []
        self.predictors: list[api.Predictor] = []
        self.logs: list[PredictionLog] = []
        # Ready only once every champion the registry names is loaded: before that a
        # request for it would get a 404 "no champion loaded" (issue 11).
        self.champions_loaded = asyncio.Event()

    def _loaded(self, count: int) -> None:
        for models_loaded, version_served in self.gauges:
            models_loaded.set(count)
            for model in self.table.all():
                version_served.labels(model.model).set(model.version)

    def _batched(self, model: str, requests: int, rows: int) -> None:
        for histogram in self.batch_requests:
            histogram.labels(model).observe(requests)

    def register(self, rt: Runtime) -> None:
        self._register_metrics(rt)
        # Every replica must see every promotion, from now on: no consumer group (a group join
        # held a restart up for seconds, and after a kill -9 until the dead member timed out);
        # what was promoted before the replica started comes from the registry.
        handler = model_promoted.handler(rt, self.table, self._promoted(rt), self.splits)
        routes = {topics.MODEL_PROMOTED: Route(handler, (ModelPromoted,))}
        self.subscribers.append(subscribe(rt.broker, routes, group=None, settings=self.settings.kafka,
                                          telemetry=rt.telemetry))  # fmt: skip

    def _register_metrics(self, rt: Runtime) -> None:
        registry = rt.telemetry.registry
        models_loaded = Gauge("driftloop_models_loaded", "Models this replica can serve.", registry=registry)
        version_served = Gauge(
            "driftloop_model_version_served", "Version each model is served at by this replica.", ["model"],
            registry=registry,
        )  # fmt: skip
        self.gauges.append((models_loaded, version_served))
        self.admission_waiting.append(Gauge("driftloop_serving_admission_waiting",
                                            "Large requests waiting to be admitted.", registry=registry))  # fmt: skip
        self.batch_requests.append(Histogram(
            "driftloop_inference_batch_requests", "Requests answered by one inference call (micro-batching).",
            ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
        ))  # fmt: skip

    def _promoted(self, rt: Runtime) -> model_promoted.Loader:
        settings = self.settings

        async def load_promoted(event: ModelPromoted) -> LoadedModel:
            return await load(
                rt.store, event.model, event.version, event.artifact, event.dataset_schema,
                event.occurred_at.timestamp(), onnx=event.onnx, batching=self.batching,
                onnx_threads=settings.onnx_threads,
            )  # fmt: skip

        return load_promoted

    def routes(self, app: FastAPI, rt: Runtime) -> None:
        settings = self.settings
        plog = PredictionLog(rt.publisher, rt.telemetry, batch_size=settings.log_batch_size,
                             flush_s=settings.log_flush_s)  # fmt: skip
        self.logs.append(plog)
        predictor = api.mount(app, rt, settings, self.table, plog, request_ids(settings), self.splits)
        self.predictors.append(predictor)
        app.state.splits = self.splits  # for introspection (tests)
        api_v2.mount(app, rt, self.table, predictor)
        self.hot_routes.extend(hotpath.predict_routes(app, predictor))
        self.runtimes.append(rt)

    def front(self, app: ASGIApp) -> ASGIApp:
        rt, settings = self.runtimes[0], self.settings
        if settings.hot_path:
            app = hotpath.HotPath(app, self.hot_routes, rt.auth, rt.telemetry, max_body_bytes=settings.max_body_bytes,
                                  traces_per_s=settings.traces_per_s)  # fmt: skip
        budget = ByteBudget(settings.admission_bytes)
        MemoryTrim(budget)
        return Admission(app, budget, min_bytes=settings.admission_min_bytes, waiting=self.admission_waiting[0])

    def readiness(self) -> dict[str, str]:
        return {"champions": "ok" if self.champions_loaded.is_set() else "loading the registry's champions"}

    async def on_start(self, rt: Runtime) -> None:
        # Everything imported so far lives as long as the process: freezing it keeps the
        # collector from re-scanning millions of objects while requests allocate (a 1,000-row
        # body alone makes thousands), which otherwise costs more than parsing the body.
        gc.freeze()
        for plog in self.logs:
            plog.start()
        rt.spawn(self.bootstrap(rt), "bootstrap")
        if self.settings.preload_sklearn:
            rt.spawn(self.preload(), "preload-scikit-learn")

    async def preload(self) -> None:
        """Import scikit-learn off the event loop, then freeze what it made (see ``on_start``)."""
        await asyncio.to_thread(models.preload)
        gc.freeze()

    async def on_stop(self, rt: Runtime) -> None:
        for predictor in self.predictors:
            if predictor.shadows is not None:
                await predictor.shadows.drain()  # their predictions go out with the last flush
        for plog in self.logs:
            await plog.stop()

    async def bootstrap(self, rt: Runtime) -> None:
        """Load what the registry serves (champions, canaries, shadows), then say the replica is ready."""
        for subscriber in self.subscribers:  # promotions from here on are consumed: the registry tells the rest
            await positioned(subscriber)
        for record in await self._registry_records(rt):
            await self._load_record(rt, record)
        self.champions_loaded.set()

    async def _registry_records(self, rt: Runtime) -> list[dict[str, Any]]:
        """The registry's served versions, asked until it answers (with a token issued for this only,
        revoked after, when none is configured)."""
        settings = self.settings
        token, issued_id = await self._registry_token(rt)

        def warn(exc: Exception, _: int, delay: float) -> None:
            log.warning("registry not reachable at %s (%s), retrying in %.1fs", settings.registry_url, exc, delay)

        async with await registry_client(settings.registry_url, token) as client:  # one for every retry
            records = await retry(lambda _: champions_from_registry(client), backoff=Backoff(0.5, 10.0),
                                  errors=(httpx.HTTPError, OSError), on_retry=warn)  # fmt: skip
        if issued_id is not None:
            await auth.revoke(rt.auth.db, issued_id)  # needed once, at start
        return records

    async def _registry_token(self, rt: Runtime) -> tuple[str, str | None]:
        """The configured token, or one issued for the bootstrap only (and its id, to revoke it after)."""
        settings = self.settings
        if settings.registry_token is not None:
            return settings.registry_token.get_secret_value(), None
        issued = await auth.issue(
            rt.auth.db, f"service:serving:{settings.instance_id}", [Role.READER], created_by="serving",
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )  # fmt: skip
        return issued.token, issued.id

    async def _load_record(self, rt: Runtime, record: dict[str, Any]) -> None:
        """Load one version the registry serves, as its alias, unless a promotion event got here first."""
        alias = record.get("served_as", "champion")
        if self._newer_held(record["model"], alias):
            return
        onnx = record.get("onnx")
        try:
            loaded = await load(
                rt.store, record["model"], record["version"], ArtifactRef.model_validate(record["artifact"]),
                DatasetSchema.model_validate(record["schema"]), generation=0.0,
                onnx=OnnxExport.model_validate(onnx) if onnx else None, batching=self.batching,
                onnx_threads=self.settings.onnx_threads,
            )  # fmt: skip
        except ArtifactError as exc:  # refused (unsigned, mis-signed, replaced): logged, counted, not served
            log.error("model %s v%s not loaded: %s", record["model"], record["version"], exc.message)
            return
        if alias == "canary":
            self.splits.set_canary(loaded.model, loaded, float(record.get("share") or 0.0))
        elif alias == "shadow":
            self.splits.set_shadow(loaded.model, loaded)
        else:
            self.table.offer(loaded)
        log.info("model %s v%d loaded from the registry as %s (%s)", loaded.model, loaded.version, alias,
                 loaded.runtime.name)  # fmt: skip

    def _newer_held(self, model: str, alias: str) -> bool:
        """Whether a promotion event already put a version in ``alias``'s place (it is newer than the registry's
        answer, asked before it)."""
        if alias == "champion":
            return self.table.get(model) is not None
        held = self.splits.get(model)
        return held is not None and getattr(held, alias) is not None


def request_ids(settings: ServingSettings) -> RequestIds:
    """The minter/verifier of request ids under the configured secret (a random one when unset)."""
    secret = settings.request_id_secret
    if secret is None or not secret.get_secret_value():
        log.warning("no request-id secret configured: ids are valid for this process only "
                    "(set DRIFTLOOP_SERVING_REQUEST_ID_SECRET, the same on every replica)")  # fmt: skip
    key = secret.get_secret_value().encode() if secret else os.urandom(32)
    return RequestIds(key, [s.get_secret_value().encode() for s in settings.request_id_previous_secrets])


def create_app(settings: ServingSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    return build(spec(settings), settings, telemetry)
