"""Monitor benchmark: the monitor service's sustained rate, predictions logged per second until lag grows.

1. Start an embedded PostgreSQL and broker, and ``python -m services.monitor`` on a free port (a real
   process, its default settings: windows of 500 predictions unless ``--window`` says otherwise).
   Judging a window costs about the same whatever its size (KS, chi-square, PSI, Wasserstein per
   feature, over fixed-size summaries), so at 50,000 predictions/s the default 500 means judging 100
   windows a second, and 10,000 five: run both to tell the judging from the hot path. The run prints
   the cost of judging one window at both sizes.
2. Train a small credit-default model as the trainer does (one fit), profile it, sign it and publish
   its ``model.promoted``: the monitor monitors it from then on, as it would a champion.
3. A producer in its own process (so it takes no CPU from the monitor's measurement, only from the
   machine) publishes ``predictions.logged`` as serving does: batches of 200 predictions in the
   event's columnar form, encoded by serving's own encoder, one per-row time each, keyed by model.
   It offers stepped rates (10k, 25k, 50k, 60k, 75k, 100k predictions/s by default), each for a while.
4. Every 0.5 s the consumer group's committed offset is read against the partition's end offset
   (the lag, in predictions), and the monitor process's CPU time.

Per step it prints the offered and achieved produce rate, the consumed rate, the lag at start and end
and its slope, and the monitor's CPU; then the highest rate with flat lag. A step's lag is flat when
the monitor consumed at least 97 % of what was produced and ended the step at most one second of
traffic behind where it started. The ramp stops at the first step whose lag grows (later ones
could only grow it further); the monitor's drain rate after it is its capacity.

It also prints the in-process cost per record of the monitor's hot path on the same batches (decode
the event, bin it into the window), the figure to compare with the drift bench's update cost.

    make bench-monitor                                   # about 4 minutes, windows of 500
    make bench-monitor BENCH_ARGS="--window 10000"       # judging 5 windows a second instead of 100
    make bench-monitor BENCH_ARGS="--rates 20000,40000 --step-s 15 --json out.json"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.serving import MODEL, SCHEMA, cpu_seconds, dataset, machine, wait_for
from devstack.embedded import EmbeddedKafka, EmbeddedPostgres, free_port, terminate
from libs.common import models, topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import AliasMove, ModelPromoted
from libs.common.frames import features_frame
from libs.common.kafka import BrokerPublisher, create_broker
from libs.common.logged import decode_logged
from libs.common.profile import ReferenceProfile, build_profile
from libs.common.schema import DType
from libs.common.settings import KafkaSettings, TelemetrySettings
from libs.common.signing import Signer, generate_keys
from libs.common.telemetry import setup_telemetry
from services.monitor.domain.decision import DriftConfig, evaluate_window
from services.monitor.domain.monitor import ModelMonitor
from services.serving.adapters.prediction_log import EncodedEvent, encode
from services.trainer.domain.training import TrainingConfig, train

ROOT = Path(__file__).resolve().parent.parent
BATCH = 200
"""Predictions per event: serving's default ``DRIFTLOOP_SERVING_LOG_BATCH_SIZE``."""
TARGET = 50_000.0
FLAT_SHARE = 0.97
WARM_UP = (2_000.0, 5.0)
"""Predictions/s and seconds offered before the ramp, not counted."""


# --- the model, its profile and the traffic ------------------------------------------------------------------


