"""Worker processes: one job at a time each, kept warm, killable, and never outliving the trainer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from services.trainer.adapters.processes import JobFailed, WorkerLost, WorkerProcess, Workers
from tests import workload
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


async def test_a_worker_answers_reports_errors_and_is_reaped() -> None:
    workers = Workers(preload="tests.workload", max_jobs=2)
    try:
        worker = workers.take("a")
        assert await worker.run(workload.answer, {"value": 42}) == {"echo": 42}
        workers.release("a")
        again = workers.take("b")
        assert again is worker  # a worker whose job ended normally waits, warm, for the next one
        with pytest.raises(JobFailed, match="ValueError: bad input"):
            await again.run(workload.fail, {"why": "bad input"})
        workers.release("b")
        fresh = workers.take("c")
        assert fresh is not worker  # a failed job's worker is never reused
        await wait_until(lambda: workload.process_gone(worker.pid), timeout=15, message="the failed worker to exit")
        assert await fresh.run(workload.answer, {"value": 1}) == {"echo": 1}
        workers.release("c")
        assert await workers.take("d").run(workload.answer, {"value": 2}) == {"echo": 2}
        workers.release("d")
        assert workers.take("e") is not fresh  # max_jobs=2: replaced after its second job
        workers.release("e")
        light, holder = workers.take("f"), "f"
        for key in ("g", "h", "i"):  # exports and re-judgements (not counted) do not wear it out
            assert await light.run(workload.answer, {"value": 3}, counted=False) == {"echo": 3}
            workers.release(holder)
            assert workers.take(key) is light
            holder = key
        workers.release(holder)
        await wait_until(lambda: workload.process_gone(fresh.pid), timeout=15, message="the used-up worker to exit")
    finally:
        workers.close()


async def test_a_job_goes_to_the_warm_worker_that_holds_its_champion_in_memory() -> None:
    workers = Workers(preload="tests.workload")
    try:
        first, second = workers.take("a"), workers.take("b")
        assert first is not second
        await asyncio.gather(first.run(workload.answer, {"value": 1}), second.run(workload.answer, {"value": 2}))
        first.remember(["older", "champion", "other"], capacity=2)
        assert first.holds == ["champion", "other"]  # the most recent, as the worker's own cache keeps them
        first.remember(["champion"], capacity=2)
        assert first.holds == ["other", "champion"]
        second.remember(["challenger"], capacity=2)
        workers.release("a")
        workers.release("b")  # the most recently used, which a job without a champion gets
        assert workers.take("c", holding="champion") is first
        assert workers.take("d", holding="older") is second  # nobody holds it: the most recently used
        workers.release("c")
        workers.release("d")
    finally:
        workers.close()


async def test_a_job_waits_briefly_for_the_busy_worker_that_holds_its_champion() -> None:
    workers = Workers(preload="tests.workload")
    try:
        holder = workers.take("train v4")
        await holder.run(workload.answer, {"value": 4})
        holder.remember(["v4"], capacity=2)
        workers.release("train v4")
        assert workers.take("export v4", holding="v4") is holder  # the export of v4 runs where v4 is in memory
        exporting = asyncio.create_task(holder.run(workload.pause, {"seconds": 0.5}))
        workers.warm_up(2)  # another warm worker is idle meanwhile
        assert workers.busy_holding("v4")
        assert not workers.busy_holding("v3")  # nobody holds it: nothing to wait for
        assert await workers.holder_free("v3", wait_s=5) < 0.05
        assert await workers.holder_free("v4", wait_s=0) < 0.05  # 0: never waits

        async def export_ends() -> None:
            await exporting
            workers.release("export v4")

        ending = asyncio.create_task(export_ends())
        waited = await workers.holder_free("v4", wait_s=10)
        await ending
        assert 0.05 < waited < 10  # until the export ended, not the whole wait
        assert not workers.busy_holding("v4")
        assert workers.take("refresh", holding="v4") is holder  # the refresh after it gets the worker holding v4
        workers.release("refresh")
    finally:
        workers.close()


async def test_a_job_that_may_be_cancelled_keeps_a_warm_spare_for_the_job_replacing_it(tmp_path: Path) -> None:
    workers = Workers(preload="tests.workload")
    pids = tmp_path / "pids"
    try:
        routine = workers.take("routine", spare=True)
        task = asyncio.create_task(routine.run(workload.sleep_with_helper, {"pids": str(pids)}))
        await wait_until(pids.exists, timeout=30, message="the routine job to start")
        spare = workers._warm
        assert spare is not None  # started beside the routine job
        assert spare.alive()
        assert spare is not routine
        assert len(workers._idle) == 2  # two: the drift job's worker may itself be killed for the next one
        assert workers.kill("routine")
        assert len(workers._idle) == 2  # none missing: the kill did not take one yet
        with pytest.raises(WorkerLost, match="killed"):
            await task
        workers.release("routine")
        spares = list(workers._idle)
        # Once both spares are warm, the job takes the one waiting last (the most recently used is kept last);
        # which of the two was warm first when `spare` was read differs on a loaded machine.
        await wait_until(lambda: all(w.warmed() for w in spares), timeout=60, message="the spares to finish importing")
        drift = workers.take("drift")
        assert drift is spares[-1]
        assert spare in spares
        assert len(workers._idle) == 1  # the second spare, for a drift job that follows this one
        assert await drift.run(workload.answer, {"value": "now"}) == {"echo": "now"}
        assert workers.kill("drift")
        assert len(workers._idle) == 2  # the kill started a replacement at once
        workers.release("drift")
        await wait_until(lambda: workload.process_gone(routine.pid), timeout=30, message="the killed worker to go")
    finally:
        workers.close()


async def test_killing_a_job_stops_its_worker_and_the_helpers_it_started(tmp_path: Path) -> None:
    workers = Workers(preload="tests.workload")
    pids = tmp_path / "pids"
    try:
        worker = workers.take("job")
        run = worker.run(workload.sleep_with_helper, {"pids": str(pids)})
        task = asyncio.create_task(run)
        await wait_until(pids.exists, timeout=30, message="the job to start its helper")
        helper = int(pids.read_text())
        assert workers.kill("job")
        with pytest.raises(WorkerLost, match="killed"):
            await task
        await wait_until(lambda: workload.process_gone(worker.pid) and workload.process_gone(helper),
                         timeout=10, message="the worker and its helper to be gone")  # fmt: skip
    finally:
        workers.close()


def test_a_killed_trainer_leaves_no_worker_processes(tmp_path: Path) -> None:
    """kill -9 of the process owning the workers: the running worker, its helper and the warm spare all die."""
    pids = tmp_path / "pids"
    owner = textwrap.dedent(f"""
        import asyncio, sys
        from services.trainer.adapters.processes import Workers
        from tests import workload

        async def main():
            workers = Workers(preload="tests.workload")
            worker = workers.take("job")
            workers.warm_up()
            print(worker.pid, workers._warm.pid, flush=True)
            await worker.run(workload.sleep_with_helper, {{"pids": {str(pids)!r}}})

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])  # fmt: skip
    try:
        assert proc.stdout is not None
        worker_pid, spare_pid = (int(p) for p in proc.stdout.readline().split())
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        helper_pid = int(pids.read_text())
        assert not workload.process_gone(worker_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        alive = [worker_pid, spare_pid, helper_pid]
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if not workload.process_gone(p)]
            time.sleep(0.1)
        assert alive == [], f"processes outlived the trainer: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_worker_started_for_a_dead_parent_stops_itself() -> None:
    """The window before PR_SET_PDEATHSIG takes effect: a worker whose parent is already gone exits."""
    worker = WorkerProcess("tests.workload")
    worker.process.join(0.1)
    assert worker.alive()  # a healthy parent: it waits for its job
    worker.kill()
    worker.process.join(5)
    assert not worker.alive()
