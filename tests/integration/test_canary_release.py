"""Canary releases on the real broker and PostgreSQL, as the registry records them: a drift retrain sent
to a canary (DRIFTLOOP_REGISTRY_DRIFT_RETRAIN=canary) is recorded as a canary, not as promoted, in the
version record, the audit, the model.promoted event and `driftloop models`, and is settled when the canary
policy decides; an A/B test is never decided, whatever its labels and its deadline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import ModelCompared, ModelPromoted, parse_event
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from tests.conftest import Isolation, serve
from tests.helpers import read_topic, wait_until
from tests.integration.test_registry import _has, trained
from tests.integration.test_serving_runtime import listening
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


def compared(version: int, champion: int, difference: float, lower: float, upper: float) -> ModelCompared:
    """The monitor's comparison of canary ``version`` with ``champion`` on 300 labels each."""
    return ModelCompared(
        producer="test", model="churn", alias="canary", version=version, champion_version=champion,
        metric="accuracy", challenger_labels=300, champion_labels=300, challenger_value=0.8 + difference,
        champion_value=0.8, difference=difference, lower=lower, upper=upper, method="newcombe-wilson-95",
    )  # fmt: skip


async def decisions(client: Any) -> dict[int, tuple[str, list[str]]]:
    """version → (decision, aliases)."""
    answer = await client.get("/v1/models/churn/versions")
    return {v["version"]: (v["decision"], v["aliases"]) for v in answer.json()} if answer.status_code == 200 else {}


async def test_a_drift_retrain_sent_to_a_canary_is_recorded_as_a_canary_until_the_policy_settles_it(
    isolated: Isolation, tmp_path: Path
) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    settings = isolated.settings(RegistrySettings, drift_retrain="canary", canary_share=30, canary_min_labels=100)
    registry_app, _ = create_app(settings)
    async with serve(registry_app) as registry, listening(registry_app) as registry_at:
        await publish(isolated, trained(store, 0.7))  # the first version: straight to champion
        await wait_until(lambda: _has(registry, 1), message="v1")
        await publish(isolated, trained(store, 0.8, 0.7, 1))  # a drift retrain that beats the champion
        await wait_until(lambda: _has(registry, 2), message="v2")
        assert await decisions(registry) == {1: ("promoted", ["champion"]), 2: ("canary", ["canary"])}
        audit = (await registry.get("/v1/models/churn/audit")).json()
        released = next(a for a in audit if a["alias"] == "canary")
        assert (released["action"], released["to_version"], released["actor"]) == ("promote", 2, "policy")
        assert "released as a canary first (share 30%)" in released["reason"]
        assert not any(a["alias"] == "champion" and a["to_version"] == 2 for a in audit)
        metrics = (await registry.get("/metrics")).text
        assert 'driftloop_promotion_decisions_total{model="churn",outcome="canary"} 1.0' in metrics
        assert 'outcome="promoted"} 1.0' in metrics  # v1 only

        # `driftloop models` says the same.
        env = {"DRIFTLOOP_TOKEN": registry.headers["authorization"].removeprefix("Bearer "),
               "DRIFTLOOP_REGISTRY_URL": f"http://{registry_at}", "DRIFTLOOP_MONITOR_URL": "http://127.0.0.1:9",
               "DRIFTLOOP_HOME": str(tmp_path)}  # fmt: skip
        run = await asyncio.to_thread(CliRunner().invoke, cli_app, ["models", "--json"], env=env)
        assert run.exit_code == 0, run.output
        listed = json.loads(run.stdout)[0]
        assert (listed["aliases"], listed["canary"]["share"], listed["canary"]["judged"]) == (
            {"champion": 1, "canary": 2}, 30, True)  # fmt: skip
        assert [(v["version"], v["decision"]) for v in listed["versions"]] == [(2, "canary"), (1, "promoted")]

        # The canary policy promotes v2: its decision becomes "promoted".
        await publish(isolated, compared(2, 1, 0.05, 0.01, 0.09))
        await wait_until(lambda: _decided(registry, 2, "promoted"), message="v2 promoted by the canary policy")
        assert (await decisions(registry))[2] == ("promoted", ["champion"])

        # The next drift retrain is a canary too; a worse one is rolled back: "rolled-back".
        await publish(isolated, trained(store, 0.9, 0.85, 2))
        await wait_until(lambda: _decided(registry, 3, "canary"), message="v3 released as a canary")
        await publish(isolated, compared(3, 2, -0.2, -0.3, -0.1))
        await wait_until(lambda: _decided(registry, 3, "rolled-back"), message="v3 rolled back")
        assert await decisions(registry) == {
            1: ("promoted", []), 2: ("promoted", ["champion"]), 3: ("rolled-back", []),
        }  # fmt: skip

    promotions = [parse_event(r.value) for r in await read_topic(
        isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=6)]  # fmt: skip
    moves = [(e.move.alias, e.move.from_version, e.move.to_version, e.share, e.judged, e.actor)
             for e in promotions if isinstance(e, ModelPromoted)]  # fmt: skip
    assert moves == [
        ("champion", None, 1, None, None, "policy"),
        ("canary", None, 2, 30, True, "policy"),  # the release: a canary at its share, judged
        ("champion", 1, 2, None, None, "policy"), ("canary", 2, None, None, None, "policy"),  # promoted, ended
        ("canary", None, 3, 30, True, "policy"), ("canary", 3, None, None, None, "policy"),  # released, rolled back
    ]  # fmt: skip


async def _decided(client: Any, version: int, decision: str) -> bool:
    return (await decisions(client)).get(version, ("", []))[0] == decision