class Champion:
    """A credit model trained, profiled and signed as the trainer does, and its predictions on fresh rows."""

    def __init__(self, store: ArtifactStore, keys: tuple[Path, Path], rows: int = 20_000) -> None:
        signer = Signer.from_file(keys[0])
        result = train(SCHEMA, dataset(4_000, seed=1), TrainingConfig(seed=1, n_iter=1, n_jobs=1))
        kinds: dict[str, Any] = {
            f.name: "categorical" if f.dtype is DType.CATEGORICAL else "numeric" for f in SCHEMA.features
        }
        self.profile = build_profile({k: result.train_frame[k].to_numpy() for k in kinds}, kinds,
                                     result.train_predictions, prediction_kind="categorical",
                                     metrics=result.metrics)  # fmt: skip
        self.metrics = result.metrics
        self.artifact = signer.sign(store.put(models.dumps(result.pipeline), suffix=".skops"))
        self.profile_ref = signer.sign(store.put(self.profile.to_bytes(), suffix=".profile.json"))
        live = dataset(rows, seed=2)
        frame = features_frame(SCHEMA, live.to_dict("records"))
        self.traffic = live[[f.name for f in SCHEMA.features]]
        self.predictions = [str(p) for p in result.pipeline.predict(frame)]
        self.probabilities = np.round(result.pipeline.predict_proba(frame), 6)
        self.classes = [str(c) for c in result.pipeline.classes_]

    def promoted(self) -> ModelPromoted:
        return ModelPromoted(
            producer="bench", model=MODEL, version=1, dataset=MODEL,
            move=AliasMove(alias="champion", from_version=None, to_version=1),
            artifact=self.artifact, profile=self.profile_ref, dataset_schema=SCHEMA, metrics=self.metrics,
            reason="bench", actor="bench",
        )  # fmt: skip


def traffic_file(champion: Champion, path: Path) -> None:
    """The rows, predictions and probabilities the producer cycles through, as serving would log them."""
    columns = {f.name: _plain(champion.traffic[f.name], f.dtype) for f in SCHEMA.features}
    path.write_text(json.dumps({
        "features": columns, "predictions": champion.predictions,
        "probabilities": {c: champion.probabilities[:, i].tolist() for i, c in enumerate(champion.classes)},
    }))  # fmt: skip


def _plain(column: pd.Series, dtype: DType) -> list[Any]:
    """Values as serving logs them: strings, integers, floats."""
    if dtype is DType.CATEGORICAL:
        return [str(v) for v in column]
    values: list[Any] = column.to_numpy(dtype=np.int64 if dtype is DType.INTEGER else float).tolist()
    return values


def batches(traffic: dict[str, Any], run: str) -> Iterator[EncodedEvent]:
    """predictions.logged payloads of ``BATCH`` rows, as serving encodes them, fresh request ids each."""
    rows = len(traffic["predictions"])
    n = 0
    start = 0
    while True:
        if start + BATCH > rows:
            start = 0
        cut = slice(start, start + BATCH)
        now = datetime.now(UTC)
        columns = {
            "request_ids": [f"{run}-{i}" for i in range(n, n + BATCH)],
            "at": [now] * BATCH,  # one time per row: many small requests joined into one batch
            "predictions": traffic["predictions"][cut],
            "probabilities": {c: values[cut] for c, values in traffic["probabilities"].items()},
            "features": {name: values[cut] for name, values in traffic["features"].items()},
        }
        yield encode(MODEL, 1, columns, BATCH)
        n += BATCH
        start += BATCH


# --- the producer process ------------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, traffic: dict[str, Any]) -> None:
    """Read ``RATE SECONDS`` lines on stdin; publish at that rate for that long; answer one JSON line each."""
    payloads = batches(traffic, uuid.uuid4().hex[:8])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=False)
    await producer.start()
    headers = [(topics.HEADER_EVENT_TYPE, b"predictions.logged")]
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            rate, seconds = (float(x) for x in line.split())
            started = time.time()
            sent = 0
            pending: list[asyncio.Future[Any]] = []
            while (elapsed := time.time() - started) < seconds:
                due = int(elapsed * rate / BATCH) + 1  # batches that should be out by now
                while sent < due:
                    event = next(payloads)
                    ids = [*headers, (topics.HEADER_EVENT_ID, event.event_id.encode())]
                    pending.append(await producer.send(topic, event.payload, key=MODEL.encode(), headers=ids))
                    sent += 1
                if len(pending) > 50:
                    await asyncio.gather(*pending)
                    pending.clear()
                await asyncio.sleep(min(0.005, BATCH / rate))
            await asyncio.gather(*pending)
            ended = time.time()
            print(json.dumps({"started": started, "ended": ended, "records": sent * BATCH}), flush=True)
    finally:
        await producer.stop()


