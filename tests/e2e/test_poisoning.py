"""The forged-label attack of issue 10, replayed on the real broker and PostgreSQL with the five
services: made-up request ids change nothing; one untrusted principal with valid ids, flipped
labels and poisoned rows ends at ``candidate``, never ``champion``, with the reason in the audit."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cli.churn_stream import FEATURES, SCHEMA, TARGET, ChurnStream
from libs.common import auth
from libs.common.auth import Role
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.monitor.app import create_app as create_monitor
from services.monitor.settings import MonitorSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.serving.app import create_app as create_serving
from services.serving.settings import ServingSettings
from services.trainer.app import create_app as create_trainer
from services.trainer.settings import TrainerSettings
from tests.conftest import Isolation, serve
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def stack(isolated: Isolation) -> AsyncIterator[tuple[dict[str, httpx.AsyncClient], Any]]:
    """The five services in this process, on the test's own topics and schemas."""
    apps = {
        "registry": create_registry(isolated.settings(RegistrySettings))[0],
        "ingest": create_ingest(isolated.settings(IngestSettings))[0],
        "trainer": create_trainer(
            isolated.settings(
                TrainerSettings,
                min_rows_first_model=600,
                min_new_rows=1_000_000,
                drift_min_rows=500,
                drift_cooldown_s=0,
                time_budget_s=1,
                search_iterations=2,
                cv_folds=2,
            )
        )[0],
        "serving": create_serving(
            isolated.settings(
                ServingSettings,
                registry_url="http://127.0.0.1:9",
                request_id_secret="e2e-secret-" * 3,
                log_batch_size=50,
                log_flush_s=0.1,
            )
        )[0],
        "monitor": create_monitor(
            isolated.settings(
                MonitorSettings,
                window_size=100,
                min_window=100,
                min_labels=100,
                label_window=150,
                persistence_k=1,
                persistence_n=1,
                cooldown_s=0,
                lag_interval_s=60,
                request_id_secret="e2e-secret-" * 3,  # checks labels.arrived's ids again
            )
        )[0],
    }
    async with contextlib.AsyncExitStack() as started:
        clients = {name: await started.enter_async_context(serve(app)) for name, app in apps.items()}
        yield clients, apps["ingest"].state.auth.db  # the shared token table


async def token(db: Any, principal: str, *roles: Role, trusted: bool) -> dict[str, str]:
    issued = await auth.issue(db, principal, roles, created_by="e2e", trusted=trusted)
    return {"Authorization": f"Bearer {issued.token}"}


@pytest.mark.timeout(600)
async def test_forged_and_untrusted_feedback_never_moves_the_champion(isolated: Isolation) -> None:
    async with stack(isolated) as (s, tokens):
        assert (await s["ingest"].put("/v1/datasets/churn", json=SCHEMA)).status_code in (200, 201)
        upstream = await token(tokens, "upstream-crm", Role.PRODUCER, trusted=True)
        mallory = await token(tokens, "mallory", Role.PRODUCER, Role.PREDICTOR, trusted=False)
        clean = ChurnStream(seed=21)
        posted = await s["ingest"].post("/v1/datasets/churn/records", json=clean.batch(800), headers=upstream)
        assert posted.status_code == 200, posted.text
        await wait_until(lambda: _champion(s["registry"]), timeout=180, message="v1 to be champion")
        await wait_until(lambda: _served(s["serving"]), timeout=60, message="v1 to be served")
        await wait_until(lambda: _monitored(s["monitor"]), timeout=60, message="v1 to be monitored")

        # 1. made-up request ids: refused at the API, nothing reaches the monitor
        forged = [{"request_id": f"{i:032x}", "label": "yes"} for i in range(2000)]
        answer = await s["serving"].post("/v1/feedback", json={"model": "churn", "labels": forged}, headers=mallory)
        assert answer.status_code == 422
        drift = (await s["monitor"].get("/v1/models/churn/drift")).json()
        assert drift["labels_seen"] == 0
        assert drift["alarms"] == []

        # 2. valid ids of mallory's own predictions, flipped labels: an alarm, then poisoned rows
        stream = ChurnStream(seed=33)

        async def flipped_round() -> Any:
            rows = stream.batch(100)
            predicted = await s["serving"].post(
                "/v1/models/churn/predict", json={"instances": [{k: r[k] for k in FEATURES} for r in rows]},
                headers=mallory,
            )  # fmt: skip
            labels = [
                {"request_id": p["request_id"], "label": "no" if r[TARGET] == "yes" else "yes"}
                for p, r in zip(predicted.json()["predictions"], rows, strict=True)
            ]
            sent = await s["serving"].post("/v1/feedback", json={"model": "churn", "labels": labels}, headers=mallory)
            assert sent.status_code == 202, sent.text
            alarms = (await s["monitor"].get("/v1/models/churn/drift")).json()["alarms"]
            return alarms if any("performance" in a["kinds"] for a in alarms) else None

        await wait_until(flipped_round, timeout=120, interval=0.5, message="a performance alarm")
        poisoned = [{**r, TARGET: "no" if r[TARGET] == "yes" else "yes"} for r in stream.batch(700)]
        posted = await s["ingest"].post("/v1/datasets/churn/records", json=poisoned, headers=mallory)
        assert posted.status_code == 200, posted.text

        async def held() -> Any:
            listed = (await s["registry"].get("/v1/models/churn/versions")).json()
            return listed if len(listed) >= 2 else None

        versions = await wait_until(held, timeout=240, interval=0.5, message="the retrain to be registered")
        # With no cool-down a second alarm can come while the first retrain trains: a held retrain does not
        # answer the drift, so another may be registered before this looks. Every one of them is held.
        assert [(versions[-1]["version"], versions[-1]["decision"], versions[-1]["aliases"])] == [
            (1, "promoted", ["champion"])
        ]
        retrains = versions[:-1]  # newest first
        assert [v["decision"] for v in retrains] == ["held"] * len(retrains)
        assert retrains[0]["aliases"] == ["candidate"]  # the newest held retrain is the candidate ...
        assert all(v["aliases"] == [] for v in retrains[1:])  # ... and an older one holds no alias
        audit = (await s["registry"].get("/v1/models/churn/audit")).json()
        reason = next(a["reason"] for a in audit if a["alias"] == "candidate")
        assert "labels behind the performance alarm came from untrusted principal 'mallory'" in reason
        assert "training rows came from untrusted principal 'mallory'" in reason
        assert (await s["serving"].get("/v1/models/churn")).json()["version"] == 1


async def _champion(client: httpx.AsyncClient) -> Any:
    answer = await client.get("/v1/models/churn/aliases/champion")
    return answer.json() if answer.status_code == 200 else None


async def _served(client: httpx.AsyncClient) -> Any:
    return (await client.get("/v1/models/churn")).status_code == 200


async def _monitored(client: httpx.AsyncClient) -> Any:
    return (await client.get("/v1/models/churn/drift")).status_code == 200
