"""The prequential loop benchmark: does the loop close on streams nobody tuned it to?

It starts the real stack as ``driftloop up`` does (embedded PostgreSQL, the tansu broker,
the five service processes) on free ports in a temporary home, with the services' default
settings, and drives each stream (bench/streams.py) through it, one after another, each
with a dataset and model of its own, only through the services' HTTP APIs, as a new user
would (``--fresh-stack`` starts a stack per stream instead):

1. declare the dataset (PUT ingest) and post the first 5,000 labelled rows;
2. wait until serving has a model;
3. per chunk of 250 rows, paced at about 1,000 rows/s: predict (serving), score the
   predictions against the truth, send the true labels as feedback, post the labelled
   rows to ingest.

Alarms come from the monitor (GET /v1/models/{m}/drift), promotions from the registry's
audit, retrain durations from the trainer's jobs. After each stream, an oracle
(HistGradientBoosting on the 5,000 rows after the last change) is scored on the last
5,000 rows. It prints a table, checks the targets of issue 8 and writes JSON (--json).
Before the next stream starts, the trainer finishes this stream's jobs (``drain_s``).

    make bench-loop BENCH_ARGS="--quick --streams abrupt,stationary"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import prequential as pq
from bench.critical_path import Step, critical_path, render
from bench.streams import GENERATORS, Stream, make
from cli.supervisor import Supervisor, UpState

ABRUPT_TARGET_ROWS = 5_000
ORACLE_SHARE = 0.98


@dataclass(frozen=True)
class Options:
    streams: list[str]
    quick: bool = False
    rate: float = 1_000.0
    """Rows per second the stream is paced at (predict + feedback + ingest)."""
    chunk: int = 250
    initial: int = 5_000
    """Labelled rows posted to ingest before any traffic."""
    seed: int = 1
    first_model_timeout_s: float = 300.0
    env: dict[str, str] = field(default_factory=dict)
    """Settings for the services (DRIFTLOOP_*), on top of their defaults."""
    keep: bool = False
    fresh_stack: bool = False
    """A stack of its own per stream (else one stack, the streams one after another)."""
    repeat: int = 1
    """Runs of every stream, in rounds (each round all the streams, in order), each run its own dataset and model."""
    vary_seed: bool = False
    """Each run after the first draws its stream from another seed (else every run streams the same rows)."""


class Driver:
    """Drives one stream through a running stack and records what happened."""

    def __init__(
        self, stream: Stream, services: dict[str, str], http: httpx.AsyncClient, options: Options, model: str = ""
    ) -> None:
        self.stream = stream
        self.model = model or stream.name
        """The dataset's and model's name: the stream's, or one per run when a stream runs more than once."""
        self.url = services
        self.http = http
        self.options = options
        self.record = pq.Record(stream.layout.length, regression=stream.task == "regression")
        self.alarms: dict[str, dict[str, Any]] = {}
        self.counts = {"sent": 0, "accepted": 0, "rejected": 0}
        self.rejection_reasons: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.first_model: dict[str, Any] = {}
        self.streamed_s = 0.0
        self.latency: dict[str, list[float]] = {"predict": [], "feedback": [], "ingest": []}
        self.rate_limited = 0
        """429 answers (waited out and retried)."""

    async def run(self) -> dict[str, Any]:
        answer = await self.http.put(f"{self.url['ingest']}/v1/datasets/{self.model}", json=self.stream.schema)
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"declaring {self.model} failed: {answer.status_code} {answer.text}")
        for start in range(0, self.options.initial, 1_000):
            await self._ingest(start, min(start + 1_000, self.options.initial))
        await self._wait_for_model()
        poller = asyncio.create_task(self._poll_alarms())
        try:
            await self._stream()
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        await self._fetch_alarms()
        drain_s = await self.drain()  # the jobs still running count in seconds per retrain, not in the stream
        return {**await self._collect(), "drain_s": drain_s}

    # -- traffic ---------------------------------------------------------------------------

    async def _wait_for_model(self) -> None:
        started = time.monotonic()
        deadline = started + self.options.first_model_timeout_s
        while time.monotonic() < deadline:
            answer = await self.http.get(f"{self.url['serving']}/v1/models/{self.model}")
            if answer.status_code == 200:
                waited = round(time.monotonic() - started, 1)
                self.first_model = {"version": answer.json()["version"], "seconds": waited}
                return
            if time.monotonic() - started > 30 and not await self._jobs():
                self._error("no training job queued 30 s after the initial rows: streaming without a model")
                return
            await asyncio.sleep(0.5)
        self._error(f"no model served {self.options.first_model_timeout_s:.0f} s after the initial rows")

    async def _stream(self) -> None:
        o, n = self.options, self.stream.layout.length
        interval = o.chunk / o.rate
        began = time.monotonic()
        in_flight: list[asyncio.Task[None]] = []
        last_report = began
        for k, start in enumerate(range(o.initial, n, o.chunk)):
            delay = began + k * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            stop = min(start + o.chunk, n)
            request_ids = await self._predict(start, stop)
            if len(in_flight) >= 2:  # back-pressure: at most two chunks of labels and rows in flight
                await in_flight.pop(0)
            in_flight.append(asyncio.create_task(self._teach(start, stop, request_ids)))
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                self._progress(stop, last_report - began)
        await asyncio.gather(*in_flight)
        self.streamed_s = time.monotonic() - began

    async def _predict(self, start: int, stop: int) -> list[str] | None:
        self.record.sent(start, time.time())
        instances = self.stream.records(start, stop, labelled=False)
        sent = time.perf_counter()
        try:
            answer = await self.http.post(
                f"{self.url['serving']}/v1/models/{self.model}/predict", json={"instances": instances}
            )
        except httpx.HTTPError as exc:
            self._error(f"predict failed: {exc!r}")
            return None
        self.latency["predict"].append(time.perf_counter() - sent)
        if answer.status_code != 200:
            self._error(f"predict answered {answer.status_code}: {answer.text[:200]}")
            return None
        body = answer.json()
        predictions = body["predictions"]
        truth = self.stream.target[start:stop]
        self.record.scored(start, int(body["version"]), [p["prediction"] for p in predictions], truth)
        return [p["request_id"] for p in predictions]

    async def _teach(self, start: int, stop: int, request_ids: list[str] | None) -> None:
        """The true labels as feedback, and the labelled rows to ingest."""
        work: list[Coroutine[Any, Any, object]] = [self._ingest(start, stop)]
        if request_ids:
            truth = self.stream.target[start:stop].tolist()
            labels = [{"request_id": r, "label": y} for r, y in zip(request_ids, truth, strict=True)]
            work.append(self._post(f"{self.url['serving']}/v1/feedback", {"model": self.model, "labels": labels}))
        await asyncio.gather(*work)

    async def _ingest(self, start: int, stop: int) -> None:
        rows = self.stream.records(start, stop)
        self.counts["sent"] += len(rows)
        body = await self._post(f"{self.url['ingest']}/v1/datasets/{self.model}/records", rows)
        if body is not None:
            self.counts["accepted"] += body["accepted"]
            self.counts["rejected"] += body["rejected"]
            for rejection in body.get("rejections", []):
                reason = str(rejection["reason"]).split(" row ")[0]
                self.rejection_reasons[reason] = self.rejection_reasons.get(reason, 0) + 1

    async def _post(self, url: str, payload: Any) -> dict[str, Any] | None:
        sent = time.perf_counter()
        try:
            answer = await self.http.post(url, json=payload)
            for _ in range(5):  # a rate limit: wait as told, like a well-behaved client, and count it
                if answer.status_code != 429:
                    break
                self.rate_limited += 1
                await asyncio.sleep(min(float(answer.headers.get("retry-after", 1)), 10.0))
                answer = await self.http.post(url, json=payload)
        except httpx.HTTPError as exc:
            self._error(f"POST {url} failed: {exc!r}")
            return None
        self.latency["feedback" if url.endswith("/feedback") else "ingest"].append(time.perf_counter() - sent)
        if answer.status_code >= 300:
            self._error(f"POST {url} answered {answer.status_code}: {answer.text[:200]}")
            return None
        result: dict[str, Any] = answer.json()
        return result

    def _error(self, message: str) -> None:
        """Counted by message, so that a thousand identical 404s read as one line."""
        if message in self.errors or len(self.errors) < 20:
            self.errors[message] = self.errors.get(message, 0) + 1

    def _progress(self, rows: int, seconds: float) -> None:
        recent = np.arange(max(rows - 1_000, 0), rows)
        live = self.record.metric(recent)
        version = int(self.record.version[rows - 1])
        served = "no model" if version == pq.UNSERVED else f"v{version}"
        print(f"  {self.model}: row {rows:,}/{self.stream.layout.length:,}, "
              f"{(rows - self.options.initial) / seconds:,.0f} rows/s, {served} serving, "
              f"last 1,000 rows {'-' if live is None else f'{live:.3f}'}, {len(self.alarms)} alarms",
              file=sys.stderr, flush=True)  # fmt: skip

    # -- what the services recorded --------------------------------------------------------

    async def _poll_alarms(self) -> None:
        while True:
            await self._fetch_alarms()
            await asyncio.sleep(2.0)

    async def _fetch_alarms(self) -> None:
        try:
            answer = await self.http.get(f"{self.url['monitor']}/v1/models/{self.model}/drift")
        except httpx.HTTPError:
            return
        if answer.status_code == 200:
            for alarm in answer.json().get("alarms", []):
                self.alarms.setdefault(alarm["event_id"], alarm)

    async def _jobs(self) -> list[dict[str, Any]]:
        answer = await self.http.get(f"{self.url['trainer']}/v1/training-jobs",
                                     params={"model": self.model, "limit": 500})  # fmt: skip
        return list(answer.json()) if answer.status_code == 200 else []

    async def drain(self, timeout: float = 90.0) -> float:
        """Wait until this model's jobs have ended, so the next stream starts on an idle trainer."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not any(j["status"] in ("queued", "running") for j in await self._jobs()):
                break
            await asyncio.sleep(1.0)
        return round(time.monotonic() - started, 1)

    async def _registry(self, path: str) -> list[dict[str, Any]]:
        answer = await self.http.get(f"{self.url['registry']}/v1/models/{self.model}{path}")
        return list(answer.json()) if answer.status_code == 200 else []

    async def _collect(self) -> dict[str, Any]:
        dataset = await self.http.get(f"{self.url['ingest']}/v1/datasets/{self.model}")
        return {
            "jobs": await self._jobs(),
            "audit": await self._registry("/audit?limit=1000"),
            "versions": await self._registry("/versions"),
            "ingest": dataset.json().get("records") if dataset.status_code == 200 else None,
        }


# -- one stream, end to end ---------------------------------------------------------------------


def run_name(name: str, run: int) -> str:
    """The dataset and model of a stream's ``run`` (0-based): the stream's own name for the first."""
    return name if run == 0 else f"{name}_r{run + 1}"


def run_stream(name: str, state: UpState, home: Path, options: Options, run: int = 0) -> dict[str, Any]:
    """Drive stream ``name`` through the running stack, then summarise what happened."""
    seed = options.seed + run if options.vary_seed else options.seed
    stream = make(name, seed=seed, quick=options.quick)
    model = run_name(name, run)
    print(f"{model}: {stream.description}; {stream.layout.length:,} rows", file=sys.stderr)
    started = time.monotonic()
    driver, services = asyncio.run(_drive(stream, state, home, options, model))
    result = summarise(stream, driver, services, options)
    result["run"], result["model"], result["seed"] = run + 1, model, seed
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["drain_s"] = services["drain_s"]
    return result


class Stack:
    """The stack the streams run on: one for all of them (each stream its own dataset and model,
    one after another, as models share a deployment), or a fresh one per stream (``fresh_stack``)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.supervisor: Supervisor | None = None
        self.state: UpState | None = None
        self.home = Path()
        self.startups: list[float] = []

    def up(self, label: str) -> tuple[UpState, Path]:
        if self.state is not None and not self.options.fresh_stack:
            return self.state, self.home
        self.down()
        self.home = Path(tempfile.mkdtemp(prefix=f"driftloop-bench-{label}-"))
        self.supervisor = Supervisor(self.home, ports=Supervisor.free_ports(), env=self.options.env,
                                     log_to_files=True)  # fmt: skip
        started = time.monotonic()
        self.state = self.supervisor.start()
        self.startups.append(round(time.monotonic() - started, 1))
        print(f"stack ready in {self.startups[-1]:.0f} s ({self.home})", file=sys.stderr)
        return self.state, self.home

    def down(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            if not self.options.keep:
                shutil.rmtree(self.home, ignore_errors=True)
        self.supervisor, self.state = None, None


async def _drive(
    stream: Stream, state: UpState, home: Path, options: Options, model: str
) -> tuple[Driver, dict[str, Any]]:
    limits = httpx.Limits(max_connections=16)
    token = home / "token"  # the admin token `driftloop up` writes into its home, as the demo uses it
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
        driver = Driver(stream, state.services, http, options, model)
        return driver, await driver.run()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def summarise(stream: Stream, driver: Driver, services: dict[str, Any], options: Options) -> dict[str, Any]:
    """The stream's figures and target checks from what the driver and the services recorded."""
    record, layout = driver.record, stream.layout
    changes = list(layout.changes)
    alarm_times = sorted(_epoch(a["at"]) for a in driver.alarms.values())
    promotions: dict[int, float] = {}
    for row in sorted(services["audit"], key=lambda r: r["id"]):
        if row["action"] == "promote" and row["alias"] == "champion":
            promotions.setdefault(row["to_version"], _epoch(row["at"]))
    ends = [*changes[1:], layout.length] if changes else []
    recoveries = [pq.recovery(record, c, e, alarm_times, promotions) for c, e in zip(changes, ends, strict=True)]
    first_change_at = record.time_of(changes[0]) if changes else None
    settled = layout.settled if layout.settled is not None else 0
    oracle = pq.oracle(stream.features, stream.target, settled, record.regression, options.seed)
    tail = pq.tail(record)
    jobs = _jobs(services["jobs"])
    promoted = _promotions(services["audit"], services["versions"])
    alarms_before = sum(1 for t in alarm_times if first_change_at is None or t < first_change_at)
    result: dict[str, Any] = {
        "stream": stream.name,
        "description": stream.description,
        "rows": layout.length,
        "changes": changes,
        "transition": layout.transition,
        "metric": "rmse" if record.regression else "accuracy",
        "rate": {"target": options.rate, "achieved": _rate(layout.length - options.initial, driver.streamed_s)},
        "latency_ms": {
            name: {"p50": round(1000 * float(np.median(v)), 1), "p95": round(1000 * float(np.quantile(v, 0.95)), 1)}
            for name, v in driver.latency.items()
            if v
        },
        "first_model": driver.first_model,
        "rate_limited": driver.rate_limited,
        "unserved_rows": int(np.sum(record.version[options.initial :] == pq.UNSERVED)),
        "records": {**driver.counts, "ingest": services["ingest"], "rejection_reasons": driver.rejection_reasons},
        "recoveries": [asdict(r) for r in recoveries],
        **pq.phases(record, options.initial, recoveries, changes),
        "tail": tail,
        "oracle": oracle,
        "tail_vs_oracle": pq.tail_ratio(tail, oracle, record.regression),
        "alarms": {
            "total": len(alarm_times),
            "before_change": alarms_before,
            "list": sorted(driver.alarms.values(), key=lambda a: a["at"]),
        },
        "jobs": jobs,
        "promotions": promoted,
        "decisions": _decisions(services["audit"]),
        "errors": driver.errors,
    }
    result["targets"] = targets(stream, result)
    result["critical_path"] = _critical_paths(record, recoveries, alarm_times, promotions, services)
    return result


def _critical_paths(
    record: pq.Record,
    recoveries: list[pq.Recovery],
    alarm_times: list[float],
    promotions: dict[int, float],
    services: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per change: the steps from the change to the better model answering (bench/critical_path.py)."""
    paths = []
    for r in recoveries:
        changed_at = record.time_of(r.change)
        if r.better_version is None or changed_at is None:
            continue
        first = r.change + r.better_rows if r.better_rows is not None else None
        steps = critical_path(
            version=r.better_version, changed_at=changed_at,
            alarm_at=next((t for t in alarm_times if t >= changed_at), None),
            jobs=services["jobs"], versions=services["versions"], promoted_at=promotions.get(r.better_version),
            served_at=record.time_of(first) if first is not None else None,
        )  # fmt: skip
        paths.append({"change": r.change, "version": r.better_version, "steps": [asdict(s) for s in steps]})
    return paths


def _rate(rows: int, seconds: float) -> float | None:
    return round(rows / seconds, 1) if seconds else None


def _jobs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    jobs = []
    for j in sorted(rows, key=lambda r: r["created_at"]):
        ran = j["finished_at"] and j["started_at"]
        seconds = round(_epoch(j["finished_at"]) - _epoch(j["started_at"]), 1) if ran else None
        jobs.append({"trigger": j["trigger"], "status": j["status"], "seconds": seconds, "reason": j["reason"],
                     "error": j.get("error"), "created_at": j["created_at"],
                     "search": j.get("search"), "stages": j.get("stages"), "cancel_reason": j.get("cancel_reason"),
                     "quick": j.get("quick"), "reused_version": j.get("reused_version"),
                     "export_seconds": j.get("export_seconds"), "finished_at": j.get("finished_at")})  # fmt: skip
    retrains = [j for j in jobs[1:] if j["status"] == "succeeded" and j["seconds"] is not None]
    durations = [j["seconds"] for j in retrains]
    return {
        "list": jobs,
        "first_model_s": jobs[0]["seconds"] if jobs else None,
        "retrains": len(retrains),
        "drift_jobs": sum(1 for j in jobs if j["trigger"] == "drift"),
        "retrain_s_mean": round(float(np.mean(durations)), 1) if durations else None,
        "retrain_s_max": max(durations) if durations else None,
    }


def _promotions(audit: list[dict[str, Any]], versions: list[dict[str, Any]]) -> dict[str, Any]:
    """Every promotion over a champion, checked against the holdout figures the version was registered with."""
    by_version = {v["version"]: v for v in versions}
    checked = []
    for row in sorted(audit, key=lambda r: r["id"]):
        if row["action"] != "promote" or row["from_version"] is None:
            continue
        version = by_version.get(row["to_version"], {})
        name = version.get("primary_metric")
        # The comparison that decided: the re-judgement when the first one had gone stale, else the run's.
        judged = version.get("rejudged") or {**version.get("run", {}), "metrics": version.get("metrics", {})}
        mine = judged.get("metrics", {}).get(name)
        theirs = (judged.get("champion_metrics") or {}).get(name)
        same_holdout = judged.get("champion_version") == row["from_version"] and theirs is not None
        checked.append({
            "from": row["from_version"], "to": row["to_version"], "at": row["at"], "actor": row["actor"],
            "reason": row["reason"], "metric": mine, "champion_metric": theirs if same_holdout else None,
            "worse": bool(same_holdout and mine is not None and mine < theirs),
            "unverified": not same_holdout,
        })  # fmt: skip
    return {
        "count": len(checked),
        "worse": sum(1 for c in checked if c["worse"]),
        "unverified": sum(1 for c in checked if c["unverified"]),
        "list": checked,
    }


def _decisions(audit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry's verdicts in order (promotions, rejections, re-judgements), with the reasons it audited:
    a better model thrown away shows here, not in the promotions."""
    return [
        {k: row.get(k) for k in ("at", "action", "alias", "from_version", "to_version", "reason")}
        for row in sorted(audit, key=lambda r: r["id"])
        if row["action"] != "register"
    ]


def targets(stream: Stream, r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of issue 8 that apply to this stream, each with its figure and verdict."""
    checks: dict[str, dict[str, Any]] = {}
    if stream.abrupt:
        worst = [x["better_rows"] for x in r["recoveries"]]
        value = None if None in worst else max(worst)
        checks["better model ≤ 5,000 rows after the change"] = {
            "value": value,
            "pass": value is not None and value <= ABRUPT_TARGET_ROWS,
        }
    if stream.layout.changes:
        ratio = r["tail_vs_oracle"]
        checks["tail ≥ 98 % of the oracle"] = {"value": ratio, "pass": ratio is not None and ratio >= ORACLE_SHARE}
    else:
        checks["0 alarms"] = {"value": r["alarms"]["total"], "pass": r["alarms"]["total"] == 0}
        checks["0 drift retrains"] = {"value": r["jobs"]["drift_jobs"], "pass": r["jobs"]["drift_jobs"] == 0}
    worse = r["promotions"]["worse"]
    checks["0 promotions of a worse model"] = {"value": worse, "pass": worse == 0}
    return checks


# -- the report -------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rows(values: list[int | None]) -> str:
    return " / ".join("never" if v is None else f"{v:,}" for v in values) or "–"


def table(results: list[dict[str, Any]]) -> str:
    head = ("| stream | change at row | first alarm after (rows) | better model serves after (rows) | "
            "before | during | after | tail | oracle | tail/oracle | alarms before change | retrains (drift jobs) "
            "| s per retrain (mean / max) | first model s | rows rejected | rows/s | targets |")  # fmt: skip
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['stream']} | failed: {r['error']} |" + " |" * (head.count(" | ") - 1))
            continue
        j = r["jobs"]
        change = ", ".join(f"{c:,}" for c in r["changes"]) or "none"
        if r["transition"]:
            change += f" (+{r['transition']:,} gradual)"
        passed = sum(1 for t in r["targets"].values() if t["pass"])
        metric = " (RMSE)" if r["metric"] == "rmse" else ""
        lines.append(" | ".join([
            f"| {r.get('model', r['stream'])}{metric}", change,
            _rows([x["first_alarm_rows"] for x in r["recoveries"]]) if r["changes"] else "–",
            _rows([x["better_rows"] for x in r["recoveries"]]) if r["changes"] else "–",
            _f(r["before"]), _f(r["during"]), _f(r["after"]), _f(r["tail"]), _f(r["oracle"]),
            _f(r["tail_vs_oracle"], 2),
            f"{r['alarms']['before_change']}" + ("" if r["changes"] else f" (of {r['alarms']['total']})"),
            f"{j['retrains']} ({j['drift_jobs']})",
            f"{_f(j['retrain_s_mean'], 1)} / {_f(j['retrain_s_max'], 1)}",
            _f(j["first_model_s"], 1), f"{r['records']['rejected']:,}",
            _f(r["rate"]["achieved"], 0), f"{passed}/{len(r['targets'])}",
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def verdicts(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        for name, check in r.get("targets", {}).items():
            value = check["value"]
            shown = f"{value:.3f}" if isinstance(value, float) else ("none" if value is None else f"{value:,}")
            lines.append(f"{'PASS' if check['pass'] else 'FAIL'}  {r['stream']}: {name} ({shown})")
        if "error" in r:
            lines.append(f"FAIL  {r['stream']}: {r['error']}")
            continue
        if r["unserved_rows"] or r.get("rate_limited"):
            lines.append(f"      {r['stream']}: {r['unserved_rows']:,} rows without a prediction, "
                         f"{r.get('rate_limited', 0)} requests rate-limited (429, waited out)")  # fmt: skip
        errors = r["errors"] if isinstance(r["errors"], dict) else Counter(r["errors"])  # older runs: a list
        for message, count in errors.items():
            lines.append(f"      {r['stream']}: {count} × {message}")
    return "\n".join(lines)


def _spread(values: list[float | None]) -> dict[str, Any]:
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"values": values, "mean": None, "min": None, "max": None}
    return {"values": values, "mean": float(np.mean(known)), "min": min(known), "max": max(known)}


def repeats(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per stream, per target and per figure that moves with the run: every run's value, their mean,
    min and max, and in how many runs the target was met, so a change can be told from run-to-run noise."""
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_stream.setdefault(r["stream"], []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, runs in by_stream.items():
        done = [r for r in runs if "error" not in r]
        figures: dict[str, dict[str, Any]] = {}
        for target in dict.fromkeys(t for r in done for t in r["targets"]):
            checks = [r["targets"].get(target) for r in done]
            values = [c["value"] if c else None for c in checks]
            figures[target] = {**_spread(values), "met": sum(1 for c in checks if c and c["pass"])}
        if done and done[0]["changes"]:
            figures["alarms after the first change"] = _spread(
                [r["alarms"]["total"] - r["alarms"]["before_change"] for r in done]
            )
        figures["s per retrain (mean)"] = _spread([r["jobs"]["retrain_s_mean"] for r in done])
        for figure in figures.values():
            figure["runs"], figure["failed"] = len(runs), len(runs) - len(done)
        out[name] = figures
    return out


def _value(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if float(v).is_integer() and abs(v) >= 10 else f"{v:.3g}"


def _stat(v: float | None) -> str:
    return "–" if v is None else (f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3f}")


def repeats_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| stream | figure | runs | values | mean | min | max | met |", "|---|---|---|---|---|---|---|---|"]
    for name, figures in summary.items():
        for figure, f in figures.items():
            shown = ", ".join(_value(v) for v in f["values"])
            failed = f" ({f['failed']} failed)" if f["failed"] else ""
            met = f"{f['met']}/{f['runs']}" if "met" in f else ""
            lines.append(f"| {name} | {figure} | {f['runs']}{failed} | {shown} | {_stat(f['mean'])} | "
                         f"{_stat(f['min'])} | {_stat(f['max'])} | {met} |")  # fmt: skip
    return "\n".join(lines)


def critical_paths(results: list[dict[str, Any]]) -> str:
    """Where the time went from each change to the better model answering (bench/critical_path.py)."""
    lines = []
    for r in results:
        for path in r.get("critical_path", []):
            lines.append(f"\n{r['stream']}: change at row {path['change']:,} → v{path['version']} answering")
            lines.append(render([Step(**s) for s in path["steps"]]))
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default=",".join(GENERATORS), help="comma-separated subset of: %(default)s")
    parser.add_argument("--quick", action="store_true", help="shorter streams (a smoke run of a few minutes)")
    parser.add_argument("--rate", type=float, default=1_000.0, help="rows per second (default %(default)s)")
    parser.add_argument("--chunk", type=int, default=250, help="rows per predict/feedback/ingest round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--first-model-timeout", type=float, default=300.0, help="seconds to wait for a first model")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a service setting, e.g. DRIFTLOOP_MONITOR_WINDOW_SIZE=250 (default: none)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep each stream's home (logs, data) after the run")
    parser.add_argument("--fresh-stack", action="store_true",
                        help="a stack per stream (default: one stack, the streams one after another)")  # fmt: skip
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every stream N times (in rounds) and print each target's mean/min/max over the runs",
    )
    parser.add_argument(
        "--vary-seed",
        action="store_true",
        help="with --repeat: run k draws its stream from seed + k - 1 (default: the same rows each run)",
    )
    parser.add_argument("--report", type=Path, help="print the table of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    if args.report:
        done = json.loads(args.report.read_text())
        print(f"{done['date']}, commit {done['commit']}, {done['cores']} cores\n\n{table(done['streams'])}\n")
        print(verdicts(done["streams"]))
        print(critical_paths(done["streams"]))
        if done.get("options", {}).get("repeat", 1) > 1:
            print(f"\n{repeats_table(repeats(done['streams']))}")
        sys.exit(0)
    names = [s.strip() for s in args.streams.split(",") if s.strip()]
    unknown = [s for s in names if s not in GENERATORS]
    if unknown:
        parser.error(f"unknown streams {unknown}; choose from {', '.join(GENERATORS)}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    env = dict(item.split("=", 1) for item in args.env)
    options = Options(streams=names, quick=args.quick, rate=args.rate, chunk=args.chunk, seed=args.seed,
                      first_model_timeout_s=args.first_model_timeout, env=env, keep=args.keep,
                      fresh_stack=args.fresh_stack, repeat=args.repeat, vary_seed=args.vary_seed)  # fmt: skip
    return options, args.json


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so that `finally` stops the stack, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    options, json_path = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    for name in ("DRIFTLOOP_DATABASE_URL", "DRIFTLOOP_KAFKA_BOOTSTRAP", "DRIFTLOOP_ARTIFACTS_ROOT", "DRIFTLOOP_TOKEN"):
        if os.environ.pop(name, None):  # every stream gets a stack of its own
            print(f"ignoring {name}: the benchmark starts its own stack per stream", file=sys.stderr)
    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "options": asdict(options),
    }
    results: list[dict[str, Any]] = []
    stack = Stack(options)
    try:
        for run, name in ((run, name) for run in range(options.repeat) for name in options.streams):
            try:
                state, home = stack.up(run_name(name, run))
                results.append(run_stream(name, state, home, options, run))
            except Exception as exc:  # one broken stream must not lose the others' figures
                results.append({"stream": name, "run": run + 1, "error": f"{type(exc).__name__}: {exc}"})
            print(table(results[-1:]).splitlines()[-1], file=sys.stderr)
            meta["seconds"] = round(time.monotonic() - started, 1)
            meta["stack_startup_s"] = stack.startups
            if json_path is not None:  # after every stream: a long run interrupted keeps what it measured
                json_path.write_text(json.dumps({**meta, "streams": results}, indent=2, default=str))
    finally:
        stack.down()
    quick = " (quick)" if options.quick else ""
    print(f"\nLoop benchmark, {meta['date']}, commit {meta['commit']}, {meta['cores']} cores, "
          f"{options.rate:,.0f} rows/s target, {meta['seconds']:.0f} s{quick}\n")  # fmt: skip
    print(table(results))
    print()
    print(verdicts(results))
    print(critical_paths(results))
    if options.repeat > 1:
        print(f"\n{options.repeat} runs per stream:\n\n{repeats_table(repeats(results))}")
    met = all(t["pass"] for r in results for t in r.get("targets", {}).values())
    return 0 if met and all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
