"""Fairness: the group metrics the trainer computes and the promotion gate's rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from libs.common.schema import DatasetSchema
from services.registry.domain.promotion import Candidate, PromotionConfig, decide, fairness_regressions
from services.trainer.domain.fairness import classification_report, regression_report

DP = "demographic_parity_difference:sex"
EO = "equalized_odds_difference:sex"


def candidate(fairness: dict[str, float] | None, champion: dict[str, float] | None) -> Candidate:
    return Candidate("accuracy", {"accuracy": 0.90}, {"accuracy": 0.80}, 3, fairness, champion)


def test_a_better_challenger_that_widens_a_group_gap_beyond_the_tolerance_is_refused() -> None:
    config = PromotionConfig(fairness_tolerance=0.05)
    decision = decide(candidate({DP: 0.30, EO: 0.10}, {DP: 0.05, EO: 0.10}), 3, config)
    assert not decision.promote
    assert decision.outcome == "rejected"
    assert "beats champion v3" in decision.reason
    assert "fairness is worse" in decision.reason
    assert f"{DP} 0.3000 vs champion 0.0500 (+0.2500 > tolerance 0.0500)" in decision.reason
    assert EO not in decision.reason


def test_a_gap_within_the_tolerance_or_narrower_does_not_block() -> None:
    config = PromotionConfig(fairness_tolerance=0.05)
    within = decide(candidate({DP: 0.09, EO: 0.01}, {DP: 0.05, EO: 0.20}), 3, config)
    assert within.promote
    assert "fairness within tolerance on 2 group differences" in within.reason
    assert not decide(candidate({DP: 0.09}, {DP: 0.05}), 3, PromotionConfig(fairness_tolerance=0.0)).promote


def test_differences_the_champion_was_not_measured_on_are_not_compared() -> None:
    decision = decide(candidate({DP: 0.9}, None), 3, PromotionConfig())
    assert decision.promote
    assert "fairness not compared" in decision.reason
    assert fairness_regressions(candidate({DP: 0.9}, {"other:sex": 0.0}), 0.0) == []


def test_fairness_never_rescues_a_challenger_that_does_not_beat_the_champion() -> None:
    weak = Candidate("accuracy", {"accuracy": 0.80}, {"accuracy": 0.80}, 3, {DP: 0.0}, {DP: 0.5})
    assert not decide(weak, 3, PromotionConfig()).promote


SCHEMA = DatasetSchema.model_validate(
    {
        "features": [{"name": "x", "dtype": "numeric"}],
        "attributes": [{"name": "sex", "dtype": "categorical", "nullable": True}],
        "sensitive": ["sex"],
        "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
        "task": "classification",
    }
)


def test_a_model_that_always_selects_one_group_shows_the_gaps() -> None:
    rng = np.random.default_rng(0)
    sex = pd.Series(rng.choice(["f", "m"], 1000))
    y = pd.Series(rng.choice(["no", "yes"], 1000))
    fair = classification_report(SCHEMA, y, y.to_numpy(), pd.DataFrame({"sex": sex}), 20)
    assert fair.differences[EO] == 0.0
    assert fair.differences["accuracy_difference:sex"] == 0.0
    biased = classification_report(SCHEMA, y, np.where(sex == "f", "yes", y), pd.DataFrame({"sex": sex}), 20)
    assert biased.positive_class == "yes"
    f = next(row for row in biased.groups["sex"] if row["group"] == "f")
    assert f["selection_rate"] == 1.0
    assert f["false_positive_rate"] == 1.0
    assert biased.differences[EO] == 1.0  # f: every negative selected, m: none
    assert biased.differences[DP] == pytest.approx(1 - (y[sex == "m"] == "yes").mean())


def test_small_groups_and_missing_values() -> None:
    sex = pd.Series(["f"] * 50 + ["m"] * 50 + [None] * 5)
    y = pd.Series(["yes"] * 105)
    predicted = np.array(["yes"] * 100 + ["no"] * 5)
    report = classification_report(SCHEMA, y, predicted, pd.DataFrame({"sex": sex}), 20)
    missing = next(row for row in report.groups["sex"] if row["group"] == "(missing)")
    assert missing["count"] == 5
    assert missing["accuracy"] == 0.0
    assert report.differences["accuracy_difference:sex"] == 0.0  # the 5-row group is shown, not compared


def test_regression_reports_the_mae_gap() -> None:
    sex = pd.Series(["f"] * 30 + ["m"] * 30)
    y = pd.Series(np.zeros(60))
    predicted = np.array([2.0] * 30 + [0.5] * 30)
    assert regression_report(y, predicted, pd.DataFrame({"sex": sex}), 20).differences == {"mae_difference:sex": 1.5}


def test_a_sensitive_feature_must_be_a_column_of_the_schema() -> None:
    body = SCHEMA.model_dump(mode="json") | {"sensitive": ["race"]}
    with pytest.raises(ValidationError, match=r"unknown: \['race'\]"):
        DatasetSchema.model_validate(body)
    assert DatasetSchema.model_validate(body | {"sensitive": ["x"]}).sensitive == ["x"]
    with pytest.raises(ValidationError, match="unknown"):
        DatasetSchema.model_validate(body | {"sensitive": ["y"]})
