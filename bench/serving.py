"""Serving benchmark: driftloop serving and MLServer on the same model, on loopback, side by side.

1. Train a classifier with the trainer's own code (search, ONNX export and parity
   check) on a seeded 9-feature tabular dataset: six numeric features (one of them
   an integer) and three categorical ones.
2. Serve it from driftloop serving: a real ``python -m services.serving`` process
   on a free port, loading from a real artifact store, given its champion by a
   ``model.promoted`` event on an embedded broker (no registry needed), with its
   token table in an embedded PostgreSQL; requests carry a predictor token.
3. Serve the same fitted pipeline, saved with joblib, from MLServer with
   ``mlserver-sklearn`` (installed in ``.bench-serving-venv`` only).
4. Drive both with wrk and the same rows, one instance per request, at c=1 and
   c=64; time a 1,000-instance request; read the memory each served version
   adds; hot-swap to a second version under c=64 load and count failed requests.

    make bench-serving                       # about 2-3 minutes
    make bench-serving BENCH_ARGS="--duration 5 --json out.json"

The machine is whatever it runs on: wrk, both servers and anything else running
share its cores, which the output states.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd

from bench.credit import SCHEMA as CREDIT
from devstack.embedded import EmbeddedKafka, EmbeddedPostgres, free_port, terminate
from libs.common import auth, models
from libs.common.artifacts import ArtifactStore
from libs.common.events import AliasMove, ArtifactRef, ModelPromoted, OnnxExport
from libs.common.kafka import BrokerPublisher, create_broker
from libs.common.profile import build_profile
from libs.common.schema import DatasetSchema, DType
from libs.common.settings import DatabaseSettings, KafkaSettings, TelemetrySettings
from libs.common.signing import Signer, generate_keys
from libs.common.telemetry import setup_telemetry
from services.trainer.adapters.worker import export_onnx
from services.trainer.domain.training import TrainingConfig, train

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_VENV = ROOT / ".bench-serving-venv"
MODEL = "credit"
SCHEMA = DatasetSchema.model_validate(CREDIT)
FEATURES = [f.name for f in SCHEMA.features]
TARGETS = {
    "c1_p50_ms": 1.0,
    "c64_rps": 2000.0,
    "c64_p99_ms": 50.0,
    "ratio": 20.0,
    "batch_1000_ms": 15.0,
    "swap_failed": 0,
}


def dataset(rows: int, seed: int) -> pd.DataFrame:
    """A seeded credit-default table: numeric and categorical features with interactions."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(["retail", "sme", "corporate", "private"], rows, p=[0.5, 0.25, 0.1, 0.15])
    channel = rng.choice(["branch", "online", "partner"], rows, p=[0.3, 0.5, 0.2])
    region = rng.choice(["north", "south", "east", "west", "central"], rows)
    frame = pd.DataFrame(
        {
            "income": np.round(rng.lognormal(10.5, 0.6, rows), 2),
            "debt_ratio": np.round(np.clip(rng.gamma(2.0, 0.4, rows), 0, 10), 3),
            "age": np.round(rng.uniform(18, 90, rows), 1),
            "balance": np.round(rng.normal(5_000, 4_000, rows), 2),
            "utilisation": np.round(rng.beta(2, 3, rows), 3),
            "late_payments": rng.poisson(1.2, rows),
            "segment": segment,
            "channel": channel,
            "region": region,
        }
    )
    logit = (
        -2.0
        + 1.4 * frame["debt_ratio"]
        + 2.2 * frame["utilisation"] ** 2
        + 0.45 * frame["late_payments"]
        - 0.8 * (np.log(frame["income"]) - 10.5)
        - 0.015 * (frame["age"] - 40)
        + np.where(segment == "sme", 0.6, 0.0)
        + np.where((channel == "online") & (frame["age"] < 30), 0.7, 0.0)
        + np.where(region == "east", 0.3, 0.0)
    )
    frame["default"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return frame


@dataclass
class Version:
    version: int
    pipeline: Any
    artifact: ArtifactRef
    profile: ArtifactRef
    onnx: OnnxExport
    metrics: dict[str, float]
    train_s: float


def _keys(store: ArtifactStore) -> tuple[Path, Path]:
    """The signing key pair of this run, beside its artifacts (serving loads only signed artifacts)."""
    return generate_keys(Path(store.root.removeprefix("file://")).parent / "keys")


def train_version(store: ArtifactStore, version: int, seed: int, rows: int) -> Version:
    """Train, export, store and sign a version exactly as the trainer does."""
    signer = Signer.from_file(_keys(store)[0])
    started = time.perf_counter()
    result = train(SCHEMA, dataset(rows, seed), TrainingConfig(seed=seed))
    onnx = export_onnx(store, SCHEMA, result)
    if onnx.artifact is not None:
        onnx = onnx.model_copy(update={"artifact": signer.sign(onnx.artifact)})
    kinds: dict[str, Any] = {
        f.name: "categorical" if f.dtype is DType.CATEGORICAL else "numeric" for f in SCHEMA.features
    }
    profile = build_profile({k: result.train_frame[k].to_numpy() for k in kinds}, kinds, result.train_predictions,
                            prediction_kind="categorical", metrics=result.metrics)  # fmt: skip
    return Version(
        version=version,
        pipeline=result.pipeline,
        artifact=signer.sign(store.put(models.dumps(result.pipeline), suffix=".skops")),
        profile=signer.sign(store.put(profile.to_bytes(), suffix=".profile.json")),
        onnx=onnx,
        metrics=result.metrics,
        train_s=time.perf_counter() - started,
    )


# --- the two servers -----------------------------------------------------------------------------------------


class Driftloop:
    """``python -m services.serving`` on a free port, champions published as model.promoted events."""

    def __init__(self, workdir: Path, store: ArtifactStore, *, beside: Driftloop | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.beside = beside
        """Another instance whose broker, database and token this one shares (it starts and stops none)."""
        self.kafka: EmbeddedKafka = beside.kafka if beside else EmbeddedKafka(workdir / "kafka")
        self.postgres: EmbeddedPostgres = (
            beside.postgres if beside else EmbeddedPostgres(workdir / "postgres" / "data", durable=False)
        )
        self.headers: dict[str, str] = {}
        self.port = free_port()
        self.prefix: str = beside.prefix if beside else f"bench{uuid.uuid4().hex[:8]}."
        self.store = store
        self.env = env or {}
        self.log_path = workdir / f"serving-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.beside is None:
            bootstrap, database = self.kafka.start(), self.postgres.start()
            self.headers = {"Authorization": f"Bearer {asyncio.run(_predictor_token(database))}"}
        else:
            bootstrap, database, self.headers = self.kafka.bootstrap, self.postgres.url, self.beside.headers
        env = {
            **os.environ,
            "DRIFTLOOP_DATABASE_URL": database,
            "DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap,
            "DRIFTLOOP_KAFKA_TOPIC_PREFIX": self.prefix,
            "DRIFTLOOP_ARTIFACTS_ROOT": self.store.root,
            "DRIFTLOOP_SERVING_PORT": str(self.port),
            "DRIFTLOOP_SERVING_REGISTRY_URL": f"http://127.0.0.1:{free_port()}",  # none: champions come by event
            "DRIFTLOOP_SERVING_INSTANCE_ID": f"bench-{uuid.uuid4().hex[:6]}",
            "DRIFTLOOP_SIGNING_PUBLIC_KEYS": json.dumps([str(_keys(self.store)[1])]),
            **self.env,
        }
        self.process = subprocess.Popen([sys.executable, "-m", "services.serving"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(
            self._started,
            "driftloop serving to be ready",
            300,
            self.log_path,
        )

    def _started(self) -> bool:
        """Started and consuming model.promoted: every readiness check passes but the registry's champions,
        which never load here (there is no registry; champions come by event)."""
        checks: dict[str, str] = httpx.get(f"{self.url}/readyz").json().get("checks", {})
        return bool(checks) and all(v == "ok" for k, v in checks.items() if k != "champions")

    def promote(self, v: Version, previous: int | None = None) -> None:
        event = ModelPromoted(
            producer="bench", model=MODEL, version=v.version, dataset=MODEL,
            move=AliasMove(alias="champion", from_version=previous, to_version=v.version),
            artifact=v.artifact, profile=v.profile, onnx=v.onnx, dataset_schema=SCHEMA, metrics=v.metrics,
            reason="bench", actor="bench",
        )  # fmt: skip
        asyncio.run(self._publish(event))

    async def _publish(self, event: ModelPromoted) -> None:
        settings = KafkaSettings(bootstrap=self.kafka.bootstrap, topic_prefix=self.prefix)
        broker = create_broker(settings, setup_telemetry("bench", TelemetrySettings()))
        async with broker:
            await broker.start()
            await BrokerPublisher(broker, self.prefix).publish_event(event)

    def served(self) -> dict[str, Any] | None:
        answer = httpx.get(f"{self.url}/v1/models/{MODEL}", headers=self.headers)
        return answer.json() if answer.status_code == 200 else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None
        if self.beside is None:
            self.kafka.stop()
            self.postgres.stop()
        self.log.close()


async def _predictor_token(database: str) -> str:
    """A bearer token with the predictor and reader roles, as ``driftloop token create`` makes one."""
    pool = await auth.connect(DatabaseSettings(url=database), auth.AuthSettings())
    try:
        issued = await auth.issue(pool, "bench", [auth.Role.PREDICTOR, auth.Role.READER], created_by="bench")
    finally:
        await pool.close()
    return issued.token


class MLServer:
    """MLServer with mlserver-sklearn serving the joblib-saved pipeline, from its own venv."""

    def __init__(self, workdir: Path, pipeline: Any) -> None:
        self.dir = workdir / "mlserver"
        model_dir = self.dir / MODEL
        model_dir.mkdir(parents=True)
        joblib.dump(pipeline, model_dir / "model.joblib")
        (model_dir / "model-settings.json").write_text(json.dumps({
            "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
        }))  # fmt: skip
        self.port = free_port()
        (self.dir / "settings.json").write_text(json.dumps({
            "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False,
        }))  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "mlserver.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(self.dir)],
                                        cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(
            lambda: httpx.get(f"{self.url}/v2/models/{MODEL}/ready").status_code == 200, "MLServer", 180, self.log_path
        )

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


def wait_for(probe: Any, what: str, timeout: float = 60, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = "\n".join(log.read_text().splitlines()[-30:]) if log is not None and log.exists() else ""
    raise SystemExit(f"timed out waiting for {what}\n{tail}")


def _pids(pid: int, tree: bool) -> list[int]:
    pids = [pid]
    if tree:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """CPU time (user + system) ``pid`` (and its children with ``tree``) has used, from /proc."""
    total = 0
    for p in _pids(pid, tree):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int, *, tree: bool = False) -> int:
    """Resident memory of ``pid`` (and its descendants with ``tree``), from /proc."""
    pids = _pids(pid, tree)
    total = 0
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    return total


# --- requests ------------------------------------------------------------------------------------------------


def v1_body(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"instances": rows})


def v2_body(rows: list[dict[str, Any]]) -> str:
    """What an MLServer client sends for a DataFrame: one input per column, pandas content type."""
    inputs = []
    for f in SCHEMA.features:
        datatype = {DType.CATEGORICAL: "BYTES", DType.INTEGER: "INT64"}.get(f.dtype, "FP64")
        inputs.append(
            {"name": f.name, "shape": [len(rows), 1], "datatype": datatype, "data": [r[f.name] for r in rows]}
        )
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs, "outputs": [{"name": "predict"}]})


def plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in
            frame[FEATURES].to_dict(orient="records")]  # fmt: skip


