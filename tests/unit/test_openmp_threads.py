"""The trainer and serving run OpenMP one thread per calling thread (libs/common/process.one_openmp_thread,
called by their ``__main__``), and so do the processes they start, unless OMP_NUM_THREADS says
otherwise. Checked in fresh interpreters: OpenMP reads the setting once, when scikit-learn loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.process import one_openmp_thread

SCRIPT = """
import multiprocessing, sys
from libs.common.process import one_openmp_thread

def threads():
    import sklearn.ensemble  # loads OpenMP
    from threadpoolctl import threadpool_info
    return sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"})

if __name__ == "__main__":
    one_openmp_thread()
    here = threads()
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # as the trainer starts its workers
        child = pool.apply(threads)
    print(here, child)
"""


def _threads(env: dict[str, str], tmp_path: Path) -> str:
    script = tmp_path / "threads.py"  # a file: spawned children import the function from it
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip()


def test_a_service_process_and_its_workers_run_one_openmp_thread(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    assert _threads(env, tmp_path) == "[1] [1]"


def test_an_operators_omp_num_threads_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    one_openmp_thread()
    assert os.environ["OMP_NUM_THREADS"] == "3"
