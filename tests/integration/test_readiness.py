"""Honest readiness: serving says ready only once the champions the registry names
are loaded, so the first request after "ready" is answered by the model."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.artifacts import ArtifactStore
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from services.serving.app import create_app as serving_app
from services.serving.settings import ServingSettings
from tests.conftest import Isolation, serve
from tests.helpers import wait_until
from tests.integration.test_registry import _has, trained
from tests.integration.test_serving_runtime import listening
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


async def test_serving_is_ready_only_with_its_champions_loaded(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    unreachable, _ = serving_app(isolated.settings(ServingSettings, registry_url="http://127.0.0.1:9"))
    async with serve(unreachable) as client:
        answer = await client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["checks"]["champions"] != "ok"  # the registry cannot tell it what to load

    registry, _ = registry_app(isolated.settings(RegistrySettings, min_metric=0.6))
    async with serve(registry) as registry_client, listening(registry) as address:
        await publish(isolated, trained(store, 0.7))
        await wait_until(lambda: _has(registry_client, 1), message="v1 champion")
        app, _ = serving_app(isolated.settings(ServingSettings, registry_url=f"http://{address}"))
        async with serve(app) as client:

            async def ready() -> Any:
                return (await client.get("/readyz")).status_code == 200

            await wait_until(ready, timeout=30, message="serving ready")
            assert (await client.get("/v1/models/churn")).json()["version"] == 1  # loaded before ready
