"""One worker process per job: started warm, stoppable at any moment, never orphaned.

A process pool cannot stop one task, and breaks for good when a worker dies.
Here every job gets a process of its own, so cancelling a job is killing its
process, and a crash costs that job only. Each worker:

- is spawned, not forked (the service's threads and sockets must not be
  copied), and spawned from the event loop's thread: PR_SET_PDEATHSIG fires
  when the *thread* that created the child ends;
- leads its own process group, so a stop takes the helpers it started with it
  (joblib/loky workers, resource trackers);
- asks the kernel for SIGTERM when the trainer dies (``die_with_parent``) and
  answers it by killing its whole group: nothing outlives a ``kill -9`` of
  the trainer.

Importing scikit-learn costs a second or two, so one worker is kept warm:
it starts, imports the job code, and waits for its job on a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from libs.common.process import die_with_parent

log = logging.getLogger(__name__)
_CONTEXT = multiprocessing.get_context("spawn")


class WorkerLost(RuntimeError):
    """The worker process ended without an answer (killed, crashed, out of memory)."""


class JobFailed(RuntimeError):
    """The job raised in its worker; the message carries the worker's error."""


def _stop_group(signum: int, frame: Any) -> None:
    os.killpg(0, signal.SIGKILL)  # this process and every helper it started


def _worker_main(parent_pid: int, channel: Connection, preload: str) -> None:
    """Entry point of a worker process: tie it to the trainer, warm up, run one job."""
    os.setsid()
    signal.signal(signal.SIGTERM, _stop_group)
    die_with_parent()
    if os.getppid() != parent_pid:  # the trainer died before the line above took effect
        _stop_group(signal.SIGTERM, None)
    importlib.import_module(preload)
    try:
        message = channel.recv()
    except EOFError:  # the trainer closed the pipe: stop quietly
        return
    target: Callable[[dict[str, Any]], dict[str, Any]] = message["target"]
    answer: tuple[str, Any]
    try:
        answer = ("ok", target(message["spec"]))
    except BaseException as exc:  # everything crosses back as a message
        answer = ("error", f"{type(exc).__name__}: {exc}")
    channel.send(answer)
    channel.close()
    sys.stdout.flush()


class WorkerProcess:
    """A started (warm) worker process waiting for the one job it will run."""

    def __init__(self, preload: str) -> None:
        self._channel, child = _CONTEXT.Pipe(duplex=True)
        self.process = _CONTEXT.Process(
            target=_worker_main, args=(os.getpid(), child, preload), name="trainer-worker", daemon=False
        )
        self.process.start()
        child.close()
        self.killed = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    async def run(self, target: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
        """Run ``target(spec)`` in this process; raise JobFailed or WorkerLost. Cancelling kills the process."""
        try:
            self._channel.send({"target": target, "spec": spec})
            answer = await asyncio.to_thread(self._answer)
        except (OSError, EOFError) as exc:
            raise WorkerLost(f"worker {self.pid} ended before answering: {exc}") from exc
        except asyncio.CancelledError:
            self.kill()
            raise
        finally:
            self._reap_later()
        status, payload = answer
        if status != "ok":
            raise JobFailed(str(payload))
        result: dict[str, Any] = payload
        return result

    def _answer(self) -> tuple[str, Any]:
        ready = wait([self._channel, self.process.sentinel])
        if self._channel in ready:
            with contextlib.suppress(EOFError, OSError):
                answer: tuple[str, Any] = self._channel.recv()
                return answer
        self.process.join(5)
        how = "killed" if self.killed else f"exit code {self.process.exitcode}"
        raise WorkerLost(f"worker {self.pid} ended without an answer ({how})")

    def kill(self) -> None:
        """Stop the worker and every process of its group at once (SIGKILL: a job needs no clean-up)."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # before it had its own group

    def _reap_later(self) -> None:
        """Collect the exit status off the event loop so no zombie stays behind."""
        asyncio.get_running_loop().run_in_executor(None, self._reap)

    def _reap(self) -> None:
        self.process.join(30)
        if self.process.exitcode is None:  # a worker that answered but hangs on exit
            self.kill()
            self.process.join(5)
        self._channel.close()


class Workers:
    """Hands out warm worker processes, one per job, and keeps one warm for the next."""

    def __init__(self, preload: str) -> None:
        self.preload = preload
        self._warm: WorkerProcess | None = None
        self.running: dict[Any, WorkerProcess] = {}
        self.closed = False

    def warm_up(self) -> None:
        """Have a started worker waiting (called when idle, so warming never competes with a job)."""
        if not self.closed and (self._warm is None or not self._warm.alive()):
            self._warm = WorkerProcess(self.preload)

    def take(self, key: Any) -> WorkerProcess:
        """A worker for job ``key``: the warm one if it is healthy, else a new one."""
        if self.closed:
            raise WorkerLost("the trainer is stopping")
        worker = self._warm if self._warm is not None and self._warm.alive() else WorkerProcess(self.preload)
        self._warm = None
        self.running[key] = worker
        return worker

    def release(self, key: Any) -> None:
        self.running.pop(key, None)
        self.warm_up()

    def kill(self, key: Any) -> bool:
        """Kill the worker of job ``key``; False when this process runs no such job."""
        worker = self.running.get(key)
        if worker is None:
            return False
        worker.kill()
        return True

    def close(self) -> None:
        """Kill every worker (the warm one too) and wait for them: nothing outlives the trainer."""
        self.closed = True
        workers = [*self.running.values(), *([self._warm] if self._warm else [])]
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.process.join(5)
        self.running.clear()
        self._warm = None
