"""Worker processes for jobs: started warm, stoppable at any moment, never orphaned.

A process pool cannot stop one task, and breaks for good when a worker dies.
Here a job runs in a process nobody else uses while it runs, so cancelling a
job is killing its process, and a crash costs that job only. Each worker:

- is spawned, not forked (the service's threads and sockets must not be
  copied), and spawned from the event loop's thread: PR_SET_PDEATHSIG fires
  when the *thread* that created the child ends;
- leads its own process group, so a stop takes the helpers it started with it
  (joblib/loky workers, resource trackers);
- asks the kernel for SIGTERM when the trainer dies (``die_with_parent``) and
  answers it by killing its whole group: nothing outlives a ``kill -9`` of
  the trainer.

Importing scikit-learn, skl2onnx and onnxruntime costs seconds (tens on a busy
machine), and that time would sit between an alarm and its retrained model.
So workers are kept warm: a worker starts, imports the job code (``preload``,
``"module"`` or ``"module:function"`` to also call a warm-up function), and
waits for jobs on a pipe. A worker whose job ended normally goes back to wait
for the next one (up to ``max_jobs`` jobs, so memory a job leaves behind is
bounded); a killed, crashed or failed one is never reused. Up to three wait
between jobs, and a job that drift may cancel runs with two waiting beside
it, so the drift job that replaces it starts in a warm process. A kill costs
a warm process: its replacement is started at once, not when the next job
asks for one. Two routine jobs cancelled within seconds (a concept that
changes again while its refresh trains) used up both spares of a pool that
kept one, and the next drift job waited 18.7 s for a new process's imports.
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
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from libs.common.process import die_with_parent

log = logging.getLogger(__name__)
_CONTEXT = multiprocessing.get_context("spawn")


class WorkerLost(RuntimeError):
    """The worker process ended without an answer (killed, crashed, out of memory)."""


_READY = ("ready", None)
"""What a worker says once it has imported everything and waits for jobs."""


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
    module, _, warm = preload.partition(":")
    loaded = importlib.import_module(module)
    if warm:
        getattr(loaded, warm)()
    channel.send(_READY)  # the trainer prefers a worker that is done importing
    while True:  # jobs one after another, until the trainer closes the pipe
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
        sys.stdout.flush()


class WorkerProcess:
    """A started (warm) worker process waiting for the jobs it will run, one at a time."""

    def __init__(self, preload: str) -> None:
        self._channel, child = _CONTEXT.Pipe(duplex=True)
        self.process = _CONTEXT.Process(
            target=_worker_main, args=(os.getpid(), child, preload), name="trainer-worker", daemon=False
        )
        self.process.start()
        child.close()
        self.killed = False
        self.jobs = 0
        """Counted jobs handed to this process so far (training jobs: see ``run``)."""
        self.clean = True
        """Every job so far answered normally: the process may take another."""
        self.holds: list[str] = []
        """The sha256 of the pipelines this process last had in memory (``pipelines``), the most recent last."""
        self._warmed = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    async def run(
        self, target: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any], *, counted: bool = True
    ) -> dict[str, Any]:
        """Run ``target(spec)`` in this process; raise JobFailed or WorkerLost. Cancelling kills the process.
        ``counted``: the run counts toward the jobs after which the process is replaced (a light one, an export
        or a re-judgement scoring pipelines already in memory, does not)."""
        self.jobs += counted
        self.clean = False  # until the answer is in
        try:
            self._channel.send({"target": target, "spec": spec})
            answer = await asyncio.to_thread(self._answer)
        except (OSError, EOFError) as exc:
            raise WorkerLost(f"worker {self.pid} ended before answering: {exc}") from exc
        except asyncio.CancelledError:
            self.kill()
            raise
        status, payload = answer
        if status != "ok":
            raise JobFailed(str(payload))
        self.clean = True
        result: dict[str, Any] = payload
        return result

    def _answer(self) -> tuple[str, Any]:
        while self._channel in wait([self._channel, self.process.sentinel]):
            try:
                answer: tuple[str, Any] = self._channel.recv()
            except (EOFError, OSError):
                break
            if answer != _READY:  # taken before it said it was warm: the job's answer follows
                return answer
            self._warmed = True
        self.process.join(5)
        how = "killed" if self.killed else f"exit code {self.process.exitcode}"
        raise WorkerLost(f"worker {self.pid} ended without an answer ({how})")

    def remember(self, sha256s: list[str], capacity: int) -> None:
        """The job just answered used these pipelines: the process keeps the ``capacity`` most recent."""
        for sha in sha256s:
            if sha in self.holds:
                self.holds.remove(sha)
            self.holds.append(sha)
        del self.holds[:-capacity]

    def warmed(self) -> bool:
        """Whether the worker finished importing (it said so on its pipe); never blocks."""
        with contextlib.suppress(EOFError, OSError):
            while not self._warmed and self._channel.poll():
                self._warmed = self._channel.recv() == _READY
        return self._warmed

    def reusable(self, max_jobs: int) -> bool:
        return self.clean and not self.killed and self.jobs < max_jobs and self.alive()

    def kill(self) -> None:
        """Stop the worker and every process of its group at once (SIGKILL: a job needs no clean-up)."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # before it had its own group

    def retire(self) -> None:
        """Let the worker go: closing its pipe ends it; its exit status is collected off the event loop."""
        with contextlib.suppress(OSError):
            self._channel.close()
        threading.Thread(target=self._reap, name="trainer-worker-reaper", daemon=True).start()

    def _reap(self) -> None:
        self.process.join(30)
        if self.process.exitcode is None:  # a worker that hangs on exit
            self.kill()
            self.process.join(5)


