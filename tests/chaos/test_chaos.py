"""Chaos: kill -9 every service, the broker and PostgreSQL at random moments while a
client streams 30,000 rows and retries what failed; then count.

The client sends 60 batches of 500 rows, each with its own Idempotency-Key, and
retries a batch (same key, same body) until ingest answers 200: on a refused
connection, a cut-off answer, 5xx, 503 or 429. Meanwhile the faults come one after
the other, each at a random batch (seeded; ``DRIFTLOOP_CHAOS_SEED`` picks another
run): ingest is killed twice, the trainer (during a job), the registry, serving (while
it serves a champion: how soon it predicts again is printed) and the monitor once; the
broker is killed and restarted empty on its port, PostgreSQL is killed and restarted on
its data directory. The loop runs all along (first model at 2,000
rows, a retrain every 10,000).

Then: 30,000 rows stored, each key once, no rejection, one submission per batch;
no training job registered twice, no version promoted twice; every consumer
group's lag back to 0; and the loop still closes: a champion serves predictions.
What a memory-only broker forgets when it restarts (events in flight, committed
offsets) is not counted as lost here: see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cli.churn_stream import SCHEMA, ChurnStream
from cli.main import DEMO_ENV
from cli.supervisor import Supervisor, UpState
from cli.tokens import read_token
from libs.common.idempotency import HEADER
from libs.common.kafka import consumer_lag

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

ROWS = 30_000
BATCH = 500
DATASET = "chaos"
FAULTS = ("ingest", "trainer", "broker", "ingest", "registry", "postgres", "serving", "monitor")
ENV = {
    **DEMO_ENV,
    "DRIFTLOOP_TRAINER_MIN_NEW_ROWS": "10000",  # retrains during the stream: jobs to interrupt
    "DRIFTLOOP_TRAINER_JOB_LEASE_S": "15",
}


@dataclass
class Figures:
    attempts: int = 0
    retried: dict[str, int] = field(default_factory=dict)
    faults: list[tuple[str, int, float]] = field(default_factory=list)
    """(what, at batch, seconds until it answered again)"""
    trainer_mid_job: bool = False
    serving_answered: float | None = None
    """Seconds from serving's kill -9 to its first prediction again (None: no champion served before)."""


@pytest.fixture(scope="module")
def stack() -> Iterator[Supervisor]:
    # Not under pytest's basetemp (see tests/e2e/test_loop.py).
    home = Path(tempfile.mkdtemp(prefix="driftloop-chaos-"))
    supervisor = Supervisor(home, ports=Supervisor.free_ports(), env=ENV, log_to_files=True)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()
        shutil.rmtree(home, ignore_errors=True)


def _kill_and_restart(supervisor: Supervisor, what: str) -> None:
    stack = supervisor.stack
    if what == "broker":
        assert stack.kafka is not None
        stack.kafka.process.stop(signal.SIGKILL)
        stack.kafka.start()  # same port, empty
    elif what == "postgres":
        assert stack.postgres is not None
        stack.postgres.process.stop(signal.SIGKILL)
        for attempt in range(20):  # its backends notice the dead postmaster and leave, then it starts again
            try:
                stack.postgres.start()
                break
            except RuntimeError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
    else:
        supervisor.restart(what, timeout=180, kill=True)


async def _post(client: httpx.AsyncClient, url: str, rows: list[dict[str, Any]], figures: Figures) -> dict[str, Any]:
    """One batch, retried with its key until stored; the answer of the attempt that got through."""
    headers = {HEADER: f"chaos-{rows[0]['row_id']}"}
    delay = 0.2
    deadline = time.monotonic() + 300
    while True:
        figures.attempts += 1
        try:
            answer = await client.post(url, json=rows, headers=headers)
            if answer.status_code == 200:
                return dict(answer.json())
            why = str(answer.status_code)
            if answer.status_code < 500 and answer.status_code != 429:
                raise AssertionError(f"ingest refused a good batch: {answer.status_code} {answer.text[:300]}")
        except httpx.TransportError as exc:
            why = type(exc).__name__
        figures.retried[why] = figures.retried.get(why, 0) + 1
        assert time.monotonic() < deadline, f"batch at row {rows[0]['row_id']} not stored after 300 s"
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


