"""Child processes that must not outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal


def die_with_parent() -> None:
    """``preexec_fn`` for children that must not outlive us (runs between fork and exec):
    the kernel sends them SIGTERM when their parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def one_openmp_thread() -> None:
    """OpenMP code (scikit-learn's gradient boosting) runs one thread per calling thread, in this process
    if it has not loaded OpenMP yet and in every process it starts: unless ``OMP_NUM_THREADS`` says
    otherwise.

    A service's parallelism is its requests and its worker processes. An OpenMP team per call on top
    of them, on a busy host, spins waiting for cores: under load (load average 2.2 on 2 cores),
    predicting 200 rows with a 5-class gradient boosting model took 22-314 ms with the default two
    threads and 6.5-7.8 ms with one. The trainer's searches already fitted one thread each; its
    governance, profile and re-judgement predictions and serving's scikit-learn runtime did not.

    Called by the services that run scikit-learn (trainer, serving) only: pyarrow also sizes its CPU
    thread pool by ``OMP_NUM_THREADS``, and ingest's parsing and Parquet writes use that pool.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
