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

from libs.common import auth, topics
from libs.common.auth import Role
from libs.common.errors import ArtifactError
from libs.common.events import ArtifactRef, LabelsArrived, ModelPromoted, OnnxExport, PredictionsLogged
from libs.common.kafka import Route, positioned, subscribe
from libs.common.request_ids import RequestIds
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
    gauges: list[tuple[Gauge, Gauge]] = []
    admission_waiting: list[Gauge] = []

    def loaded(count: int) -> None:
        for models_loaded, version_served in gauges:
            models_loaded.set(count)
            for model in table.all():
                version_served.labels(model.model).set(model.version)

    table = ModelTable(on_change=loaded)
    splits: Splits[LoadedModel] = Splits(settings.routing_seed)
    logs: list[PredictionLog] = []

    batch_requests: list[Histogram] = []

    def observe(model: str, requests: int, rows: int) -> None:
        for histogram in batch_requests:
            histogram.labels(model).observe(requests)

    batching = BatchPolicy(settings.batching, settings.batch_max_rows, settings.batch_max_wait_s, observe)

    def promoted(rt: Runtime) -> model_promoted.Loader:
        async def load_promoted(event: ModelPromoted) -> LoadedModel:
            return await load(
                rt.store, event.model, event.version, event.artifact, event.dataset_schema,
                event.occurred_at.timestamp(), onnx=event.onnx, batching=batching, onnx_threads=settings.onnx_threads,
            )  # fmt: skip

        return load_promoted

    def register(rt: Runtime) -> None:
        registry = rt.telemetry.registry
        models_loaded = Gauge("driftloop_models_loaded", "Models this replica can serve.", registry=registry)
        version_served = Gauge(
            "driftloop_model_version_served", "Version each model is served at by this replica.", ["model"],
            registry=registry,
        )  # fmt: skip
        gauges.append((models_loaded, version_served))
        admission_waiting.append(Gauge("driftloop_serving_admission_waiting", "Large requests waiting to be admitted.",
                                       registry=registry))  # fmt: skip
        batch_requests.append(Histogram(
            "driftloop_inference_batch_requests", "Requests answered by one inference call (micro-batching).",
            ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
        ))  # fmt: skip
        # Every replica must see every promotion, from now on: no consumer group (a group join
        # held a restart up for seconds, and after a kill -9 until the dead member timed out);
        # what was promoted before the replica started comes from the registry.
        routes = {
            topics.MODEL_PROMOTED: Route(model_promoted.handler(rt, table, promoted(rt), splits), (ModelPromoted,))
        }
        subscribers.append(subscribe(rt.broker, routes, group=None, settings=settings.kafka, telemetry=rt.telemetry))

    subscribers: list[LogicSubscriber[Any]] = []
    hot_routes: list[hotpath.HotRoute] = []
    runtimes: list[Runtime] = []
    predictors: list[api.Predictor] = []

    def routes(app: FastAPI, rt: Runtime) -> None:
        plog = PredictionLog(rt.publisher, rt.telemetry, batch_size=settings.log_batch_size,
                             flush_s=settings.log_flush_s)  # fmt: skip
        logs.append(plog)
        predictor = api.mount(app, rt, settings, table, plog, request_ids(settings), splits)
        predictors.append(predictor)
        app.state.splits = splits  # for introspection (tests)
        api_v2.mount(app, rt, table, predictor)
        hot_routes.extend(hotpath.predict_routes(app, predictor))
        runtimes.append(rt)

    def front(app: ASGIApp) -> ASGIApp:
        rt = runtimes[0]
        if settings.hot_path:
            app = hotpath.HotPath(app, hot_routes, rt.auth, rt.telemetry, max_body_bytes=settings.max_body_bytes,
                                  traces_per_s=settings.traces_per_s)  # fmt: skip
        budget = ByteBudget(settings.admission_bytes)
        MemoryTrim(budget)
        return Admission(app, budget, min_bytes=settings.admission_min_bytes, waiting=admission_waiting[0])

    async def registry_token(rt: Runtime) -> tuple[str, str | None]:
        """The configured token, or one issued for the bootstrap only (and its id, to revoke it after)."""
        if settings.registry_token is not None:
            return settings.registry_token.get_secret_value(), None
        issued = await auth.issue(
            rt.auth.db, f"service:serving:{settings.instance_id}", [Role.READER], created_by="serving",
            expires_at=datetime.now(UTC) + timedelta(days=1),
        )  # fmt: skip
        return issued.token, issued.id

    async def bootstrap(rt: Runtime) -> None:
        for subscriber in subscribers:  # promotions from here on are consumed: the registry tells the rest
            await positioned(subscriber)
        delay = 0.5
        token, issued_id = await registry_token(rt)
        async with await registry_client(settings.registry_url, token) as client:  # one for every retry
            while True:
                try:
                    records = await champions_from_registry(client)
                    break
                except (httpx.HTTPError, OSError) as exc:
                    log.warning("registry not reachable at %s (%s), retrying in %.1fs", settings.registry_url, exc,
                                delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)
        if issued_id is not None:
            await auth.revoke(rt.auth.db, issued_id)  # needed once, at start
        for record in records:
            alias = record.get("served_as", "champion")
            held = splits.get(record["model"])
            if alias == "champion" and table.get(record["model"]) is not None:
                continue  # a promotion event got here first and is newer
            if alias != "champion" and held is not None and getattr(held, alias) is not None:
                continue  # likewise for the canary or shadow
            onnx = record.get("onnx")
            try:
                loaded = await load(
                    rt.store, record["model"], record["version"], ArtifactRef.model_validate(record["artifact"]),
                    DatasetSchema.model_validate(record["schema"]), generation=0.0,
                    onnx=OnnxExport.model_validate(onnx) if onnx else None, batching=batching,
                    onnx_threads=settings.onnx_threads,
                )  # fmt: skip
            except ArtifactError as exc:  # refused (unsigned, mis-signed, replaced): logged, counted, not served
                log.error("model %s v%s not loaded: %s", record["model"], record["version"], exc.message)
                continue
            if alias == "canary":
                splits.set_canary(loaded.model, loaded, float(record.get("share") or 0.0))
            elif alias == "shadow":
                splits.set_shadow(loaded.model, loaded)
            else:
                table.offer(loaded)
            log.info("model %s v%d loaded from the registry as %s (%s)", loaded.model, loaded.version, alias,
                     loaded.runtime.name)  # fmt: skip
        champions_loaded.set()

    # Ready only once every champion the registry names is loaded: before that a
    # request for it would get a 404 "no champion loaded" (issue 11).
    champions_loaded = asyncio.Event()

    def readiness() -> dict[str, str]:
        return {"champions": "ok" if champions_loaded.is_set() else "loading the registry's champions"}

    async def on_start(rt: Runtime) -> None:
        # Everything imported so far lives as long as the process: freezing it keeps the
        # collector from re-scanning millions of objects while requests allocate (a 1,000-row
        # body alone makes thousands), which otherwise costs more than parsing the body.
        gc.freeze()
        for plog in logs:
            plog.start()
        rt.spawn(bootstrap(rt), "bootstrap")

    async def on_stop(rt: Runtime) -> None:
        for predictor in predictors:
            if predictor.shadows is not None:
                await predictor.shadows.drain()  # their predictions go out with the last flush
        for plog in logs:
            await plog.stop()

    return ServiceSpec(
        name="serving",
        verify_artifacts=True,
        publishes=(PredictionsLogged, LabelsArrived),
        migrations=None,
        register=register,
        routes=routes,
        on_start=on_start,
        on_stop=on_stop,
        readiness=readiness,
        front=front,
        description="Serves champion models over HTTP, hot-swaps on promotion, logs predictions and feedback.",
    )


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
