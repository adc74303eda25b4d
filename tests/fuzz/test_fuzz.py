"""The API fuzz run: schemathesis, every check, against the five services of a real
stack (``driftloop up`` on free ports: embedded PostgreSQL and broker, one process
per service), with an admin token and a bounded number of examples per operation.

Passing means: no 5xx, every status and body the services answered is the one
their OpenAPI document declares. Settings and the one tuned check are in
``schemathesis.toml`` beside this file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.supervisor import SERVICES, Supervisor, UpState

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 8
"""Examples per operation and phase: the whole run stays within about three minutes on a shared 2-core machine."""


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[UpState, str]]:
    home = Path(tempfile.mkdtemp(prefix="driftloop-fuzz-"))
    supervisor = Supervisor(home, ports=Supervisor.free_ports(), log_to_files=True)
    try:
        state = supervisor.start()
        yield state, (home / "token").read_text().strip()
    finally:
        supervisor.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("service", SERVICES)
def test_no_server_error_and_every_answer_as_declared(stack: tuple[UpState, str], service: str) -> None:
    state, token = stack
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "--no-color", "run",
        f"{state.services[service]}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
        "--seed", "11", "--workers", "1", "--request-timeout", "30", "--header", f"Authorization: Bearer {token}",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=170, check=False)
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(f"{service}:\n{summary}")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
