"""ONNX exports wait for the model's training queue, and a superseded version is not exported (real broker, PG)."""

from __future__ import annotations

from typing import Any

import pytest

from cli.churn_stream import ChurnStream
from libs.common.artifacts import ArtifactStore
from services.trainer.app import create_app
from tests.conftest import Isolation, serve
from tests.factories import data_arrived
from tests.helpers import wait_until
from tests.integration.test_trainer import jobs, publish, settings

pytestmark = pytest.mark.integration


async def test_an_export_waits_for_the_refresh_after_it_and_is_skipped_once_superseded(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    stream = ChurnStream(seed=21)
    arrived = data_arrived(store, "churn", [stream.batch(700), stream.batch(400)])
    # 700 rows train a first model; the 400 that follow are enough for a refresh, queued when the first job ends.
    app, _ = create_app(settings(isolated, min_new_rows=300, export_defer_s=120))
    async with serve(app) as client:
        await publish(isolated, *arrived)

        async def both_done() -> list[dict[str, Any]] | None:
            found = sorted(await jobs(client), key=lambda j: j["created_at"])
            assert all(j["status"] != "failed" for j in found), found
            done = [j for j in found if j["status"] == "succeeded" and j["onnx"] is not None]
            return found if len(done) == 2 else None

        first, refresh = await wait_until(both_done, timeout=180, message="two jobs and their exports")
    assert (first["dataset_version"], refresh["dataset_version"]) == (1, 2)
    # The first version's export waited while the refresh ran; by then a newer model existed and no champion
    # was the first one's (no registry here): it no longer serves, so it was not exported.
    assert first["onnx"]["artifact"] is None
    assert first["onnx"]["detail"].startswith("not exported: a newer model was trained"), first["onnx"]
    assert first["export_seconds"] is None
    assert refresh["onnx"]["parity"], refresh["onnx"]["detail"]
    assert refresh["export_seconds"] > 0
