"""``driftloop demo``: the whole loop, shown to a newcomer.

It declares a dataset, streams labelled records into ingest, and once a
champion serves, sends prediction traffic and (after a delay) the true labels
as feedback. After a stationary phase it injects drift (covariate shift and a
changed concept) into both streams, then watches: the monitor raises
``drift.detected``, the trainer retrains on post-drift data, the registry
promotes the challenger, serving hot-swaps it, and accuracy recovers. No step
is driven by the demo except the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from cli.churn_stream import FEATURES, SCHEMA, TARGET, ChurnStream, corrupt
from libs.common import topics
from libs.common.events import parse_event
from libs.common.idempotency import HEADER
from libs.common.retry import Backoff, GaveUp, retry

STREAM_DRAIN_S = 120.0
"""How long the demo waits, as it stops, for the stream's request in flight (four attempts of 30 s at most)."""


class _ServerError(Exception):
    """A 5xx answer, retried like a lost one (the Idempotency-Key keeps the retry from storing twice)."""


@dataclass
class DemoConfig:
    seed: int = 7
    dataset: str | None = None
    """Dataset and model name; None gives each run its own (``churn-<run>``), so a demo can run again
    in the same home or against the same ``up`` and close the loop every time."""
    drift: Literal["covariate+concept", "concept"] = "covariate+concept"
    """What the injected drift changes: the customer base and what drives churn, or only the latter
    (then no feature moves, and only the performance alarm can see it)."""
    stream_batch: int = 200
    """Labelled records per ingest request."""
    stream_interval_s: float = 0.5
    corrupt_share: float = 0.01
    """Share of streamed records broken on purpose (they must come back as rejections)."""
    predict_batch: int = 50
    predict_interval_s: float = 0.1
    label_delay_s: float = 1.0
    """Ground truth arrives this long after a prediction."""
    stationary_predictions: int = 3000
    recovery_predictions: int = 1500
    timeout_s: float = 240.0


@dataclass
class Served:
    version: int
    phase: str
    correct: bool


@dataclass
class DemoState:
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    records_sent: int = 0
    records_accepted: int = 0
    records_rejected: int = 0
    dataset_version: int = 0
    predictions: list[Served] = field(default_factory=list)
    predictions_after_injection: int = 0
    initial_version: int | None = None
    retrained_version: int | None = None
    serving_version: int | None = None
    """The champion's version, as the last answer from it said."""
    canary_versions: Counter[int] = field(default_factory=Counter)
    """Predictions answered by a canary, per version (a drift retrain released through a canary first)."""
    injected_at: float | None = None
    injected_at_utc: datetime | None = None
    recovered_at: float | None = None
    drift_events: list[dict[str, Any]] = field(default_factory=list)
    false_drift_events: int = 0
    drift_detected_after_rows: int | None = None
    events_per_topic: Counter[str] = field(default_factory=Counter)
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    drift_scores: dict[str, float] = field(default_factory=dict)
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=500))
    errors: list[str] = field(default_factory=list)
    ingest_counts: dict[str, int] | None = None
    """Ingest's own tally of the records the demo sent, read at the end."""

    def accuracy(self, phase: str, version: int | None = None) -> float | None:
        hits = [p.correct for p in self.predictions if p.phase == phase and (version is None or p.version == version)]
        return round(float(np.mean(hits)), 4) if hits else None

    @property
    def live_accuracy(self) -> float | None:
        return round(float(np.mean(self.recent)), 4) if self.recent else None