# --- the service and the lag ---------------------------------------------------------------------------------


class Stack:
    """Embedded PostgreSQL and broker, ``python -m services.monitor`` on free ports."""

    def __init__(self, workdir: Path, window: int) -> None:
        self.workdir = workdir
        self.window = window
        self.kafka = EmbeddedKafka(workdir / "kafka")
        self.postgres = EmbeddedPostgres(workdir / "postgres" / "data", durable=False)
        self.store = ArtifactStore(f"file://{workdir / 'artifacts'}")
        self.keys = generate_keys(workdir / "keys")
        self.prefix = f"bench{uuid.uuid4().hex[:8]}."
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "monitor.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap=self.kafka.bootstrap, topic_prefix=self.prefix)

    def start(self) -> None:
        bootstrap, database = self.kafka.start(), self.postgres.start()
        env = {
            **os.environ,
            "DRIFTLOOP_DATABASE_URL": database,
            "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap,
            "DRIFTLOOP_KAFKA_TOPIC_PREFIX": self.prefix,
            "DRIFTLOOP_ARTIFACTS_ROOT": self.store.root,
            "DRIFTLOOP_MONITOR_PORT": str(self.port),
            "DRIFTLOOP_MONITOR_WINDOW_SIZE": str(self.window),
            "DRIFTLOOP_SIGNING_PUBLIC_KEYS": json.dumps([str(self.keys[1])]),
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "services.monitor"], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, "the monitor to be ready", 180,
                 self.log_path)  # fmt: skip

    async def publish(self, event: ModelPromoted) -> None:
        broker = create_broker(self.kafka_settings, setup_telemetry("bench", TelemetrySettings()))
        async with broker:
            await broker.start()
            await BrokerPublisher(broker, self.prefix).publish_event(event)

    def stop(self) -> None:
        terminate(self.process)
        self.kafka.stop()
        self.postgres.stop()


