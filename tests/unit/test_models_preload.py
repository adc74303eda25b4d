"""Serving imports scikit-learn lazily, and preloads it in the background once started
(``DRIFTLOOP_SERVING_PRELOAD_SKLEARN``; libs/common/models.preload)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import asyncio, sys
from services.serving.app import Replica
from services.serving.settings import ServingSettings
assert "sklearn" not in sys.modules, "serving imported scikit-learn at import time"

class Runtime:  # what on_start uses of the service runtime: spawn
    def __init__(self):
        self.spawned = {}
    def spawn(self, coro, name):
        self.spawned[name] = coro

async def main():
    off = Runtime()
    await Replica(ServingSettings(preload_sklearn=False)).on_start(off)
    assert sorted(off.spawned) == ["bootstrap"], off.spawned
    for coro in off.spawned.values():
        coro.close()
    on = Runtime()
    await Replica(ServingSettings()).on_start(on)
    assert sorted(on.spawned) == ["bootstrap", "preload-scikit-learn"], on.spawned
    on.spawned.pop("bootstrap").close()
    assert "sklearn" not in sys.modules  # not on start-up's path: only in the background task
    await on.spawned["preload-scikit-learn"]
    assert "sklearn" in sys.modules and "skops.io" in sys.modules

asyncio.run(main())
"""


def test_serving_imports_scikit_learn_in_the_background_once_started_unless_told_not_to() -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
