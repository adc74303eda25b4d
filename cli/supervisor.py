"""``driftloop up``: the embedded stack plus the five services as processes, and the web console.

Each service is a separate ``python -m services.<name>`` process, as in
production; their output is prefixed by service name (or written to one log
file each), they are waited for until ``/readyz`` answers, and Ctrl-C stops
them in order (services first, then the broker, then the database). A state
file tells ``driftloop status`` and ``driftloop demo`` what is running.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import httpx

from cli.tokens import ensure_admin_token
from devstack.embedded import EmbeddedStack, free_port, port_open
from libs.common.kafka import ensure_topics
from libs.common.process import die_with_parent
from libs.common.settings import DatabaseSettings, KafkaSettings
from libs.common.signing import generate_keys

#: Start order: the registry first (serving asks it for champions at start).
SERVICES: tuple[str, ...] = ("registry", "ingest", "trainer", "serving", "monitor")
#: The web console: a front-end over the five services' APIs, started after them (services/console).
CONSOLE = "console"
DEFAULT_PORTS = {"ingest": 8001, "trainer": 8002, "registry": 8003, "serving": 8004, "monitor": 8005, CONSOLE: 8006}
COLOURS = {"ingest": "cyan", "trainer": "magenta", "registry": "yellow", "serving": "green", "monitor": "blue"}


@dataclass
class UpState:
    """What ``up`` started, written to ``<home>/up.json``."""

    pid: int
    database_url: str
    kafka_bootstrap: str
    embedded: bool
    artifacts_root: str
    services: dict[str, str] = field(default_factory=dict)
    """Service → base URL."""
    service_pids: dict[str, int] = field(default_factory=dict)
    stack_pids: dict[str, int | None] = field(default_factory=dict)
    home: str = ""
    """The state directory; its ``token`` file holds the admin token (mode 0600)."""
    console: str = ""
    """The web console's URL (sign in with a token)."""

    @classmethod
    def read(cls, home: Path) -> UpState | None:
        try:
            return cls(**json.loads((home / "up.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    def __init__(
        self,
        home: Path,
        *,
        ports: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        log_to_files: bool = False,
        json_logs: bool = False,
        echo: IO[str] | None = None,
    ) -> None:
        self.home = home.resolve()
        self.ports = dict(ports or DEFAULT_PORTS)
        self.ports.setdefault(CONSOLE, free_port())  # callers that name only the five services
        self.extra_env = env or {}
        self.log_to_files = log_to_files
        self.json_logs = json_logs
        self.echo = echo or sys.stdout
        self.stack = EmbeddedStack(self.home)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.state: UpState | None = None

    @staticmethod
    def free_ports() -> dict[str, int]:
        return {name: free_port() for name in (*SERVICES, CONSOLE)}

    def start(self, timeout: float = 120.0) -> UpState:
        self.home.mkdir(parents=True, exist_ok=True)
        taken = [f"{n}:{p}" for n, p in self.ports.items() if port_open("127.0.0.1", p)]
        if taken:
            raise RuntimeError(f"ports already in use: {', '.join(taken)} (is another `driftloop up` running?)")
        try:
            endpoints = self.stack.start()
            artifacts_root = os.environ.get("DRIFTLOOP_ARTIFACTS_ROOT") or (self.home / "artifacts").as_uri()
            env = self._env(endpoints.database_url, endpoints.kafka_bootstrap, artifacts_root)
            kafka = KafkaSettings(bootstrap=endpoints.kafka_bootstrap,
                                  topic_prefix=env.get("DRIFTLOOP_KAFKA_TOPIC_PREFIX", ""))  # fmt: skip
            asyncio.run(ensure_topics(kafka))  # once, before five services race to do it
            # Nothing is open: an admin token for the CLI and the demo, readable by this user only.
            asyncio.run(ensure_admin_token(DatabaseSettings(url=endpoints.database_url), self.home))
            for name in (*SERVICES, CONSOLE):
                self._spawn(name, env)
            self.state = UpState(
                pid=os.getpid(),
                database_url=endpoints.database_url,
                kafka_bootstrap=endpoints.kafka_bootstrap,
                embedded=endpoints.embedded,
                artifacts_root=artifacts_root,
                services={n: f"http://127.0.0.1:{self.ports[n]}" for n in SERVICES},
                service_pids={n: p.pid for n, p in self.processes.items()},
                stack_pids=self.stack.processes(),
                home=str(self.home),
                console=f"http://127.0.0.1:{self.ports[CONSOLE]}",
            )
            self._wait_ready(timeout)
            (self.home / "up.json").write_text(json.dumps(asdict(self.state), indent=2))
            return self.state
        except BaseException:
            self.stop()
            raise

    def _env(self, database_url: str, bootstrap: str, artifacts_root: str) -> dict[str, str]:
        """The services' environment: the user's, then what the supervisor decided (endpoints
        and ports must match what it checks), then defaults the user did not override."""
        env = dict(os.environ)
        env.update(
            DRIFTLOOP_DATABASE_URL=database_url,
            DRIFTLOOP_KAFKA_BOOTSTRAP=bootstrap,
            DRIFTLOOP_ARTIFACTS_ROOT=artifacts_root,
            DRIFTLOOP_TELEMETRY_JSON_LOGS="true" if self.json_logs else "false",
            DRIFTLOOP_SERVING_REGISTRY_URL=f"http://127.0.0.1:{self.ports['registry']}",
            DRIFTLOOP_TRAINER_REGISTRY_URL=f"http://127.0.0.1:{self.ports['registry']}",
            PYTHONUNBUFFERED="1",
        )
        env.update({f"DRIFTLOOP_{name.upper()}_PORT": str(self.ports[name]) for name in (*SERVICES, CONSOLE)})
        # The console reads the five services' APIs with the signed-in person's token.
        env.update({f"DRIFTLOOP_CONSOLE_{n.upper()}_URL": f"http://127.0.0.1:{self.ports[n]}" for n in SERVICES})
        env.update({k: v for k, v in self.extra_env.items() if k not in os.environ})
        # Serving tags request ids with this key; kept in the home so restarted services agree.
        env.setdefault("DRIFTLOOP_SERVING_REQUEST_ID_SECRET", self._secret("request-id.secret"))
        # The monitor checks the ids on labels.arrived again, with the same key.
        env.setdefault("DRIFTLOOP_MONITOR_REQUEST_ID_SECRET", env["DRIFTLOOP_SERVING_REQUEST_ID_SECRET"])
        # Artifacts are signed by the trainer's key (given to the trainer only, in _spawn).
        env.setdefault("DRIFTLOOP_SIGNING_PUBLIC_KEYS", json.dumps([str(self._keys()[1])]))
        return env

    def _secret(self, name: str) -> str:
        """A random secret kept in ``<home>/name`` (owner-only), made on first use."""
        path = self.home / name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        return path.read_text().strip()

    def _keys(self) -> tuple[Path, Path]:
        """The artifact signing key pair, generated into ``<home>/keys`` on first start."""
        return generate_keys(self.home / "keys")

    def _spawn(self, name: str, env: dict[str, str]) -> None:
        root = Path(__file__).resolve().parents[2]
        if name == "trainer":  # only the trainer holds the private key
            env = {"DRIFTLOOP_SIGNING_PRIVATE_KEY": str(self._keys()[0]), **env}
        else:
            env = {k: v for k, v in env.items() if k != "DRIFTLOOP_SIGNING_PRIVATE_KEY"}
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self.processes[name] = process
        pump = threading.Thread(target=self._pump, args=(name, process), daemon=True, name=f"log-{name}")
        pump.start()
        self._pumps.append(pump)

    def _pump(self, name: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        sink: IO[str] | None = None
        if self.log_to_files:
            (self.home / "logs").mkdir(parents=True, exist_ok=True)
            sink = open(self.home / "logs" / f"{name}.log", "a")  # noqa: SIM115 - closed below
        try:
            for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()
                else:
                    with self._lock:
                        self.echo.write(f"{name:>8} | {line}\n")
                        self.echo.flush()
        finally:
            process.stdout.close()
            if sink is not None:
                sink.close()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {*SERVICES, CONSOLE}
        with httpx.Client(timeout=2) as client:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    process = self.processes[name]
                    if process.poll() is not None:
                        where = f"; see {self.home / 'logs' / (name + '.log')}" if self.log_to_files else ""
                        raise RuntimeError(
                            f"service {name} exited with code {process.returncode} during start-up{where}"
                        )
                    try:
                        if client.get(f"http://127.0.0.1:{self.ports[name]}/readyz").status_code == 200:
                            pending.discard(name)
                    except httpx.HTTPError:
                        pass
                time.sleep(0.2)
        if pending:
            raise RuntimeError(f"services not ready after {timeout:.0f}s: {', '.join(sorted(pending))}")

    def alive(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is None]

    def restart(self, name: str, timeout: float = 60.0, *, kill: bool = False) -> None:
        """Stop one service and start it again (used to show that work survives a restart);
        ``kill``: with SIGKILL, as a crash would (the chaos tests)."""
        if kill:
            self._kill(name)
        else:
            self._terminate(name)
        assert self.state is not None
        env = self._env(self.state.database_url, self.state.kafka_bootstrap, self.state.artifacts_root)
        self._spawn(name, env)
        self.state.service_pids[name] = self.processes[name].pid
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"http://127.0.0.1:{self.ports[name]}/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"service {name} not ready {timeout:.0f}s after a restart")

    def _kill(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def _terminate(self, name: str, timeout: float = 20.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def stop(self) -> None:
        for name in reversed((*SERVICES, CONSOLE)):
            self._terminate(name)
        self.stack.stop()
        for pump in self._pumps:
            pump.join(timeout=2)
        state_file = self.home / "up.json"
        if self.state is not None and state_file.exists():
            state_file.unlink()
