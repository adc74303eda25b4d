"""The whole loop, as `driftloop demo` runs it: five service processes on the
embedded stack, synthetic traffic, injected drift, no human step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.cli.demo import Demo, DemoConfig
from libs.cli.main import DEMO_ENV
from libs.cli.supervisor import Supervisor, UpState

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpState, dict[str, Any]]]:
    home = tmp_path_factory.mktemp("up")
    supervisor = Supervisor(home, ports=Supervisor.free_ports(), env=DEMO_ENV, log_to_files=True)
    state = supervisor.start()
    try:
        import asyncio

        config = DemoConfig(seed=11, stationary_predictions=2500, recovery_predictions=1000, timeout_s=240)
        result = asyncio.run(Demo(state.services, state.kafka_bootstrap, config).run())
        yield state, result
    finally:
        supervisor.stop()
        _print_logs_on_failure(home)


def _print_logs_on_failure(home: Path) -> None:
    for log in sorted((home / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        errors = [line for line in lines if " ERROR " in line or "Traceback" in line]
        if errors:
            print(f"--- {log.name}: {len(errors)} error lines, last ones:\n" + "\n".join(errors[-5:]))


def test_the_loop_closes(loop: tuple[UpState, dict[str, Any]]) -> None:
    _, result = loop
    assert result["errors"] == []
    assert result["loop_closed"], result
    assert result["initial_version"] == 1
    assert result["retrained_version"] == 2
    assert result["false_drift_events_before_injection"] == 0
    assert result["drift_detected_after_rows"] is not None
    assert result["accuracy_after_recovery"] > result["accuracy_during_drift"] + 0.15
    assert result["accuracy_before_drift"] > 0.7
    assert result["dlq_messages"] == 0


def test_every_record_is_accepted_or_rejected_with_a_reason(loop: tuple[UpState, dict[str, Any]]) -> None:
    state, result = loop
    records = result["records"]
    assert records["accounted"], records
    assert records["rejected"] > 0  # the demo corrupts 1% on purpose
    rejections = httpx.get(f"{state.services['ingest']}/v1/datasets/churn/rejections?limit=1000").json()
    assert rejections["total"] == records["rejected"]
    assert all(r["reason"] for r in rejections["rejections"])


def test_registry_and_serving_agree_on_the_retrained_champion(loop: tuple[UpState, dict[str, Any]]) -> None:
    state, result = loop
    registry, serving = state.services["registry"], state.services["serving"]
    v2 = httpx.get(f"{registry}/v1/models/churn/aliases/champion").json()
    assert v2["version"] == result["retrained_version"]
    assert v2["lineage"]["trigger"] == "drift"
    assert v2["run"]["champion_version"] == 1
    assert v2["metrics"]["accuracy"] > v2["run"]["champion_metrics"]["accuracy"]
    audit = httpx.get(f"{registry}/v1/models/churn/audit").json()
    promotions = [(a["from_version"], a["to_version"]) for a in audit if a["action"] == "promote"]
    assert promotions == [(1, 2), (None, 1)]
    served = httpx.get(f"{serving}/v1/models/churn").json()
    assert served["version"] == v2["version"]
    assert served["artifact"]["sha256"] == v2["artifact"]["sha256"]


def test_drift_was_explained_and_the_retrain_used_post_drift_data(loop: tuple[UpState, dict[str, Any]]) -> None:
    state, _ = loop
    drift = httpx.get(f"{state.services['monitor']}/v1/models/churn/drift").json()
    assert drift["version"] == 2  # the monitor moved on to the new champion
    alarm = drift["alarms"][-1]
    assert alarm["version"] == 1
    assert "data_drift" in alarm["kinds"]
    jobs = httpx.get(f"{state.services['trainer']}/v1/training-jobs?model=churn").json()
    drift_job = next(j for j in jobs if j["trigger"] == "drift")
    assert drift_job["status"] == "succeeded"
    assert drift_job["since"] is not None  # trained only on data from after the drift began
