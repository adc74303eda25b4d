"""Canary releases on the real broker and PostgreSQL, as the registry records them: a drift retrain sent
to a canary (DRIFTLOOP_REGISTRY_DRIFT_RETRAIN=canary) is recorded as a canary, not as promoted, in the
version record, the audit, the model.promoted event and `driftloop models`, and is settled when the canary
policy decides; while it is judged, any other winner replaces it instead of jumping to champion; an A/B
test is never decided, whatever its labels and its deadline."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from libs.common import topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import ModelCompared, ModelPromoted, parse_event
from services.monitor.app import create_app as create_monitor
from services.monitor.settings import MonitorSettings
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from services.serving.app import create_app as create_serving
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, serve
from tests.helpers import outbox_drained, read_topic, wait_until
from tests.integration.test_canary_judgement import _challenger, _champion_monitored, _no_alias, audit, traffic
from tests.integration.test_registry import _has, trained
from tests.integration.test_serving import instances
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

        # While a drift retrain is judged as the canary (v4), a routine retrain that beats the champion (v5,
        # a post-drift refresh) does not jump to champion: it replaces the canary, and the champion moves on
        # live labels only.
        await publish(isolated, trained(store, 0.9, 0.85, 2))
        await wait_until(lambda: _decided(registry, 4, "canary"), message="v4 released as a canary")
        await publish(isolated, trained(store, 0.92, 0.85, 2).model_copy(update={"trigger": "new_data"}))
        await wait_until(lambda: _decided(registry, 5, "canary"), message="v5 released in place of v4")
        assert {v: d for v, d in (await decisions(registry)).items() if v >= 2} == {
            2: ("promoted", ["champion"]), 3: ("rolled-back", []), 4: ("rolled-back", []), 5: ("canary", ["canary"]),
        }  # fmt: skip
        replaced = next(a for a in (await registry.get("/v1/models/churn/audit")).json() if a["to_version"] == 5
                        and a["alias"] == "canary")  # fmt: skip
        assert "released as a canary in place of v4" in replaced["reason"]
        # Without a canary under judgement, a routine retrain goes straight to champion as before.
        await publish(isolated, compared(5, 2, 0.05, 0.01, 0.09))
        await wait_until(lambda: _decided(registry, 5, "promoted"), message="v5 promoted by the canary policy")
        await publish(isolated, trained(store, 0.95, 0.92, 5).model_copy(update={"trigger": "new_data"}))
        await wait_until(lambda: _decided(registry, 6, "promoted"), message="v6 promoted")
        assert (await decisions(registry))[6] == ("promoted", ["champion"])

    promotions = [parse_event(r.value) for r in await read_topic(
        isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=11)]  # fmt: skip
    moves = [(e.move.alias, e.move.from_version, e.move.to_version, e.share, e.judged, e.actor)
             for e in promotions if isinstance(e, ModelPromoted)]  # fmt: skip
    assert moves == [
        ("champion", None, 1, None, None, "policy"),
        ("canary", None, 2, 30, True, "policy"),  # the release: a canary at its share, judged
        ("champion", 1, 2, None, None, "policy"), ("canary", 2, None, None, None, "policy"),  # promoted, ended
        ("canary", None, 3, 30, True, "policy"), ("canary", 3, None, None, None, "policy"),  # released, rolled back
        ("canary", None, 4, 30, True, "policy"), ("canary", 4, 5, 30, True, "policy"),  # v5 replaces v4
        ("champion", 2, 5, None, None, "policy"), ("canary", 5, None, None, None, "policy"),  # promoted, ended
        ("champion", 5, 6, None, None, "policy"),  # no canary judged: straight to champion
    ]  # fmt: skip


async def _decided(client: Any, version: int, decision: str) -> bool:
    return (await decisions(client)).get(version, ("", []))[0] == decision


async def test_serving_loads_the_canary_and_shadow_the_registry_names_when_it_starts(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    registry_app, registry_rt = create_app(isolated.settings(RegistrySettings, min_metric=0.6))
    async with serve(registry_app) as registry, listening(registry_app) as registry_at:
        await publish(isolated, trained(store, 0.7), trained(store, 0.65, 0.7, 1), trained(store, 0.66, 0.7, 1))
        await wait_until(lambda: _has(registry, 3), message="v3")
        for alias, body in (("canary", {"version": 2, "share": 40}), ("shadow", {"version": 3})):
            moved = await registry.put(f"/v1/models/churn/aliases/{alias}", json={**body, "reason": "a release"})
            assert moved.status_code == 200, moved.text
        await outbox_drained(registry_rt.db)  # the moves are on the topic before serving starts

        # Serving starts after the moves were published: it reads model.promoted from the latest offset,
        # so only the registry can tell it the split. It is started twice, as a restart would.
        keys = [f"customer-{i}" for i in range(200)]
        answered: list[dict[str, tuple[str, int]]] = []
        for _ in range(2):
            serving_app, _ = create_serving(isolated.settings(ServingSettings, registry_url=f"http://{registry_at}"))
            async with serve(serving_app) as serving:
                await wait_until(lambda: _ready(serving), timeout=60, message="serving ready")
                described = (await serving.get("/v1/models/churn")).json()
                assert (described["version"], described["split"]) == (
                    1, {"canary": {"version": 2, "share": 40.0}, "shadow": {"version": 3}})  # fmt: skip
                answers = await asyncio.gather(*(_predict(serving, key) for key in keys))
                answered.append(dict(zip(keys, answers, strict=True)))
        assert answered[0] == answered[1]  # a routing key reaches the same version after the restart
        assert set(answered[0].values()) == {("champion", 1), ("canary", 2)}
        canary_share = sum(alias == "canary" for alias, _ in answered[0].values()) / len(keys)
        assert 0.3 < canary_share < 0.5  # sd 3.5 points at 200 keys


async def _ready(client: Any) -> bool:
    return bool((await client.get("/readyz")).status_code == 200)


async def _predict(client: Any, key: str) -> tuple[str, int]:
    answer = await client.post("/v1/models/churn/predict", json={"instances": instances(1), "routing_key": key})
    assert answer.status_code == 200, answer.text
    return answer.json()["alias"], answer.json()["version"]


async def test_an_ab_test_is_never_decided_by_the_policy_nor_by_the_deadline_sweep(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    registry_app, _ = create_app(isolated.settings(
        RegistrySettings, min_metric=0.6, canary_min_labels=100, canary_margin=0.0, canary_deadline_s=1.0,
        canary_sweep_s=0.2,
    ))  # fmt: skip
    monitor_app, _ = create_monitor(isolated.settings(MonitorSettings, compare_every=50, window_size=1000))
    async with serve(registry_app) as registry, serve(monitor_app) as monitor:
        await publish(isolated, trained(store, 0.7), trained(store, 0.65, 0.7, 1))
        await wait_until(lambda: _has(registry, 2), message="v2")
        await wait_until(lambda: _champion_monitored(monitor, 1), message="the monitor on v1")
        ab = {"version": 2, "share": 50, "judged": False, "reason": "A/B v2"}
        assert (await registry.put("/v1/models/churn/aliases/canary", json=ab)).status_code == 200
        await wait_until(lambda: _challenger(monitor, "canary", 2), message="the monitor to know the canary")

        # Clearly worse on 100 labels (a judged canary is rolled back on this: test_canary_judgement) ...
        await publish(isolated, *traffic(1, "a-champion", 100, 8), *traffic(2, "a-canary", 100, 5))
        worse = await wait_until(lambda: _compared(registry, 100), timeout=60, message="the worse comparison")
        assert worse["upper"] < 0
        # ... then clearly better with 400 more (promoted if judged), and past its deadline all along.
        await publish(isolated, *traffic(1, "b-champion", 400, 8), *traffic(2, "b-canary", 400, 10))
        better = await wait_until(lambda: _compared(registry, 500), timeout=60, message="the better comparison")
        assert better["lower"] > 0
        listing = (await registry.get("/v1/models")).json()[0]
        assert listing["aliases"] == {"champion": 1, "canary": 2}
        assert listing["canary"]["judged"] is False
        assert datetime.fromisoformat(listing["canary"]["deadline"]) < datetime.now(UTC)  # the sweep's business
        assert not [a for a in await audit(registry) if a["actor"] == "policy" and a["alias"] == "canary"]

        # The same canary made judged (its clock and deadline kept): the sweep rolls it back at once, so it
        # was running all along and let the A/B test be.
        judged = {**ab, "judged": True, "reason": "judge it now"}
        assert (await registry.put("/v1/models/churn/aliases/canary", json=judged)).status_code == 200
        await wait_until(lambda: _no_alias(registry, "canary"), timeout=30, message="the deadline sweep")
        rollback = next(a for a in await audit(registry) if a["action"] == "rollback")
        assert (rollback["actor"], rollback["from_version"]) == ("policy", 2)
        assert "deadline" in rollback["reason"]


async def _compared(registry: Any, labels: int) -> dict[str, Any] | None:
    """The registry's last comparison of the canary once it counts ``labels`` canary labels."""
    canary = (await registry.get("/v1/models")).json()[0]["canary"] or {}
    last = canary.get("last_comparison")
    return last if last is not None and last["challenger_labels"] >= labels else None
