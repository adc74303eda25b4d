"""Serving under a flood of large requests: does it stay live, and does its memory come back?

1. Train a classifier with the trainer's own code (bench/serving.py's credit data) and
   serve it from a real ``python -m services.serving`` process (embedded broker and
   PostgreSQL, champion given by a ``model.promoted`` event).
2. Measure serving's resident memory once the version is loaded and warm (the baseline)
   and /healthz latency while idle.
3. Drive ``--connections`` (200) concurrent predict requests of ``--instances`` (1,000)
   instances each with wrk for ``--duration`` seconds, while one client asks /healthz
   every 20 ms: its p50/p99/max, and the peak memory.
4. After the load, wait ``--settle`` seconds and measure memory again: it must be back
   within 20% of the baseline. /healthz p99 under load must be < 100 ms (issue 11).

    .venv/bin/python -m bench.healthz                 # about 2 minutes
    .venv/bin/python -m bench.healthz --duration 10 --json out.json

Everything shares the machine's cores (wrk, serving, the prober), as the output states.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.serving import MODEL, Driftloop, dataset, machine, plain_rows, rss_bytes, train_version, v1_body, wrk
from libs.common.artifacts import ArtifactStore

TARGETS = {"healthz_p99_ms": 100.0, "memory_after_ratio": 1.20}


@dataclass
class Probe:
    """/healthz asked every ``every_s`` on one keep-alive connection, and serving's memory every half second."""

    url: str
    pid: int
    every_s: float = 0.02
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        last_rss = 0.0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - started
                self.latencies_ms.append(elapsed * 1000)
                self.failures += not ok
                if started - last_rss > 0.5:
                    self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
                    last_rss = started
                self._stop.wait(max(0.0, self.every_s - elapsed))

    def figures(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ms)
        return {
            "probes": len(ordered),
            "failed": self.failures,
            "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max_ms": ordered[-1],
        }


def probe_for(url: str, pid: int, seconds: float) -> Probe:
    probe = Probe(url, pid)
    probe.start()
    time.sleep(seconds)
    probe.stop()
    return probe


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-healthz-"))
    store = ArtifactStore((workdir / "artifacts").as_uri())
    print(f"training a version with the trainer's code ({args.rows} rows) …", flush=True)
    v1 = train_version(store, 1, seed=1, rows=args.rows)
    bodies = [v1_body(plain_rows(dataset(args.instances, seed=100 + i))) for i in range(8)]
    dl = Driftloop(workdir, store)
    results: dict[str, Any] = {"machine": machine(), "load_before": os.getloadavg()}
    try:
        dl.start()
        assert dl.process is not None
        pid = dl.process.pid
        dl.promote(v1)
        deadline = time.monotonic() + 120
        while (dl.served() or {}).get("version") != 1:
            if time.monotonic() > deadline:
                raise SystemExit("v1 was not served within 120 s")
            time.sleep(0.2)
        served = dl.served() or {}
        print(f"serving v1 on {served.get('runtime')}; {len(bodies[0]) / 1024:.0f} KiB a request", flush=True)
        path = f"/v1/models/{MODEL}/predict"
        wrk(dl.url, path, bodies, 4, 3.0, headers=dl.headers)  # warm-up: the large-request paths allocated once
        time.sleep(args.settle / 2)
        baseline = rss_bytes(pid)
        idle = probe_for(dl.url, pid, 5.0).figures()
        print(f"idle: memory {baseline / 2**20:.0f} MiB, /healthz p50 {idle['p50_ms']:.1f} ms "
              f"p99 {idle['p99_ms']:.1f} ms", flush=True)  # fmt: skip
        probe = Probe(dl.url, pid)
        probe.start()
        load = wrk(dl.url, path, bodies, args.connections, args.duration, headers=dl.headers, server=(pid, False))
        probe.stop()
        busy = probe.figures()
        time.sleep(args.settle)
        after = rss_bytes(pid)
        results.update(
            runtime=served.get("runtime"),
            request_kib=round(len(bodies[0]) / 1024),
            connections=args.connections,
            instances=args.instances,
            duration_s=args.duration,
            predict=asdict(load),
            healthz_idle=idle,
            healthz_under_load=busy,
            memory_mib={
                "baseline": baseline / 2**20,
                "peak": max(probe.peak_rss, after) / 2**20,
                "after": after / 2**20,
                "settle_s": args.settle,
            },
            memory_after_ratio=after / baseline,
            load_after=os.getloadavg(),
        )
    finally:
        try:
            dl.stop()
        except subprocess.TimeoutExpired:
            print("serving did not stop within 20 s; its log ends with:\n" + dl.log_path.read_text()[-3000:])
            if dl.process is not None:
                dl.process.kill()
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(r: dict[str, Any]) -> str:
    load, busy, memory = r["predict"], r["healthz_under_load"], r["memory_mib"]
    healthz_ok = busy["p99_ms"] < TARGETS["healthz_p99_ms"]
    memory_ok = r["memory_after_ratio"] <= TARGETS["memory_after_ratio"]
    return "\n".join([
        f"machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; "
        f"load average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f}",
        f"load: {r['connections']} concurrent predicts of {r['instances']:,} instances ({r['request_kib']} KiB) "
        f"for {r['duration_s']:.0f} s on {r['runtime']}",
        f"  predicts: {load['requests']:,} answered ({load['rps']:.1f}/s), p50 {load['p50_ms']:,.0f} ms, "
        f"p99 {load['p99_ms']:,.0f} ms, failed {load['failed']}, {load['server_cpu_ms']:.1f} server CPU-ms each",
        f"  /healthz idle: p50 {r['healthz_idle']['p50_ms']:.1f} ms, p99 {r['healthz_idle']['p99_ms']:.1f} ms",
        f"  /healthz under load: {busy['probes']:,} probes, p50 {busy['p50_ms']:.1f} ms, p99 {busy['p99_ms']:.1f} ms, "
        f"max {busy['max_ms']:.0f} ms, failed {busy['failed']}   target p99 < 100 ms: "
        f"{'met' if healthz_ok else 'MISSED'}",
        f"  memory: baseline {memory['baseline']:.0f} MiB, peak {memory['peak']:.0f} MiB, "
        f"{memory['settle_s']:.0f} s after {memory['after']:.0f} MiB ({r['memory_after_ratio']:.2f}x)   "
        f"target within 20%: {'met' if memory_ok else 'MISSED'}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after the load before memory is read")
    parser.add_argument("--rows", type=int, default=5000, help="training rows of the served version")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