class Demo:
    def __init__(
        self,
        services: dict[str, str],
        bootstrap: str,
        config: DemoConfig,
        *,
        topic_prefix: str = "",
        token: str | None = None,
        on_update: Callable[[DemoState], None] | None = None,
    ) -> None:
        self.services = services
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        """Every service needs a token; the one ``driftloop up`` wrote into its home."""
        self.bootstrap = bootstrap
        self.config = config
        self.prefix = topic_prefix
        self.on_update = on_update or (lambda state: None)
        self.state = DemoState()
        self.dataset = config.dataset or f"churn-{uuid.uuid4().hex[:8]}"
        concept_only = config.drift == "concept"
        self.training = ChurnStream(seed=config.seed, concept_only=concept_only)
        self.traffic = ChurnStream(seed=config.seed + 1, concept_only=concept_only)
        self.rng = np.random.default_rng(config.seed + 2)
        self.pending_labels: deque[tuple[float, str, str]] = deque()
        self._done = asyncio.Event()

    async def run(self) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=30, limits=limits, headers=self.headers) as self.http:
            await self._declare()
            watcher = asyncio.create_task(self._watch_events())
            await asyncio.sleep(0.5)  # let the watcher take its positions before anything happens
            tasks = [
                asyncio.create_task(self._stream()),
                asyncio.create_task(self._feedback()),
                asyncio.create_task(self._poll_drift()),
            ]
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    await self._scenario()
            except TimeoutError:
                self.state.errors.append(f"timed out after {self.config.timeout_s:.0f}s in phase {self.state.phase!r}")
            finally:
                self._done.set()
                stream, *others = tasks
                for task in others:
                    task.cancel()
                # The stream ends after its current POST rather than being cancelled inside it: a batch
                # ingest stored while the demo stopped listening would be counted by ingest and not here.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STREAM_DRAIN_S):
                        await asyncio.gather(stream, return_exceptions=True)
                stream.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._flush_labels(force=True)
                await asyncio.sleep(1.0)  # let the last events reach the watcher
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await self._reconcile_counts()
        return self.summary()

    # -- the scenario ------------------------------------------------------------------

    async def _scenario(self) -> None:
        s, c = self.state, self.config
        s.phase = "warming up: streaming data until a first model serves"
        s.initial_version = await self._wait_for_version(lambda v: v is not None)
        s.phase = "stationary traffic"
        await self._traffic(until=lambda: self._count("stationary") >= c.stationary_predictions, phase="stationary")
        s.phase = "drift injected: waiting for detection, retraining and promotion"
        s.injected_at = time.monotonic()
        s.injected_at_utc = datetime.now(UTC)
        self.training.drifted = self.traffic.drifted = True
        await self._traffic(
            until=lambda: s.serving_version is not None and s.serving_version != s.initial_version, phase="drift"
        )
        s.retrained_version = s.serving_version
        s.recovered_at = time.monotonic()
        s.phase = "recovered: measuring the retrained model"
        await self._traffic(until=lambda: self._count("recovery") >= c.recovery_predictions, phase="recovery")
        s.phase = "done"

    def _count(self, phase: str) -> int:
        return sum(1 for p in self.state.predictions if p.phase == phase)

    async def _wait_for_version(self, accept: Callable[[int | None], bool]) -> int:
        url = f"{self.services['serving']}/v1/models/{self.dataset}"
        while True:
            answer = await self.http.get(url)
            version = answer.json().get("version") if answer.status_code == 200 else None
            if accept(version):
                assert version is not None
                self.state.serving_version = version
                return int(version)
            self.on_update(self.state)
            await asyncio.sleep(0.5)

    # -- data, traffic, feedback -------------------------------------------------------------

    async def _declare(self) -> None:
        answer = await self.http.put(f"{self.services['ingest']}/v1/datasets/{self.dataset}", json=SCHEMA)
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"declaring the dataset failed: {answer.status_code} {answer.text}")

    async def _stream(self) -> None:
        url = f"{self.services['ingest']}/v1/datasets/{self.dataset}/records"
        while not self._done.is_set():
            records = self.training.batch(self.config.stream_batch)
            records = [corrupt(r, self.rng) if self.rng.random() < self.config.corrupt_share else r for r in records]
            self.state.records_sent += len(records)
            try:
                answer = await self._post_retried(url, records)
                body = answer.json()
                if answer.status_code == 200:
                    self.state.records_accepted += body["accepted"]
                    self.state.records_rejected += body["rejected"]
                    self.state.dataset_version = body["version"] or self.state.dataset_version
                else:
                    self.state.errors.append(f"ingest answered {answer.status_code}: {body.get('message')}")
            except httpx.HTTPError as exc:
                self.state.errors.append(f"ingest unreachable: {exc!r}")
            self.on_update(self.state)
            await asyncio.sleep(self.config.stream_interval_s)

    async def _post_retried(self, url: str, body: Any, attempts: int = 4) -> httpx.Response:
        """POST with an Idempotency-Key, retried on a lost answer or a 5xx: stored once either way."""
        headers = {HEADER: uuid.uuid4().hex}

        async def post(attempt: int) -> httpx.Response:
            answer = await self.http.post(url, json=body, headers=headers)
            if answer.status_code >= 500 and attempt < attempts:
                raise _ServerError(answer.status_code)
            return answer  # the last try's answer, whatever its status

        try:
            return await retry(post, backoff=Backoff(0.4, 1.6), errors=(httpx.HTTPError, _ServerError),
                               attempts=attempts)  # fmt: skip
        except GaveUp as gave_up:
            raise gave_up.error from None  # only a transport error reaches the last try

    async def _traffic(self, *, until: Callable[[], bool], phase: str) -> None:
        url = f"{self.services['serving']}/v1/models/{self.dataset}/predict"
        while not until():
            rows = self.traffic.batch(self.config.predict_batch)
            instances = [{k: r[k] for k in FEATURES} for r in rows]
            answer = await self.http.post(url, json={"instances": instances})
            if answer.status_code != 200:
                self.state.errors.append(f"predict answered {answer.status_code}: {answer.text[:200]}")
                await asyncio.sleep(0.5)
                continue
            body = answer.json()
            version = body["version"]
            if body.get("alias", "champion") == "champion":  # a canary's answer is not the champion changing
                self.state.serving_version = version
            else:
                self.state.canary_versions[version] += len(rows)
            now = time.monotonic()
            for row, result in zip(rows, body["predictions"], strict=True):
                correct = result["prediction"] == row[TARGET]
                self.state.predictions.append(Served(version, phase, correct))
                self.state.recent.append(correct)
                self.pending_labels.append((now + self.config.label_delay_s, result["request_id"], row[TARGET]))
            if self.state.injected_at is not None:
                self.state.predictions_after_injection += len(rows)
            self.on_update(self.state)
            await asyncio.sleep(self.config.predict_interval_s)

    async def _feedback(self) -> None:
        while not self._done.is_set():
            await self._flush_labels()
            await asyncio.sleep(0.25)

    async def _flush_labels(self, force: bool = False) -> None:
        due = []
        now = time.monotonic()
        while self.pending_labels and (force or self.pending_labels[0][0] <= now):
            _, request_id, label = self.pending_labels.popleft()
            due.append({"request_id": request_id, "label": label})
        for start in range(0, len(due), 1000):
            chunk = due[start : start + 1000]
            try:
                await self._post_retried(f"{self.services['serving']}/v1/feedback",
                                         {"model": self.dataset, "labels": chunk})  # fmt: skip
            except httpx.HTTPError as exc:
                self.state.errors.append(f"feedback failed: {exc!r}")

    async def _poll_drift(self) -> None:
        url = f"{self.services['monitor']}/v1/models/{self.dataset}/drift"
        while not self._done.is_set():
            try:
                answer = await self.http.get(url)
                if answer.status_code == 200 and answer.json().get("report"):
                    report = answer.json()["report"]
                    self.state.drift_scores = {f["feature"]: f["statistics"]["psi"] for f in report["features"]}
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1.0)

    # -- events --------------------------------------------------------------------------

    async def _watch_events(self) -> None:
        """Count every event on every topic from now on (no consumer group: nothing to rebalance)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.prefix + spec.name, p)
                          for spec in topics.all_topics() for p in range(spec.partitions)]  # fmt: skip
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    name = tp.topic.removeprefix(self.prefix)
                    self.state.events_per_topic[name] += len(records)
                    if name == topics.DRIFT_DETECTED:
                        for record in records:
                            self._on_drift(record.value)
                    elif name.endswith(topics.DLQ_SUFFIX):
                        self.state.dead_letters.extend(_dead_letter(name, r) for r in records)
        finally:
            await consumer.stop()

    def _on_drift(self, raw: bytes) -> None:
        s = self.state
        event = parse_event(raw)
        if getattr(event, "model", None) != self.dataset:
            return  # another model's alarm (the same `up` may serve several)
        if s.injected_at is None:
            s.false_drift_events += 1
        elif s.drift_detected_after_rows is None:
            s.drift_detected_after_rows = s.predictions_after_injection
        s.drift_events.append({"summary": getattr(event, "summary", ""), "kinds": getattr(event, "kinds", [])})

    async def _reconcile_counts(self) -> None:
        try:
            answer = await self.http.get(f"{self.services['ingest']}/v1/datasets/{self.dataset}")
            self.state.ingest_counts = answer.json()["records"]
        except (httpx.HTTPError, KeyError, ValueError):
            self.state.ingest_counts = None

    # -- the result ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        s = self.state
        during = s.accuracy("drift", s.initial_version)
        after = s.accuracy("recovery", s.retrained_version)
        closed = (
            s.retrained_version is not None
            and s.initial_version is not None
            and s.retrained_version != s.initial_version
            and after is not None
            and during is not None
            and after > during
        )
        counts = s.ingest_counts
        dlq = sum(n for name, n in s.events_per_topic.items() if name.endswith(topics.DLQ_SUFFIX))
        return {
            "dataset": self.dataset,
            "drift": self.config.drift,
            "drift_injected_at": s.injected_at_utc.isoformat() if s.injected_at_utc else None,
            "alarm_kinds": [e["kinds"] for e in s.drift_events],
            "loop_closed": closed,
            "initial_version": s.initial_version,
            "retrained_version": s.retrained_version,
            "canary_predictions": {str(v): n for v, n in sorted(s.canary_versions.items())},
            "drift_detected_after_rows": s.drift_detected_after_rows,
            "false_drift_events_before_injection": s.false_drift_events,
            "drift_events": len(s.drift_events),
            "accuracy_before_drift": s.accuracy("stationary"),
            "accuracy_during_drift": during,
            "accuracy_after_recovery": after,
            "time_to_recover_s": round(s.recovered_at - s.injected_at, 1) if s.recovered_at and s.injected_at else None,
            "events_per_topic": dict(sorted(s.events_per_topic.items())),
            "dlq_messages": dlq,
            "dead_letters": s.dead_letters[:20],
            "records": {
                "sent": s.records_sent,
                "accepted": s.records_accepted,
                "rejected": s.records_rejected,
                "ingest_counts": counts,
                "accounted": counts is not None
                and counts["received"] == s.records_sent
                and counts["accepted"] + counts["rejected"] == s.records_sent,
            },
            "predictions": len(s.predictions),
            "duration_s": round(time.monotonic() - s.started, 1),
            "errors": s.errors[:20],
        }


def _dead_letter(topic: str, record: Any) -> dict[str, str]:
    """What the demo shows of a dead letter: where it came from and why it failed."""
    headers = {k: bytes(v).decode(errors="replace") for k, v in (record.headers or ())}
    return {
        "topic": topic,
        "consumer_group": headers.get(topics.HEADER_DLQ_CONSUMER_GROUP, ""),
        "error_type": headers.get(topics.HEADER_DLQ_ERROR_TYPE, ""),
        "reason": headers.get(topics.HEADER_DLQ_REASON, "")[:500],
    }
