"""Live judgement on the real broker and PostgreSQL: the monitor compares a canary (and a shadow) with the
champion on labels, and the registry's canary policy rolls a worse canary back and promotes a better one."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.churn_stream import FEATURES, ChurnStream
from cli.main import app
from libs.common.artifacts import ArtifactStore
from libs.common.events import Label, LabelsArrived, PredictionRecord, PredictionsLogged
from services.monitor.app import create_app as create_monitor
from services.monitor.settings import MonitorSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.conftest import Isolation, serve
from tests.helpers import wait_until
from tests.integration.test_registry import _has, trained
from tests.integration.test_serving_runtime import listening
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration

ROWS = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=5).batch(400)]


def traffic(
    version: int, prefix: str, n: int, accuracy_in_10: int, shadow: bool = False
) -> tuple[PredictionsLogged, LabelsArrived]:
    """``n`` predictions of ``version`` (ids ``prefix-i``) right ``accuracy_in_10`` times in ten, and their labels."""
    truth = ["yes" if i % 2 else "no" for i in range(n)]
    guess = [t if i % 10 < accuracy_in_10 else ("no" if t == "yes" else "yes") for i, t in enumerate(truth)]
    records = [PredictionRecord(request_id=f"{prefix}-{i}", features=ROWS[i % len(ROWS)], prediction=g)
               for i, g in enumerate(guess)]  # fmt: skip
    logged = PredictionsLogged(producer="test", model="churn", version=version, records=records, shadow=shadow)
    answers = [Label(request_id=f"{prefix}-{i}", label=t) for i, t in enumerate(truth)]
    labels = LabelsArrived(producer="test", model="churn", labels=answers)
    return logged, labels


async def live(monitor: Any) -> dict[str, Any]:
    answer = await monitor.get("/v1/models/churn/versions")
    return answer.json() if answer.status_code == 200 else {}


async def audit(registry: Any) -> list[dict[str, Any]]:
    return (await registry.get("/v1/models/churn/audit")).json()  # type: ignore[no-any-return]


async def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    registry_app, _ = create_registry(isolated.settings(RegistrySettings, canary_min_labels=100, canary_margin=0.0))
    monitor_app, _ = create_monitor(isolated.settings(MonitorSettings, compare_every=50, window_size=1000))
    async with serve(registry_app) as registry, serve(monitor_app) as monitor:
        await publish(isolated, trained(store, 0.7))
        await wait_until(lambda: _has(registry, 1), message="v1")
        await publish(isolated, trained(store, 0.65, 0.7, 1), trained(store, 0.69, 0.7, 1))  # v2, v3: no alias
        await wait_until(lambda: _has(registry, 3), message="v3")
        await wait_until(lambda: _champion_monitored(monitor, 1), message="the monitor on v1")

        # A worse canary: 5 in 10 right against the champion's 8 in 10.
        moved = await registry.put("/v1/models/churn/aliases/canary", json={"version": 2, "share": 50,
                                                                           "reason": "try v2"})  # fmt: skip
        assert moved.status_code == 200, moved.text
        await wait_until(lambda: _challenger(monitor, "canary", 2), message="the monitor to know the canary")
        await publish(isolated, *traffic(1, "a-champion", 100, 8), *traffic(2, "a-canary", 100, 5))
        await wait_until(lambda: _no_alias(registry, "canary"), timeout=60, message="the worse canary rolled back")
        rollback = next(a for a in await audit(registry) if a["action"] == "rollback" and a["alias"] == "canary")
        assert (rollback["actor"], rollback["from_version"], rollback["to_version"]) == ("policy", 2, None)
        assert "worse with 95% confidence" in rollback["reason"]
        assert "newcombe-wilson-95" in rollback["reason"]  # the figures are in the audit
        assert (await registry.get("/v1/models/churn/aliases/champion")).json()["version"] == 1

        # A better canary (19 in 20 right) and, meanwhile, v2 as a shadow on the champion's requests.
        for alias, version in (("shadow", 2), ("canary", 3)):
            moved = await registry.put(f"/v1/models/churn/aliases/{alias}", json={"version": version, "share": 30,
                                       "reason": f"try v{version}"} if alias == "canary" else
                                       {"version": version, "reason": "watch v2"})  # fmt: skip
            assert moved.status_code == 200, moved.text
            await wait_until(partial(_challenger, monitor, alias, version), message=f"the monitor's {alias}")
        champion_logged, champion_labels = traffic(1, "b-champion", 200, 8)
        shadow_logged, _ = traffic(2, "b-champion", 200, 5, shadow=True)  # a copy of each champion request
        canary_logged, canary_labels = traffic(3, "b-canary", 200, 10)
        canary_logged = canary_logged.model_copy(update={"records": [
            r if i % 20 else r.model_copy(update={"prediction": "yes" if r.prediction == "no" else "no"})
            for i, r in enumerate(canary_logged.records)
        ]})  # fmt: skip
        await publish(isolated, champion_logged, shadow_logged, canary_logged, champion_labels, canary_labels)
        await wait_until(lambda: _champion(registry, 3), timeout=60, message="the better canary promoted")
        entries = await audit(registry)
        promote = next(a for a in entries if a["action"] == "promote" and a["alias"] == "champion")
        assert (promote["actor"], promote["from_version"], promote["to_version"]) == ("policy", 1, 3)
        assert "canary better with 95% confidence" in promote["reason"]
        assert any(a["action"] == "end" and a["alias"] == "canary" and a["from_version"] == 3 for a in entries)
        listing = (await registry.get("/v1/models")).json()[0]
        assert listing["aliases"] == {"champion": 3, "shadow": 2}
        assert listing["canary"] is None

        # The shadow's predictions reached the monitor and were scored on the champion's labels.
        versions = {(v["version"], v["shadow"]): v for v in (await live(monitor))["versions"]}
        assert versions[(2, True)]["labels"] == 200
        assert versions[(2, True)]["mean"] == pytest.approx(0.5)
        assert versions[(3, False)]["mean"] == pytest.approx(0.95)


async def _champion_monitored(monitor: Any, version: int) -> bool:
    return bool((await live(monitor)).get("champion") == version)


async def _challenger(monitor: Any, alias: str, version: int) -> bool:
    return bool((await live(monitor)).get("challengers", {}).get(alias, {}).get("version") == version)


async def _no_alias(registry: Any, alias: str) -> bool:
    return alias not in (await registry.get("/v1/models")).json()[0]["aliases"]


async def _champion(registry: Any, version: int) -> bool:
    return bool((await registry.get("/v1/models")).json()[0]["aliases"].get("champion") == version)


async def test_the_cli_lists_models_and_moves_aliases(isolated: Isolation, tmp_path: Path) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    registry_app, _ = create_registry(isolated.settings(RegistrySettings))
    monitor_app, _ = create_monitor(isolated.settings(MonitorSettings))
    async with (
        serve(registry_app) as registry, serve(monitor_app) as monitor,
        listening(registry_app) as registry_at, listening(monitor_app) as monitor_at,
    ):  # fmt: skip
        await publish(isolated, trained(store, 0.7), trained(store, 0.65, 0.7, 1))
        await wait_until(lambda: _has(registry, 2), message="v2")
        # The monitor learns the champion from model.promoted on its own consumer; the CLI shows what it knows.
        await wait_until(lambda: _champion_monitored(monitor, 1), message="the monitor on v1")
        env = {"DRIFTLOOP_TOKEN": registry.headers["authorization"].removeprefix("Bearer "),
               "DRIFTLOOP_REGISTRY_URL": f"http://{registry_at}", "DRIFTLOOP_MONITOR_URL": f"http://{monitor_at}",
               "DRIFTLOOP_HOME": str(tmp_path)}  # fmt: skip

        async def cli(*args: str) -> tuple[int, Any]:
            run = await asyncio.to_thread(CliRunner().invoke, app, [*args, "--json"], env=env)
            return run.exit_code, json.loads(run.stdout)

        assert await cli("canary", "churn", "2", "--share", "25") == (
            0, {"model": "churn", "alias": "canary", "from_version": None, "to_version": 2})  # fmt: skip
        code, listing = await cli("models")
        assert code == 0
        assert (listing[0]["aliases"], listing[0]["canary"]["share"]) == ({"champion": 1, "canary": 2}, 25)
        assert [v["version"] for v in listing[0]["versions"]] == [2, 1]
        assert listing[0]["live"]["champion"] == 1  # the monitor's view rides along
        code, refused = await cli("canary", "churn", "2", "--share", "150")
        assert (code, refused["status"]) == (1, 422)
        assert "share" in refused["message"]
        code, refused = await cli("promote", "churn", "9", "--reason", "typo")
        assert (code, refused["status"]) == (1, 404)
        assert await cli("rollback", "churn", "2", "--reason", "enough") == (
            0, {"model": "churn", "alias": "canary", "from_version": 2})  # fmt: skip
        assert (await cli("promote", "churn", "2", "--reason", "v2 wins"))[1]["to_version"] == 2
        assert (await cli("rollback", "churn", "1", "--reason", "v2 misbehaves"))[1]["to_version"] == 1
        actions = [(a["action"], a["alias"], a["to_version"], a["actor"]) for a in (await audit(registry))[:4]]
        assert actions == [
            ("rollback", "champion", 1, "test-admin"), ("promote", "champion", 2, "test-admin"),
            ("rollback", "canary", None, "test-admin"), ("promote", "canary", 2, "test-admin"),
        ]  # fmt: skip
