"""The loop with a canary release: five service processes on the embedded stack, synthetic traffic, injected
drift; the drift retrain goes to the canary first (DRIFTLOOP_REGISTRY_DRIFT_RETRAIN=canary), takes half
the traffic, is judged on live labels against the champion, and only then becomes the champion."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.demo import Demo, DemoConfig
from cli.main import DEMO_ENV
from cli.supervisor import Supervisor
from cli.tokens import read_token

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CANARY_ENV = {
    **DEMO_ENV,
    "DRIFTLOOP_REGISTRY_DRIFT_RETRAIN": "canary",
    "DRIFTLOOP_REGISTRY_CANARY_SHARE": "50",
    "DRIFTLOOP_REGISTRY_CANARY_MIN_LABELS": "100",
    "DRIFTLOOP_MONITOR_COMPARE_EVERY": "25",
}


def test_a_drift_retrain_goes_through_a_canary_before_it_becomes_champion() -> None:
    home = Path(tempfile.mkdtemp(prefix="driftloop-e2e-canary-"))  # not under pytest's basetemp (see test_loop)
    supervisor = Supervisor(home, ports=Supervisor.free_ports(), env=CANARY_ENV, log_to_files=True)
    state = supervisor.start()
    try:
        config = DemoConfig(seed=21, stationary_predictions=2500, recovery_predictions=500, timeout_s=300)
        token = read_token(home)
        result = asyncio.run(Demo(state.services, state.kafka_bootstrap, config, token=token).run())
        assert result["loop_closed"], result["errors"]  # before the registry is read: it may hold no model yet
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=state.services["registry"], headers=headers, timeout=10) as registry:
            audit, aliases = _snapshot(registry, result["dataset"])
    finally:
        supervisor.stop()
        shutil.rmtree(home, ignore_errors=True)

    print({k: result[k] for k in ("initial_version", "retrained_version", "canary_predictions", "time_to_recover_s",
                                  "accuracy_during_drift", "accuracy_after_recovery")})  # fmt: skip
    retrained = result["retrained_version"]
    assert aliases.get("canary") != retrained  # its canary ended when it became the champion
    # The retrained version answered as a canary before it answered as the champion ...
    assert result["canary_predictions"].get(str(retrained), 0) > 0
    moves = [(a["action"], a["alias"], a["to_version"], a["actor"]) for a in audit]
    released = moves.index(("promote", "canary", retrained, "policy"))
    promoted = moves.index(("promote", "champion", retrained, "policy"))
    assert released < promoted
    # The champion is the retrained version, or one the policy promoted after it (a post-drift refresh may
    # have followed before the aliases were read): the audit's last champion move, not before the retrain's.
    # (A rejected challenger is audited with alias "champion" too, as action "reject": not a move.)
    last = max(i for i, m in enumerate(moves) if m[1] == "champion" and m[0] in ("promote", "rollback"))
    assert moves[last][2] == aliases["champion"]
    assert last >= promoted
    # ... and was promoted by the canary policy on live labels, with the figures in the audit.
    reason = _reason(audit, promoted)
    assert "released as a canary" in _reason(audit, released)
    assert "canary better" in reason or "not worse" in reason
    assert "newcombe-wilson-95" in reason
    assert result["dlq_messages"] == 0, result["dead_letters"]


def _snapshot(registry: httpx.Client, model: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The audit (oldest first) and the aliases as of one moment: a post-drift refresh may be promoted while
    they are read, so the aliases are read before and after the audit until both reads agree."""
    for _ in range(10):
        before = _aliases(registry, model)
        audit = registry.get(f"/v1/models/{model}/audit").json()[::-1]
        aliases = _aliases(registry, model)
        if aliases == before:
            return audit, aliases
    raise AssertionError(f"the aliases of {model} kept moving while the audit was read")


def _aliases(registry: httpx.Client, model: str) -> dict[str, int]:
    return dict(next(m for m in registry.get("/v1/models").json() if m["model"] == model)["aliases"])


def _reason(audit: list[dict[str, Any]], index: int) -> str:
    return str(audit[index]["reason"])