@dataclass
class Progress:
    """How far the stream is; it waits at a fault's batch until that fault has struck,
    so every fault lands during the stream however fast either side runs."""

    batches: int = 0
    struck: int = 0
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    def one_more(self) -> None:
        self.batches += 1
        self.moved.set()

    def strike(self) -> None:
        self.struck += 1
        self.moved.set()

    async def reached(self, batches: int) -> None:
        while self.batches < batches:
            self.moved.clear()
            await self.moved.wait()

    async def faults_before(self, batch: int, moments: list[int]) -> None:
        while self.struck < sum(1 for m in moments if m <= batch):
            self.moved.clear()
            await self.moved.wait()


async def _job_running(database_url: str, timeout: float = 90) -> bool:
    """Wait for a training job to be running (the trainer is killed mid-job); False if none came.

    PostgreSQL may be killed and restarted meanwhile (faults strike side by side): a closed connection
    is opened again."""
    deadline = time.monotonic() + timeout
    conn: asyncpg.Connection | None = None
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(database_url, timeout=5)
                if await conn.fetchval("SELECT count(*) FROM trainer.jobs WHERE status = 'running'"):
                    return True
            await asyncio.sleep(0.2)
    finally:
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError, OSError):
                await conn.close()
    return False


async def _faults(
    supervisor: Supervisor, progress: Progress, moments: list[int], order: list[str], figures: Figures
) -> None:
    """Each fault at its batch; the restarts run side by side, as crashes would come."""
    assert supervisor.state is not None

    database_url = supervisor.state.database_url

    async def strike(what: str, at: int) -> None:
        if what == "trainer":  # during a job (the stream goes on meanwhile: jobs come with rows)
            figures.trainer_mid_job = await _job_running(database_url)
        served = what == "serving" and await _champion_serves(supervisor)
        started = time.monotonic()
        await asyncio.to_thread(_kill_and_restart, supervisor, what)
        figures.faults.append((what, at, time.monotonic() - started))
        if served:  # ready means its champions are loaded: the first request after it is answered
            await _until(lambda: _predicts(supervisor), timeout=60, message="serving predicting after its restart")
            figures.serving_answered = time.monotonic() - started

    restarts = []
    for what, at in zip(order, moments, strict=True):
        await progress.reached(at)
        restarts.append(asyncio.create_task(strike(what, at)))
        await asyncio.sleep(0.5)  # the kill lands before the stream goes on
        progress.strike()
    await asyncio.gather(*restarts)


async def _predicts(supervisor: Supervisor) -> int | None:
    """The version serving answers a prediction of the chaos model with, None when it does not."""
    assert supervisor.state is not None
    state = supervisor.state
    instance = {k: v for k, v in ChurnStream(seed=1).batch(1)[0].items() if k != "churned"}
    auth = {"Authorization": f"Bearer {read_token(Path(state.home))}"}
    async with httpx.AsyncClient(timeout=10, headers=auth) as client:
        try:
            answer = await client.post(f"{state.services['serving']}/v1/models/{DATASET}/predict",
                                       json={"instances": [instance]})  # fmt: skip
        except httpx.TransportError:
            return None
    return int(answer.json()["version"]) if answer.status_code == 200 else None


