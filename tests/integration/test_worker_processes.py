"""Worker processes: one per job, killable, and never outliving the trainer."""

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
    workers = Workers(preload="tests.workload")
    try:
        worker = workers.take("a")
        assert await worker.run(workload.answer, {"value": 42}) == {"echo": 42}
        workers.release("a")
        failing = workers.take("b")
        assert failing is not worker  # one process per job
        with pytest.raises(JobFailed, match="ValueError: bad input"):
            await failing.run(workload.fail, {"why": "bad input"})
        await wait_until(lambda: workload.process_gone(worker.pid) and workload.process_gone(failing.pid),
                         timeout=15, message="finished workers to exit")  # fmt: skip
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