class Lag:
    """The monitor group's committed offsets against the end offsets of predictions.logged, in predictions."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.topic = settings.topic(topics.PREDICTIONS_LOGGED)
        self.ends = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False)
        self.group = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=settings.group("monitor"),
                                      enable_auto_commit=False)  # fmt: skip
        self.partitions: list[TopicPartition] = []

    async def start(self) -> None:
        await self.ends.start()
        await self.group.start()
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(self.ends.partitions_for_topic(self.topic)
                                                                          or ())]  # fmt: skip

    async def sample(self) -> tuple[int, int]:
        """(produced, committed) predictions so far, over every partition."""
        ends = await self.ends.end_offsets(self.partitions)
        committed = [await self.group.committed(tp) or 0 for tp in self.partitions]
        return sum(ends.values()) * BATCH, sum(committed) * BATCH

    async def stop(self) -> None:
        await self.ends.stop()
        await self.group.stop()


# --- the run -------------------------------------------------------------------------------------------------


def hot_path_cost(champion: Champion, payloads: list[bytes], window: int) -> dict[str, float]:
    """Microseconds per record of the monitor's hot path in this process (decode a batch, bin it), and
    milliseconds to judge one full window (at ``window`` records, and at the default 500)."""
    profile = ReferenceProfile.from_bytes(champion.profile.to_bytes())
    records = len(payloads) * BATCH
    started = time.perf_counter()
    decoded = [decode_logged(p) for p in payloads]
    decoded_s = time.perf_counter() - started
    figures = {"decode_us": decoded_s / records * 1e6}
    for size in (window, 500):
        monitor = ModelMonitor(MODEL, 1, profile, SCHEMA, MODEL, DriftConfig(), window_size=size, label_window=300,
                               sample_size=2000)  # fmt: skip
        started = time.perf_counter()
        full = [w for batch in decoded for w in monitor.observe_columns(batch.features, batch.predictions)]
        binned_s = time.perf_counter() - started
        started = time.perf_counter()
        for w in full:
            evaluate_window(w, None, monitor.config)
        figures[f"judge_ms_window_{size}"] = (time.perf_counter() - started) / len(full) * 1e3
        if size == window:
            figures["bin_us"] = binned_s / records * 1e6
    figures["total_us"] = figures["decode_us"] + figures["bin_us"]
    return figures


def step_figures(rate: float, produced: dict[str, Any], samples: list[tuple[float, int, int, float]]) -> dict[str, Any]:
    """One step's figures from its producer report and the lag samples taken during it."""
    inside = [s for s in samples if produced["started"] <= s[0] <= produced["ended"] + 0.5]
    t, made, done, cpu = (np.array(x, dtype=float) for x in zip(*inside, strict=True))
    lag = made - done
    seconds = t[-1] - t[0]
    slope = float(np.polyfit(t - t[0], lag, 1)[0]) if len(t) > 2 else 0.0
    achieved = produced["records"] / (produced["ended"] - produced["started"])
    consumed = (done[-1] - done[0]) / seconds
    flat = consumed >= FLAT_SHARE * (made[-1] - made[0]) / seconds and lag[-1] <= lag[0] + achieved
    return {
        "offered_per_s": rate, "produced_per_s": round(achieved), "consumed_per_s": round(consumed),
        "lag_start": int(lag[0]), "lag_end": int(lag[-1]), "lag_max": int(lag.max()),
        "lag_slope_per_s": round(slope), "monitor_cpu_pct": round(100 * (cpu[-1] - cpu[0]) / seconds, 1),
        "flat": bool(flat),
    }  # fmt: skip


