"""The ingest service: dataset schemas, validated records, append-only versions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI

from libs.common.events import DataArrived, RecordsSubmitted
from libs.common.kafka import MicroBatchConsumer
from libs.common.retention import Rule
from libs.common.service import Runtime, ServiceSpec, build
from libs.common.telemetry import Telemetry
from services.ingest import api
from services.ingest.adapters import compaction, gc
from services.ingest.domain import validation
from services.ingest.handlers import records_submitted
from services.ingest.settings import IngestSettings


def spec(settings: IngestSettings) -> ServiceSpec:
    batcher: list[MicroBatchConsumer[RecordsSubmitted]] = []
    background: list[asyncio.Task[None]] = []
    stored = compaction.Submissions()  # set after each stored submission: the compactor's wake-up

    async def on_start(rt: Runtime) -> None:
        await asyncio.to_thread(validation.warm_up)
        consumer = records_submitted.consumer(rt, settings, stored)
        consumer.start()
        batcher.append(consumer)
        if settings.compact_interval_s > 0:
            compactor = compaction.run(
                rt.db, rt.store, interval_s=settings.compact_interval_s, small_rows=settings.compact_small_rows,
                min_run=settings.compact_min_run, wake=stored, quiet_s=settings.compact_quiet_s,
                max_deferred=settings.compact_max_deferred,
            )  # fmt: skip
            background.append(asyncio.create_task(compactor, name="ingest-compaction"))

    async def on_stop(rt: Runtime) -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        for consumer in batcher:
            await consumer.stop()

    return ServiceSpec(
        name="ingest",
        retention=(
            Rule("rejections", "created_at", "rejections_days"),
            Rule("rejection_blocks", "created_at", "rejections_days"),
            Rule("superseded_segments", "superseded_at", "superseded_batches_days"),
        ),
        artifacts=gc.ARTIFACTS,
        publishes=(DataArrived,),
        receives=(RecordsSubmitted,),
        migrations=Path(__file__).parent / "migrations",
        routes=lambda app, rt: api.mount(app, rt, settings, stored),
        on_start=on_start,
        on_stop=on_stop,
        description="Validates records against declared schemas and stores them as append-only dataset versions.",
    )


def create_app(settings: IngestSettings, telemetry: Telemetry | None = None) -> tuple[FastAPI, Runtime]:
    return build(spec(settings), settings, telemetry)
