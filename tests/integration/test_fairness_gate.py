"""The promotion gate's fairness rule on the real broker and PostgreSQL: a challenger better overall but
worse for one group is refused, and the audit says so."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from libs.common.artifacts import ArtifactStore
from services.registry.app import create_app
from services.registry.settings import RegistrySettings
from services.trainer.domain.fairness import classification_report
from tests.conftest import Isolation, serve
from tests.factories import CHURN
from tests.helpers import wait_until
from tests.integration.test_registry import trained, versions
from tests.integration.test_trainer import publish

pytestmark = pytest.mark.integration


def group_differences(unfair_share: float) -> dict[str, float]:
    """Real group differences: predictions right for everyone except a share of one region's rows."""
    rng = np.random.default_rng(3)
    region = pd.Series(rng.choice(["north", "south"], 400))
    truth = pd.Series(rng.choice(["no", "yes"], 400))
    wrong = (region == "south") & (rng.random(400) < unfair_share)
    predicted = np.where(wrong, "yes", truth)
    return classification_report(CHURN, truth, predicted, pd.DataFrame({"region": region}), 20).differences


async def test_a_challenger_better_overall_but_worse_for_one_group_is_refused(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    app, _ = create_app(isolated.settings(RegistrySettings, min_gain=0.01, fairness_tolerance=0.05))
    fair, unfair = group_differences(0.0), group_differences(0.6)
    assert unfair["demographic_parity_difference:region"] > fair["demographic_parity_difference:region"] + 0.05
    first = trained(store, 0.80).model_copy(update={"fairness": fair})
    # v2 beats v1 overall by 0.05 on the same holdout, but selects far more of one region: refused.
    biased = trained(store, 0.85, 0.80, 1).model_copy(update={"fairness": unfair, "champion_fairness": fair})
    # v3 beats v1 by as much and keeps the gaps: promoted.
    better = trained(store, 0.85, 0.80, 1).model_copy(update={"fairness": fair, "champion_fairness": fair})
    async with serve(app) as client:
        await publish(isolated, first, biased, better)
        await wait_until(lambda: _has(client, 3), message="three versions")
        listed = {v["version"]: v for v in await versions(client)}
        assert [(n, listed[n]["decision"], listed[n]["aliases"]) for n in (1, 2, 3)] == [
            (1, "promoted", []), (2, "rejected", []), (3, "promoted", ["champion"]),
        ]  # fmt: skip
        assert listed[2]["fairness"] == unfair
        assert listed[2]["champion_fairness"] == fair
        audit = (await client.get("/v1/models/churn/audit")).json()
        refusal = next(a for a in audit if a["action"] == "reject" and a["to_version"] == 2)
        assert refusal["actor"] == "policy"
        assert "accuracy 0.8500 beats champion v1 (0.8000)" in refusal["reason"]
        assert "but fairness is worse: " in refusal["reason"]
        assert "demographic_parity_difference:region 0.3" in refusal["reason"]
        assert "equalized_odds_difference:region 0.7000 vs champion 0.0000" in refusal["reason"]
        assert "> tolerance 0.0500" in refusal["reason"]
        promotion = next(a for a in audit if a["action"] == "promote" and a["to_version"] == 3)
        assert "fairness within tolerance" in promotion["reason"]


async def _has(client: Any, n: int) -> bool:
    return len(await versions(client)) >= n