async def sampler(lag: Lag, pid: int, samples: list[tuple[float, int, int, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        made, done = await lag.sample()
        samples.append((time.time(), made, done, cpu_seconds(pid)))
        await asyncio.sleep(0.5)


def producer_process(stack: Stack, traffic_path: Path) -> subprocess.Popen[str]:
    """The producer: this module with ``--produce``, driven by ``RATE SECONDS`` lines on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.monitor", "--produce", stack.kafka.bootstrap,
         stack.kafka_settings.topic(topics.PREDICTIONS_LOGGED), str(traffic_path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


async def ramp(stack: Stack, producer: subprocess.Popen[str], rates: list[float], step_s: float) -> dict[str, Any]:
    assert stack.process is not None
    assert producer.stdin is not None
    assert producer.stdout is not None
    lag = Lag(stack.kafka_settings)
    await lag.start()
    samples: list[tuple[float, int, int, float]] = []
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(lag, stack.process.pid, samples, stop))
    steps = []
    try:
        producer.stdin.write(f"{WARM_UP[0]} {WARM_UP[1]}\n")  # not counted: the first window, the first COPY
        producer.stdin.flush()
        await asyncio.to_thread(producer.stdout.readline)
        await _drain(samples, timeout=30)
        for rate in rates:
            producer.stdin.write(f"{rate} {step_s}\n")
            producer.stdin.flush()
            answer = await asyncio.to_thread(producer.stdout.readline)
            await asyncio.sleep(0.6)  # the last sample of the step
            figures = step_figures(rate, json.loads(answer), samples)
            steps.append(figures)
            print(_step_line(figures), flush=True)
            if not figures["flat"]:
                break
        producer.stdin.close()
        await asyncio.to_thread(producer.wait, 30)
        drain = await _drain(samples, timeout=60)
    finally:
        stop.set()
        await sampling
        await lag.stop()
        if producer.poll() is None:
            producer.kill()
    return {"steps": steps, "drain": drain}


async def _drain(samples: list[tuple[float, int, int, float]], timeout: float) -> dict[str, Any]:
    """After the ramp: how fast the monitor works off the backlog (its capacity, when one was built)."""
    first = samples[-1]
    for _ in range(int(timeout / 0.5)):
        if samples[-1][1] <= samples[-1][2]:
            break
        await asyncio.sleep(0.5)
    last = samples[-1]
    backlog = first[1] - first[2]
    seconds = last[0] - first[0]
    return {"backlog": backlog, "left": last[1] - last[2], "seconds": round(seconds, 1),
            "rate_per_s": round((last[2] - first[2]) / seconds) if backlog and seconds else None}  # fmt: skip


def _step_line(s: dict[str, Any]) -> str:
    return (f"  {s['offered_per_s']:>9,.0f} {s['produced_per_s']:>9,} {s['consumed_per_s']:>9,} "
            f"{s['lag_start']:>9,} {s['lag_end']:>9,} {s['lag_slope_per_s']:>9,} {s['monitor_cpu_pct']:>6}%"
            f"  {'flat' if s['flat'] else 'GROWS'}")  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-monitor-") as tmp:
        workdir = Path(tmp)
        stack = Stack(workdir, args.window)
        started = time.perf_counter()
        champion = Champion(stack.store, stack.keys)
        traffic_path = workdir / "traffic.json"
        traffic_file(champion, traffic_path)
        payloads = batches(json.loads(traffic_path.read_text()), "cost")
        cost = hot_path_cost(champion, [next(payloads).payload for _ in range(250)], args.window)
        print(f"hot path in-process: decode {cost['decode_us']:.2f} µs + bin {cost['bin_us']:.2f} µs "
              f"= {cost['total_us']:.2f} µs per record (50,000 records in batches of {BATCH}); judging a window "
              f"takes {cost[f'judge_ms_window_{args.window}']:.1f} ms at {args.window:,} records, "
              f"{cost['judge_ms_window_500']:.1f} ms at the default 500", flush=True)  # fmt: skip
        stack.start()
        try:
            asyncio.run(stack.publish(champion.promoted()))
            print(f"stack ready in {time.perf_counter() - started:.0f} s; ramp, {args.step_s:.0f} s a step:",
                  flush=True)  # fmt: skip
            print(f"  {'offered/s':>9} {'produced':>9} {'consumed':>9} {'lag start':>9} {'lag end':>9} "
                  f"{'slope/s':>9} {'cpu':>7}")  # fmt: skip
            result = asyncio.run(ramp(stack, producer_process(stack, traffic_path), args.rates, args.step_s))
        finally:
            stack.stop()
    flat = [s["offered_per_s"] for s in result["steps"] if s["flat"]]
    best = max(flat) if flat else None
    return {"machine": machine(), "batch": BATCH, "step_s": args.step_s, "hot_path": cost, **result,
            "sustained_per_s": best, "target_per_s": TARGET, "met": best is not None and best >= TARGET}  # fmt: skip


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--produce":
        asyncio.run(produce(sys.argv[2], sys.argv[3], json.loads(Path(sys.argv[4]).read_text())))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[10_000.0, 25_000.0, 50_000.0, 60_000.0, 75_000.0, 100_000.0])  # fmt: skip
    parser.add_argument("--step-s", type=float, default=25.0)
    parser.add_argument("--window", type=int, default=500, help="predictions a window (the service's default: 500)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = run(args)
    drain = result["drain"]
    if drain["rate_per_s"]:
        print(f"drain: {drain['backlog']:,} behind worked off at {drain['rate_per_s']:,}/s "
              f"({drain['left']:,} left after {drain['seconds']} s)")  # fmt: skip
    best = result["sustained_per_s"]
    print(f"highest rate with flat lag: {best:,.0f}/s" if best else "lag grew at every rate",
          f"(target {TARGET:,.0f}/s: {'met' if result['met'] else 'missed'}); "
          f"load average {result['machine']['load_average']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