# --- wrk -----------------------------------------------------------------------------------------------------

WRK_SCRIPT = """
local bodies = {%(bodies)s}
local n = #bodies
local i = 0
local threads = {}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
function setup(thread) table.insert(threads, thread) end
function init(args) v1 = 0; v2 = 0; bad = 0 end
request = function()
  i = i %% n + 1
  return wrk.format(nil, "%(path)s", nil, bodies[i])
end
%(response)s
"""
SWAP_RESPONSE = """
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1
  elseif string.find(body, '"version":2', 1, true) then v2 = v2 + 1
  else v1 = v1 + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("v1"); b = b + t:get("v2"); c = c + t:get("bad") end
  io.write(string.format("SWAP v1=%d v2=%d bad=%d\\n", a, b, c))
end
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int
    wrk_cpu: float
    server_cpu_ms: float = 0.0
    """CPU the server spent per request: on a shared machine, a fairer measure than wall-clock figures."""
    """Share of one core wrk itself used: well below 1 means the load generator was not the bottleneck."""
    extra: str = ""


def wrk(
    url: str,
    path: str,
    bodies: list[str],
    connections: int,
    duration: float,
    swap: bool = False,
    headers: dict[str, str] | None = None,
    server: tuple[int, bool] | None = None,
) -> Load:
    lua = WRK_SCRIPT % {
        "headers": "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()),
        "bodies": ",".join(f"[==[{b}]==]" for b in bodies),
        "path": path,
        "response": SWAP_RESPONSE if swap else "",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(server[0], tree=server[1]) if server else 0.0
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_s = cpu_seconds(server[0], tree=server[1]) - server_before if server else 0.0
    os.unlink(script.name)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / duration
    failed = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed += int(non2xx.group(1)) if non2xx else 0
    swapped = re.search(r"SWAP (.*)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_latency(out, "50%"),
        p99_ms=_latency(out, "99%"),
        requests=requests,
        failed=failed,
        wrk_cpu=cpu,
        server_cpu_ms=1000 * server_s / max(1, requests),
        extra=swapped.group(1) if swapped else "",
    )


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def batch_latency_ms(url: str, body: str, repeats: int = 15, headers: dict[str, str] | None = None) -> float:
    """Median latency of one large request, sequentially, after warm-up."""
    with httpx.Client(timeout=60, headers=headers) as client:
        times = []
        for i in range(repeats + 3):
            started = time.perf_counter()
            answer = client.post(url, content=body, headers={"content-type": "application/json"})
            answer.raise_for_status()
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# --- the run -------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench-serving installs it with apt-get)")
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-serving-"))
    store = ArtifactStore((workdir / "artifacts").as_uri())
    print(f"training v1 and v2 with the trainer's code ({args.rows} rows, 9 features) …", flush=True)
    v1 = train_version(store, 1, seed=1, rows=args.rows)
    v2 = train_version(store, 2, seed=2, rows=args.rows)
    for v in (v1, v2):
        print(f"  v{v.version}: {v.metrics} in {v.train_s:.1f}s; ONNX parity {v.onnx.parity}: {v.onnx.detail}")
    rows = plain_rows(dataset(1_000, seed=99))
    results: dict[str, Any] = {"machine": machine(), "model": {"rows": args.rows, "v1": v1.metrics,
                               "onnx": v1.onnx.model_dump(mode="json", exclude={"artifact"})}}  # fmt: skip
    dl = Driftloop(workdir, store)
    ml = MLServer(workdir, v1.pipeline)
    try:
        dl.start()
        idle = rss_bytes(dl.process.pid)  # type: ignore[union-attr]
        dl.promote(v1)
        wait_for(lambda: (dl.served() or {}).get("version") == 1, "v1 to be served")
        served = dl.served() or {}
        results["driftloop"] = {"runtime": served.get("runtime"), "runtime_reason": served.get("runtime_reason"),
                                "memory_per_version_bytes": rss_bytes(dl.process.pid) - idle,  # type: ignore[union-attr]
                                "memory_reported_bytes": served.get("memory_bytes")}  # fmt: skip
        print(f"driftloop serving: {served.get('runtime')} ({served.get('runtime_reason')})", flush=True)
        ml.start()
        results["mlserver"] = {"memory_total_bytes": rss_bytes(ml.process.pid, tree=True)}  # type: ignore[union-attr]
        dl_pid, ml_pid = dl.process.pid, ml.process.pid  # type: ignore[union-attr]
        singles = rows[:200]
        v1_bodies = [v1_body([r]) for r in singles]
        v2_bodies = [v2_body([r]) for r in singles]
        runs = [  # driftloop requests carry a bearer token (MLServer has no authentication)
            ("driftloop /v1", dl.url, f"/v1/models/{MODEL}/predict", v1_bodies, dl.headers, (dl_pid, False)),
            ("driftloop /v2", dl.url, f"/v2/models/{MODEL}/infer", v2_bodies, dl.headers, (dl_pid, False)),
            ("MLServer /v2", ml.url, f"/v2/models/{MODEL}/infer", v2_bodies, {}, (ml_pid, True)),
        ]
        loads: dict[str, dict[str, Load]] = {}
        for name, url, path, bodies, headers, server in runs:
            wrk(url, path, bodies, 8, 1.0, headers=headers)  # warm-up
            loads[name] = {
                f"c{c}": wrk(url, path, bodies, c, args.duration, headers=headers, server=server) for c in (1, 64)
            }
            print(f"  {name}: " + ", ".join(f"c={c[1:]} {r.rps:,.0f} req/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms"
                                          f" ({r.server_cpu_ms:.2f} CPU-ms/request)"
                                          for c, r in loads[name].items()), flush=True)  # fmt: skip
        results["load"] = {k: {c: asdict(r) for c, r in v.items()} for k, v in loads.items()}
        # The same requests through FastAPI's full stack (DRIFTLOOP_SERVING_HOT_PATH=false), for what the
        # hot path saves; started only now, so it was idle during the runs above.
        slow = Driftloop(workdir, store, beside=dl, env={"DRIFTLOOP_SERVING_HOT_PATH": "false"})
        slow.start()
        slow.promote(v1)
        wait_for(lambda: (slow.served() or {}).get("version") == 1, "v1 to be served through FastAPI")
        path = f"/v1/models/{MODEL}/predict"
        wrk(slow.url, path, v1_bodies, 8, 1.0, headers=dl.headers)  # warm-up
        fastapi_load = wrk(slow.url, path, v1_bodies, 64, args.duration, headers=dl.headers,
                           server=(slow.process.pid, False))  # type: ignore[union-attr]  # fmt: skip
        slow.stop()
        results["fastapi_path_c64"] = asdict(fastapi_load)
        print(f"  driftloop /v1 through FastAPI (hot path off): c=64 {fastapi_load.rps:,.0f} req/s p99 "
              f"{fastapi_load.p99_ms:.2f} ms ({fastapi_load.server_cpu_ms:.2f} CPU-ms/request)",
              flush=True)  # fmt: skip
        results["batch_1000_ms"] = {
            "driftloop /v1": batch_latency_ms(f"{dl.url}/v1/models/{MODEL}/predict", v1_body(rows), headers=dl.headers),
            "driftloop /v2": batch_latency_ms(f"{dl.url}/v2/models/{MODEL}/infer", v2_body(rows), headers=dl.headers),
            "MLServer /v2": batch_latency_ms(f"{ml.url}/v2/models/{MODEL}/infer", v2_body(rows), repeats=5),
        }
        ml.stop()
        results["swap"] = hot_swap(dl, v2, v1_bodies, args.duration)
        # Last: its promotions reach every instance on the bench's topics, the one above included.
        try:
            results["workers"] = workers_run(workdir, store, dl, v1, v2, v1_bodies, args.duration)
        except (SystemExit, Exception) as exc:  # the other figures stand on their own
            print(f"  2 workers: not measured ({exc!r})", flush=True)
    finally:
        ml.stop()
        dl.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def workers_run(
    workdir: Path, store: ArtifactStore, dl: Driftloop, v1: Version, v2: Version, bodies: list[str], duration: float
) -> dict[str, Any]:
    """The same /v1 load at c=64 on DRIFTLOOP_SERVING_WORKERS=2 (two processes on one port, SO_REUSEPORT),
    then a hot swap to v2 under that load: each worker swaps on its own event."""
    two = Driftloop(workdir, store, beside=dl, env={"DRIFTLOOP_SERVING_WORKERS": "2"})
    two.start()
    try:
        path = f"/v1/models/{MODEL}/predict"

        def both_serve_v1() -> bool:  # every worker reads promotions once it listens: announce until all serve v1
            two.promote(v1)
            time.sleep(1.0)
            return all(httpx.post(f"{two.url}{path}", content=bodies[0], headers=two.headers).status_code == 200
                       for _ in range(16))  # fmt: skip

        wait_for(both_serve_v1, "both workers to serve v1", 120, two.log_path)
        wrk(two.url, path, bodies, 8, 1.0, headers=dl.headers)  # warm-up
        server = (two.process.pid, True)  # type: ignore[union-attr]
        loads = {f"c{c}": asdict(wrk(two.url, path, bodies, c, duration, headers=dl.headers, server=server))
                 for c in (1, 64)}  # fmt: skip
        for c, r in loads.items():
            print(f"  driftloop /v1, 2 workers: {c} {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms p99 "
                  f"{r['p99_ms']:.2f} ms ({r['server_cpu_ms']:.2f} CPU-ms/request)", flush=True)  # fmt: skip
        return {**loads, "swap": hot_swap(two, v2, bodies, duration)}
    finally:
        two.stop()


def hot_swap(dl: Driftloop, v2: Version, bodies: list[str], duration: float) -> dict[str, Any]:
    """Promote v2 while wrk drives c=64 at v1; every request must succeed."""
    timer = threading.Timer(duration / 3, dl.promote, args=(v2,), kwargs={"previous": 1})
    timer.start()
    load = wrk(dl.url, f"/v1/models/{MODEL}/predict", bodies, 64, duration, swap=True, headers=dl.headers)
    timer.join()
    served = dl.served() or {}
    counts = dict(kv.split("=") for kv in load.extra.split())
    return {"requests": load.requests, "failed": load.failed + int(counts.get("bad", 0)),
            "answered_by_v1": int(counts.get("v1", 0)), "answered_by_v2": int(counts.get("v2", 0)),
            "served_after": served.get("version"), "rps": load.rps, "p99_ms": load.p99_ms}  # fmt: skip


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def report(r: dict[str, Any]) -> str:
    load = r["load"]
    ml = load["MLServer /v2"]
    lines = [
        f"machine: {r['machine']['cpus']} cores, load average before the run "
        f"{', '.join(f'{x:.1f}' for x in r['machine']['load_average'])} (shared: other work competes for the cores)",
        f"model: {r['model']['rows']} rows, 9 features; holdout {r['model']['v1']}; "
        f"ONNX parity {r['model']['onnx']['parity']} ({r['model']['onnx']['detail']})",
        f"driftloop runtime: {r['driftloop']['runtime']}",
        "",
        "| | c=1 req/s | c=1 p50 | c=1 p99 | c=64 req/s | c=64 p50 | c=64 p99 | CPU/req c=64 | 1,000 rows | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in load.items():
        c1, c64 = runs["c1"], runs["c64"]
        lines.append(
            f"| {name} | {c1['rps']:,.0f} | {c1['p50_ms']:.2f} ms | {c1['p99_ms']:.2f} ms | {c64['rps']:,.0f} | "
            f"{c64['p50_ms']:.2f} ms | {c64['p99_ms']:.2f} ms | {c64['server_cpu_ms']:.2f} ms | "
            f"{r['batch_1000_ms'][name]:.1f} ms | "
            f"{c1['failed'] + c64['failed']} |"
        )
    for name in ("driftloop /v1", "driftloop /v2"):
        c1, c64 = load[name]["c1"], load[name]["c64"]
        lines.append(f"ratio {name} / MLServer: c=1 {c1['rps'] / ml['c1']['rps']:.1f}×, "
                     f"c=64 {c64['rps'] / ml['c64']['rps']:.1f}×; CPU per request "
                     f"{ml['c64']['server_cpu_ms'] / max(c64['server_cpu_ms'], 1e-9):.1f}× less")  # fmt: skip
    for name, runs in load.items():
        cpu = runs["c64"]["server_cpu_ms"]
        lines.append(f"{name}: {cpu:.2f} CPU-ms per request at c=64, i.e. about {1000 / max(cpu, 1e-9):,.0f} req/s "
                     "per fully available core (the load-independent figure on a shared machine)")  # fmt: skip
    wrk_cpu = max(run["wrk_cpu"] for runs in load.values() for run in runs.values())
    swap = r["swap"]
    slow, fast = r["fastapi_path_c64"], load["driftloop /v1"]["c64"]
    reported = r["driftloop"]["memory_reported_bytes"]
    lines += [
        f"driftloop /v1 through FastAPI's full stack (DRIFTLOOP_SERVING_HOT_PATH=false), c=64: {slow['rps']:,.0f} "
        f"req/s, p99 {slow['p99_ms']:.2f} ms, {slow['server_cpu_ms']:.2f} CPU-ms/request; the hot path: "
        f"{fast['rps'] / max(slow['rps'], 1e-9):.1f}× the throughput, "
        f"{slow['server_cpu_ms'] / max(fast['server_cpu_ms'], 1e-9):.1f}× less CPU per request",
        *(workers_lines(r["workers"]) if "workers" in r else []),
        "cores: no pinning; serving is one process (one event loop), wrk one thread, both scheduled by the OS "
        "over the 2 cores",
        f"wrk used at most {wrk_cpu:.0%} of one core (one thread): it was not the bottleneck",
        "memory per served version (driftloop): "
        f"{r['driftloop']['memory_per_version_bytes'] / 2**20:.1f} MiB of resident memory gained by the process "
        f"from idle to serving v1; serving's own figure (GET /v1/models/{{m}} memory_bytes, RSS growth during "
        f"the load and first inference): {reported / 2**20 if reported is not None else float('nan'):.1f} MiB"
        f"; MLServer in all (its processes): {r['mlserver']['memory_total_bytes'] / 2**20:.0f} MiB",
        f"hot swap v1 → v2 under c=64: {swap['requests']:,} requests, {swap['failed']} failed, "
        f"{swap['answered_by_v1']:,} answered by v1 then {swap['answered_by_v2']:,} by v2, "
        f"served after: v{swap['served_after']}, p99 {swap['p99_ms']:.1f} ms",
        "",
        "targets (issue 9, driftloop /v1):",
    ]
    best = load["driftloop /v1"]
    checks = [
        ("single-row p50 at c=1 ≤ 1 ms", best["c1"]["p50_ms"], best["c1"]["p50_ms"] <= TARGETS["c1_p50_ms"]),
        ("req/s at c=64 ≥ 2,000", best["c64"]["rps"], best["c64"]["rps"] >= TARGETS["c64_rps"]),
        ("p99 at c=64 ≤ 50 ms", best["c64"]["p99_ms"], best["c64"]["p99_ms"] <= TARGETS["c64_p99_ms"]),
        ("≥ 20× MLServer at c=64", best["c64"]["rps"] / ml["c64"]["rps"],
         best["c64"]["rps"] / ml["c64"]["rps"] >= TARGETS["ratio"]),
        ("1,000-instance request ≤ 15 ms", r["batch_1000_ms"]["driftloop /v1"],
         r["batch_1000_ms"]["driftloop /v1"] <= TARGETS["batch_1000_ms"]),
        ("hot swap under c=64 fails 0 requests", swap["failed"], swap["failed"] == 0),
    ]  # fmt: skip
    lines += [f"  {'met ' if ok else 'MISSED'} {what}: {value:,.2f}" for what, value, ok in checks]
    return "\n".join(lines)


def workers_lines(w: dict[str, Any]) -> list[str]:
    swap = w["swap"]
    return [
        f"driftloop /v1 with DRIFTLOOP_SERVING_WORKERS=2 (SO_REUSEPORT): c=1 {w['c1']['rps']:,.0f} req/s p50 "
        f"{w['c1']['p50_ms']:.2f} ms; c=64 {w['c64']['rps']:,.0f} req/s p50 {w['c64']['p50_ms']:.2f} ms p99 "
        f"{w['c64']['p99_ms']:.2f} ms, {w['c64']['server_cpu_ms']:.2f} CPU-ms/request; hot swap v1 → v2 under c=64: "
        f"{swap['requests']:,} requests, {swap['failed']} failed ({swap['answered_by_v1']:,} by v1, "
        f"{swap['answered_by_v2']:,} by v2), p99 {swap['p99_ms']:.1f} ms",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="training rows")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = run(args)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
