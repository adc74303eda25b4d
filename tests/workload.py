"""Jobs for worker-process tests: real processes doing what a training job does to a process tree."""

from __future__ import annotations

import os
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


def pause(spec: dict[str, Any]) -> dict[str, Any]:
    """Work for ``seconds`` (an export, a re-judgement: something short), then answer."""
    time.sleep(spec["seconds"])
    return {"paused": spec["seconds"]}


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


def spawned_workers() -> list[int]:
    """Pids of this process's children that are multiprocessing workers (the trainer's job processes)."""
    me = str(os.getpid())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == me and b"spawn_main" in cmdline and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found