async def _champion_serves(supervisor: Supervisor, timeout: float = 120) -> bool:
    """Wait for a champion to serve (serving is killed while it serves one); False if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _predicts(supervisor) is not None:
            return True
        await asyncio.sleep(0.5)
    return False


async def _until(probe: Any, *, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(1)
    raise AssertionError(f"{message} (last: {last!r})")


async def test_nothing_is_lost_or_stored_twice_when_everything_is_killed(stack: Supervisor) -> None:
    state = stack.state
    assert state is not None
    seed = int(os.environ.get("DRIFTLOOP_CHAOS_SEED", "2026"))
    rng = random.Random(seed)
    figures = Figures()
    auth = {"Authorization": f"Bearer {read_token(Path(state.home))}"}
    ingest = state.services["ingest"]
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, headers=auth) as client:
        declared = await client.put(f"{ingest}/v1/datasets/{DATASET}", json={**SCHEMA, "key": "row_id"})
        assert declared.status_code in (200, 201), declared.text
        stream = ChurnStream(seed=seed)
        progress = Progress()
        # the first model is trained from batch 4 on (2,000 rows): the trainer is killed during a job
        moments = sorted(rng.sample(range(5, ROWS // BATCH - 5), len(FAULTS)))
        order = list(FAULTS)
        rng.shuffle(order)
        chaos = asyncio.create_task(_faults(stack, progress, moments, order, figures))
        for batch, start in enumerate(range(0, ROWS, BATCH)):
            await progress.faults_before(batch, moments)
            rows = [{"row_id": f"r{start + i:05d}", **row} for i, row in enumerate(stream.batch(BATCH))]
            answer = await _post(client, f"{ingest}/v1/datasets/{DATASET}/records", rows, figures)
            assert (answer["accepted"], answer["rejected"]) == (BATCH, 0), answer
            progress.one_more()
        await chaos
        streamed = time.monotonic() - started
        print(f"\nchaos seed {seed}: {ROWS} rows in {ROWS // BATCH} batches, {streamed:.0f} s, "
              f"{figures.attempts} attempts, retried {figures.retried}")  # fmt: skip
        for what, at, took in sorted(figures.faults, key=lambda f: f[1]):
            print(f"  kill -9 {what:<8} at batch {at:>2}: answering again after {took:.1f} s")
        print(f"  the trainer was killed during a job: {figures.trainer_mid_job}")
        if figures.serving_answered is not None:
            print(f"  serving predicted again {figures.serving_answered:.1f} s after its kill -9")
        else:
            print("  serving had no champion yet when it was killed")

        await _check_ingest(state)
        await _check_loop_closes(client, state)
        await _check_registered_once(state)
        await _check_lag_drains(state)


async def _check_ingest(state: UpState) -> None:
    conn = await asyncpg.connect(state.database_url)
    try:
        total = await conn.fetchval("SELECT total_rows FROM ingest.datasets WHERE name = $1", DATASET)
        keys = await conn.fetchval("SELECT count(*) FROM ingest.record_keys WHERE dataset = $1", DATASET)
        rejected = await conn.fetchval(
            "SELECT COALESCE(sum(rows), 0) FROM ingest.rejection_blocks WHERE dataset = $1", DATASET
        )
        submissions = await conn.fetch(
            "SELECT accepted, count(*) AS n FROM ingest.submissions WHERE dataset = $1 GROUP BY accepted", DATASET
        )
    finally:
        await conn.close()
    print(f"  ingest: {total} rows stored, {keys} distinct keys, {rejected} rejected, "
          f"submissions {[(r['accepted'], r['n']) for r in submissions]}")  # fmt: skip
    assert total == ROWS  # nothing lost, nothing stored twice
    assert keys == ROWS  # every row once
    assert rejected == 0  # no retry was taken for a second copy ("duplicate key")
    assert [(r["accepted"], r["n"]) for r in submissions] == [(BATCH, ROWS // BATCH)]


async def _check_loop_closes(client: httpx.AsyncClient, state: UpState) -> None:
    serving = state.services["serving"]
    instance = {k: v for k, v in ChurnStream(seed=1).batch(1)[0].items() if k != "churned"}

    async def served() -> int | None:
        try:
            answer = await client.post(f"{serving}/v1/models/{DATASET}/predict", json={"instances": [instance]})
        except httpx.TransportError:
            return None
        return int(answer.json()["version"]) if answer.status_code == 200 else None

    version = await _until(served, timeout=240, message="a champion serving predictions after the faults")
    print(f"  loop: version {version} serves")


async def _check_registered_once(state: UpState) -> None:
    conn = await asyncpg.connect(state.database_url)
    try:
        versions = await conn.fetch("SELECT version, job_id FROM registry.versions WHERE model = $1", DATASET)
        twice = await conn.fetch(
            "SELECT job_id, count(*) FROM registry.versions WHERE model = $1 GROUP BY job_id HAVING count(*) > 1",
            DATASET,
        )
        promoted_twice = await conn.fetch(
            "SELECT to_version, count(*) FROM registry.audit WHERE model = $1 AND action = 'promote' "
            "GROUP BY to_version HAVING count(*) > 1",
            DATASET,
        )
        jobs = await conn.fetch("SELECT status, count(*) AS n FROM trainer.jobs WHERE model = $1 GROUP BY status",
                                DATASET)  # fmt: skip
    finally:
        await conn.close()
    print(f"  registry: {len(versions)} versions; trainer jobs {dict((r['status'], r['n']) for r in jobs)}")
    assert versions
    assert twice == []  # a job re-run after a kill -9 is registered once
    assert promoted_twice == []


async def _check_lag_drains(state: UpState) -> None:
    async def drained() -> bool:
        rows = await consumer_lag(state.kafka_bootstrap)
        return bool(rows) and all(r.lag == 0 for r in rows)

    started = time.monotonic()
    await _until(drained, timeout=120, message="every consumer group's lag back to 0")
    print(f"  lag: 0 in every group after {time.monotonic() - started:.1f} s")
