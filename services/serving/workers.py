"""Several serving processes on one port: ``DRIFTLOOP_SERVING_WORKERS=N``.

One process answers on one event loop, so one core at most. With N > 1 this
process becomes a small supervisor: it starts N serving processes that listen
on the same port with ``SO_REUSEPORT`` (the kernel spreads connections over
them) and restarts one that dies. Each worker is a whole serving replica: it
loads the registry's champions at start and reads ``model.promoted`` itself
(with no consumer group), so every worker hot-swaps on its own, and during a
swap an answer may come from either version (each answer names its version).
A worker's ``/readyz`` and ``/metrics`` are its own: a probe or a scrape through
the shared port sees whichever worker the kernel picks.

The workers share what must be shared: the request-id key (an id minted by one
worker is accepted as feedback by any other), generated here when none is set.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from types import FrameType

from libs.common.process import die_with_parent
from services.serving.settings import ServingSettings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
"""Pause before a worker that died is started again (a worker that cannot start is not restarted in a tight loop)."""


def worker_environment(settings: ServingSettings, index: int, key: str) -> dict[str, str]:
    """The environment of worker ``index``: one process, the shared port, its own instance id, the shared key."""
    env = {
        **os.environ,
        "DRIFTLOOP_SERVING_WORKERS": "1",
        "DRIFTLOOP_SERVING_REUSE_PORT": "true",
        "DRIFTLOOP_SERVING_INSTANCE_ID": f"{settings.instance_id}-w{index}",
    }
    if settings.request_id_secret is None or not settings.request_id_secret.get_secret_value():
        env["DRIFTLOOP_SERVING_REQUEST_ID_SECRET"] = key  # made by the supervisor: valid while it runs
    return env


def supervise(settings: ServingSettings) -> None:
    """Run ``settings.workers`` serving processes on the port until SIGTERM/SIGINT, restarting any that dies."""
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    key = secrets.token_hex(32)

    def start(index: int) -> None:
        command = [sys.executable, "-m", "services.serving"]
        workers[index] = subprocess.Popen(
            command, env=worker_environment(settings, index, key), preexec_fn=die_with_parent
        )

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(settings.workers):
        start(index)
    log.info("serving: %d workers on port %d (SO_REUSEPORT)", settings.workers, settings.port)
    while not stopping:
        time.sleep(0.2)
        for index, process in list(workers.items()):
            if process.poll() is not None and not stopping:
                log.error("serving worker %d exited with %s; restarting it", index, process.returncode)
                time.sleep(RESTART_DELAY_S)
                start(index)
    for process in workers.values():
        process.wait()
