"""DRIFTLOOP_SERVING_WORKERS=2: two serving processes on one port, each hot-swapping from events.

A real ``python -m services.serving`` supervisor with its two workers, on the test's
broker and database. Every request gets a fresh connection, so the kernel spreads
them over both workers; every one must be answered by the promoted version, and
the request ids one worker minted must be accepted as feedback by whichever worker
receives it (the workers share the key). A worker killed with SIGKILL is replaced.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.common import auth
from libs.common.artifacts import ArtifactStore
from libs.common.process import die_with_parent
from tests.conftest import Isolation
from tests.factories import TrainedModel, promoted, trained_model
from tests.helpers import wait_until
from tests.integration.test_serving import instances
from tests.integration.test_serving_runtime import _free_port
from tests.integration.test_trainer import publish
from tests.keys import SIGNING

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def workers(isolated: Isolation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TrainedModel]]:
    store = ArtifactStore((tmp_path_factory.mktemp("workers") / "store").as_uri())
    model = trained_model(store, seed=4, rows=400)
    port = _free_port()
    env = {
        **os.environ,
        "DRIFTLOOP_DATABASE_URL": isolated.database.url,
        "DRIFTLOOP_KAFKA_BOOTSTRAP": isolated.kafka.bootstrap,
        "DRIFTLOOP_KAFKA_TOPIC_PREFIX": isolated.kafka.topic_prefix,
        "DRIFTLOOP_ARTIFACTS_ROOT": store.root,
        "DRIFTLOOP_SIGNING_PUBLIC_KEYS": json.dumps(SIGNING.public_keys),
        "DRIFTLOOP_SERVING_PORT": str(port),
        "DRIFTLOOP_SERVING_WORKERS": "2",
        "DRIFTLOOP_SERVING_REGISTRY_URL": "http://127.0.0.1:9",  # none: champions come by event
        "DRIFTLOOP_SERVING_INSTANCE_ID": f"test-{isolated.suffix}",
    }
    supervisor = subprocess.Popen([sys.executable, "-m", "services.serving"], cwd=ROOT, env=env,
                                  preexec_fn=die_with_parent)  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", model
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(30)


def children(url: str) -> set[int]:
    """The processes listening on the port (the workers)."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


async def post(url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    """One request on a connection of its own (the kernel picks the worker per connection)."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url, json=body, headers=headers)


async def all_serve(url: str, headers: dict[str, str], version: int, tries: int = 12) -> bool:
    """Whether ``tries`` requests, each on a new connection, are all answered by ``version``."""
    for _ in range(tries):
        answer = await post(f"{url}/v1/models/churn/predict", {"instances": instances(1)}, headers)
        if answer.status_code != 200 or answer.json()["version"] != version:
            return False
    return True


async def test_two_workers_serve_the_promoted_version_and_accept_each_others_ids(
    isolated: Isolation, workers: tuple[str, TrainedModel]
) -> None:
    url, model = workers
    pool = await auth.connect(isolated.database, auth.AuthSettings())
    try:
        token = (await auth.issue(pool, "t", [auth.Role.PREDICTOR, auth.Role.PRODUCER], created_by="t")).token
    finally:
        await pool.close()
    headers = {"Authorization": f"Bearer {token}"}
    await wait_until(lambda: len(children(url)) == 2, timeout=180, message="both workers to listen")

    async def swapped(version: int) -> bool:
        # A worker reads promotions from the moment it listens for them: announce until both have it.
        await publish(isolated, promoted("churn", version, model, previous=version - 1 or None))
        return await all_serve(url, headers, version)

    await wait_until(lambda: swapped(1), timeout=180, message="both workers to serve v1")
    answers: list[dict[str, Any]] = []
    for _ in range(16):
        answer = await post(f"{url}/v1/models/churn/predict", {"instances": instances(2)}, headers)
        assert answer.status_code == 200
        answers.append(answer.json())
    ids = [p["request_id"] for a in answers for p in a["predictions"]]
    labels = [{"request_id": i, "label": "yes"} for i in ids]
    for start in range(0, len(labels), 4):  # fresh connections: feedback reaches either worker
        answer = await post(f"{url}/v1/feedback", {"model": "churn", "labels": labels[start : start + 4]}, headers)
        assert answer.status_code == 202, answer.text
        assert answer.json()["accepted"] == 4

    victim = min(children(url))
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: len(children(url) - {victim}) == 2, timeout=180, message="the killed worker's replacement")
    await wait_until(lambda: swapped(2), timeout=180, message="both workers, the new one too, to serve v2")
