"""Canary moves through the registry API on the real stack: shares in events, audit, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common import topics
from libs.common.artifacts import ArtifactStore
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from tests.conftest import Isolation, serve
from tests.helpers import read_topic, wait_until
from tests.integration.test_registry import _has, _promoted, trained
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


async def aliases(client: Any) -> dict[str, int]:
    listing = (await client.get("/v1/models")).json()
    return listing[0]["aliases"] if listing else {}


async def test_canary_moves_carry_their_share_and_bad_ones_move_nothing(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    app, _ = create_app(isolated.settings(RegistrySettings, min_metric=0.6, canary_share=15))
    async with serve(app) as client:
        await publish(isolated, trained(store, 0.5))  # below the minimum: no champion
        await wait_until(lambda: _has(client, 1), message="v1")

        async def put(alias: str, body: dict[str, Any], status: int, problem: str) -> None:
            before = await aliases(client)
            answer = await client.put(f"/v1/models/churn/aliases/{alias}", json={"reason": "try it", **body})
            assert answer.status_code == status, answer.text
            assert answer.json()["error"]
            assert problem in answer.json()["message"], answer.json()
            assert await aliases(client) == before  # no alias moved

        await put("canary", {"version": 1, "share": 10}, 409, "no champion")
        await put("shadow", {"version": 1}, 409, "no champion")
        await publish(isolated, trained(store, 0.7), trained(store, 0.65, 0.7, 2))  # v2 champion, v3 rejected
        await wait_until(lambda: _has(client, 3), message="v3")
        assert await aliases(client) == {"champion": 2}
        await put("canary", {"version": 3, "share": 150}, 422, "share")
        await put("canary", {"version": 3, "share": -5}, 422, "share")
        await put("shadow", {"version": 2}, 409, "version 2 is the champion")
        await put("canary", {"version": 2, "share": 10}, 409, "version 2 is the champion")
        await put("canary", {"version": 99, "share": 10}, 404, "no version 99")
        await put("champion", {"version": 1, "share": 10}, 422, "share applies to the canary alias only")

        started = await client.put("/v1/models/churn/aliases/canary", json={"version": 3, "reason": "try v3"})
        assert started.status_code == 200, started.text
        resized = await client.put("/v1/models/churn/aliases/canary",
                                   json={"version": 3, "share": 40, "reason": "more", "judged": False})  # fmt: skip
        assert resized.status_code == 200
        shadow = await client.put("/v1/models/churn/aliases/shadow", json={"version": 1, "reason": "watch v1"})
        assert shadow.status_code == 200
        listing = (await client.get("/v1/models")).json()[0]
        assert listing["aliases"] == {"champion": 2, "canary": 3, "shadow": 1}
        assert (listing["canary"]["version"], listing["canary"]["share"], listing["canary"]["judged"]) == (3, 40, False)
        ended = await client.delete("/v1/models/churn/aliases/canary", params={"reason": "enough"})
        assert ended.json() == {"model": "churn", "alias": "canary", "from_version": 3}
        refused = await client.delete("/v1/models/churn/aliases/champion", params={"reason": "enough"})
        assert refused.status_code == 422
        listing = (await client.get("/v1/models")).json()[0]
        assert listing["aliases"] == {"champion": 2, "shadow": 1}
        assert listing["canary"] is None
        audit = (await client.get("/v1/models/churn/audit")).json()
        assert [(a["action"], a["alias"], a["from_version"], a["to_version"]) for a in audit[:4]] == [
            ("rollback", "canary", 3, None), ("promote", "shadow", None, 1), ("share", "canary", 3, 3),
            ("promote", "canary", None, 3),
        ]  # fmt: skip
        assert "share 15%" in audit[3]["reason"]
        assert "share 40%, A/B" in audit[2]["reason"]
        # Read while the registry runs: its outbox relays the moves after they commit, and a move not yet
        # relayed when it stops waits in the outbox for the next start.
        records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.MODEL_PROMOTED), expect=5)
    moves = [(e.move.alias, e.move.to_version, e.share, e.judged) for e in map(_promoted, records)]
    assert moves == [("champion", 2, None, None), ("canary", 3, 15, True), ("canary", 3, 40, False),
                     ("shadow", 1, None, None), ("canary", None, None, None)]  # fmt: skip
