"""Jobs for worker-process tests: real processes doing what a training job does to a process tree."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any


def sleep_with_helper(spec: dict[str, Any]) -> dict[str, Any]:
    """Start a helper process (as joblib/loky would), note both pids, then work for a long time."""
    helper = subprocess.Popen(["sleep", "600"])
    Path(spec["pids"]).write_text(f"{helper.pid}\n")
    time.sleep(spec.get("seconds", 600))
    return {"done": True}


def answer(spec: dict[str, Any]) -> dict[str, Any]:
    return {"echo": spec["value"]}


def fail(spec: dict[str, Any]) -> dict[str, Any]:
    raise ValueError(spec["why"])


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (gone, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