class Workers:
    """Hands out warm worker processes, one job at a time each, and keeps warm ones for the next jobs.

    Up to ``max_idle`` workers wait between jobs, and ``spares`` wait beside a
    job that may be killed for a more urgent one, so that one still finds a
    warm worker, even when it is itself killed for the next: a new process
    takes seconds to import, tens on a loaded machine.
    """

    def __init__(self, preload: str, max_jobs: int = 20, max_idle: int = 3, spares: int = 2) -> None:
        self.preload = preload
        self.max_jobs = max_jobs
        """Jobs a worker runs before it is replaced (whatever a job leaves in memory stays bounded)."""
        self.max_idle = max_idle
        self.spares = min(spares, max_idle)
        """Workers kept waiting beside a job that may be cancelled."""
        self._idle: list[WorkerProcess] = []
        """Warm workers waiting, the most recently used last (the surest to have finished importing)."""
        self.running: dict[Any, WorkerProcess] = {}
        self.closed = False
        self._released = asyncio.Event()
        """Set (and replaced) each time a job releases its worker: what ``holder_free`` waits on."""

    @property
    def _warm(self) -> WorkerProcess | None:
        """The worker the next job would get (None: it would start a new one): see ``_pick``."""
        return self._pick(None)

    def _pick(self, holding: str | None) -> WorkerProcess | None:
        """The worker a job would get: of those done importing, the most recently used that holds the pipeline
        ``holding`` in memory (a job's champion: loading it from the store took 3.5-6.3 s on a loaded machine,
        longer than the job's search, when the job went to the worker that had run an export), else the most
        recently used (it holds the last model), else the one started first; None: a new one is needed."""
        self._idle = [w for w in self._idle if w.alive()]
        done = [w for w in self._idle if w.warmed()]
        keeping = [w for w in done if holding is not None and holding in w.holds]
        if keeping:
            return keeping[-1]
        return done[-1] if done else (self._idle[0] if self._idle else None)

    def busy_holding(self, holding: str | None) -> bool:
        """Whether only a worker that is running something (an export, a re-judgement) holds the pipeline
        ``holding``: no idle warm worker does."""
        if holding is None or any(holding in w.holds for w in self._idle if w.alive() and w.warmed()):
            return False
        return any(holding in w.holds for w in self.running.values())

    async def holder_free(self, holding: str | None, wait_s: float) -> float:
        """Wait, at most ``wait_s``, until the pipeline ``holding`` is held by an idle worker again or by none
        running; the seconds waited.

        A post-drift refresh's champion is most often the model the previous refresh trained, in memory in
        the worker that trained it. In the gap between two refreshes that worker exports the model to ONNX
        (0.1-0.5 s), and the refresh that came meanwhile went to another worker, which loaded the pipeline
        from the store: 2.8-4.2 s of an 8 s job on a busy machine. Waiting for the export is cheaper.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self.busy_holding(holding):
            left = started + wait_s - loop.time()
            if left <= 0:
                break
            released = self._released
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await released.wait()
        return loop.time() - started

    def warm_up(self, waiting: int = 1) -> None:
        """Have ``waiting`` started workers waiting (new ones only for those missing)."""
        self._idle = [w for w in self._idle if w.alive()]
        while not self.closed and len(self._idle) < waiting:
            self._idle.append(WorkerProcess(self.preload))

    def take(self, key: Any, *, spare: bool = False, holding: str | None = None) -> WorkerProcess:
        """A worker for job ``key``: a warm one if there is one (one holding the pipeline ``holding`` first),
        else a new one.

        ``spare``: the job may be cancelled for a more urgent one (drift outranks
        routine work), so warm workers must stay ready for that job: ``spares``
        are kept waiting beside it (started if missing).
        """
        if self.closed:
            raise WorkerLost("the trainer is stopping")
        worker = self._pick(holding) or WorkerProcess(self.preload)
        if worker in self._idle:
            self._idle.remove(worker)
        self.running[key] = worker
        if spare:
            self.warm_up(self.spares)
        return worker

    def release(self, key: Any) -> None:
        """Job ``key`` is over: its worker waits for the next job if it can, else it goes."""
        worker = self.running.pop(key, None)
        self._released.set()
        self._released = asyncio.Event()
        if worker is not None:
            if not self.closed and worker.reusable(self.max_jobs) and len(self._idle) < self.max_idle:
                self._idle.append(worker)
            else:
                worker.retire()
        self.warm_up()

    def kill(self, key: Any) -> bool:
        """Kill the worker of job ``key``; False when this process runs no such job."""
        worker = self.running.get(key)
        if worker is None:
            return False
        worker.kill()
        # The job replacing this one takes a waiting worker: its own replacement starts importing now.
        self.warm_up(self.spares)
        return True

    def close(self) -> None:
        """Kill every worker (the idle ones too) and wait for them: nothing outlives the trainer."""
        self.closed = True
        workers = [*self.running.values(), *self._idle]
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.process.join(5)
        self.running.clear()
        self._idle = []
