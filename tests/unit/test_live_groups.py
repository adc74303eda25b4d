"""Live group metrics: which group a labelled prediction belongs to, and the figures per group, checked
against hand-computed values; the same group names as the trainer's holdout figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from libs.common.errors import ValidationFailed
from libs.common.fairness import group_frame
from libs.common.groups import MISSING_GROUP, UNKNOWN_GROUP
from libs.common.schema import DatasetSchema
from services.monitor.adapters.group_gauges import GroupGauges
from services.monitor.domain.groups import Labelled, input_groups, live_groups, row_groups
from services.serving.domain.feedback import check_attributes

SCHEMA = DatasetSchema.model_validate({
    "features": [
        {"name": "x", "dtype": "numeric"},
        {"name": "region", "dtype": "categorical", "categories": ["north", "south"], "nullable": True},
        {"name": "age", "dtype": "integer", "nullable": True},
    ],
    "attributes": [{"name": "sex", "dtype": "categorical", "nullable": True}],
    "sensitive": ["region", "sex"],
    "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
})  # fmt: skip

# (prediction, label, sex, region). f: 3 of 4 right, 3 selected, TPR 2/2, FPR 1/2;
# m: 3 of 4 right, 1 selected, TPR 1/2, FPR 0/2; two rows whose sex never arrived.
ROWS = [
    ("yes", "yes", "f", "north"), ("yes", "no", "f", "north"), ("no", "no", "f", "north"), ("yes", "yes", "f", "north"),
    ("no", "yes", "m", "south"), ("no", "no", "m", "south"), ("yes", "yes", "m", "south"), ("no", "no", "m", "south"),
    ("yes", "no", None, "north"), ("yes", "no", None, "north"),
]  # fmt: skip


def labelled() -> list[Labelled]:
    return [
        Labelled(p, y, row_groups(SCHEMA, input_groups(SCHEMA, {"x": 1.0, "region": r}),
                                  {"sex": sex} if sex else None))
        for p, y, sex, r in ROWS
    ]  # fmt: skip


def test_live_group_figures_match_hand_computed_values() -> None:
    live = live_groups(SCHEMA, 3, labelled(), min_group_rows=4)
    assert (live.version, live.labels, live.positive_class) == (3, 10, "yes")
    sex = next(f for f in live.features if f.feature == "sex")
    assert (sex.source, sex.unknown) == ("attribute", 2)
    by_group = {g.group: g for g in sex.groups}
    assert [g.group for g in sex.groups] == ["f", "m", UNKNOWN_GROUP]  # largest first
    f, m = by_group["f"].metrics, by_group["m"].metrics
    assert (f["accuracy"], f["selection_rate"], f["true_positive_rate"], f["false_positive_rate"]) == (
        0.75, 0.75, 1.0, 0.5)  # fmt: skip
    assert (m["accuracy"], m["selection_rate"], m["true_positive_rate"], m["false_positive_rate"]) == (
        0.75, 0.25, 0.5, 0.0)  # fmt: skip
    assert not by_group[UNKNOWN_GROUP].compared  # shown with its count, never compared
    assert by_group[UNKNOWN_GROUP].count == 2
    assert sex.differences == {
        "demographic_parity_difference": 0.5, "equalized_odds_difference": 0.5, "accuracy_difference": 0.0,
    }  # fmt: skip

    # region is a model input: north = f's four rows + the two unknown-sex rows.
    region = next(f for f in live.features if f.feature == "region")
    assert (region.source, region.unknown) == ("input", 0)
    north = next(g for g in region.groups if g.group == "north").metrics
    assert north["accuracy"] == 0.5
    assert north["selection_rate"] == pytest.approx(5 / 6)
    assert north["false_positive_rate"] == 0.75
    assert region.differences["demographic_parity_difference"] == pytest.approx(5 / 6 - 1 / 4)
    assert region.differences["equalized_odds_difference"] == 0.75
    assert region.differences["accuracy_difference"] == 0.25
    assert live.differences["demographic_parity_difference:region"] == pytest.approx(5 / 6 - 1 / 4)


def test_small_groups_are_shown_but_not_compared() -> None:
    live = live_groups(SCHEMA, 1, labelled(), min_group_rows=5)  # f and m have 4 rows each
    sex = next(f for f in live.features if f.feature == "sex")
    assert not any(g.compared for g in sex.groups)
    assert sex.differences["demographic_parity_difference"] == 0.0


def test_where_each_group_comes_from() -> None:
    logged = input_groups(SCHEMA, {"x": 1.0, "region": None})
    assert logged == {"region": MISSING_GROUP}  # a null input is "missing", as on the holdout
    assert row_groups(SCHEMA, logged, {"sex": "f"}) == {"region": MISSING_GROUP, "sex": "f"}
    assert row_groups(SCHEMA, logged, None) == {"region": MISSING_GROUP, "sex": UNKNOWN_GROUP}
    assert row_groups(SCHEMA, logged, {"sex": None}) == {"region": MISSING_GROUP, "sex": MISSING_GROUP}
    # an input absent from the logged features is unknown, unless the label carried it
    assert row_groups(SCHEMA, input_groups(SCHEMA, {"x": 1.0}), None)["region"] == UNKNOWN_GROUP
    assert row_groups(SCHEMA, input_groups(SCHEMA, {"x": 1.0}), {"region": "south"})["region"] == "south"
    no_sensitive = SCHEMA.model_copy(update={"sensitive": []})
    assert input_groups(no_sensitive, {"region": "north"}) is None
    assert live_groups(no_sensitive, 1, labelled(), 1).features == []


def test_live_group_names_are_the_holdout_group_names() -> None:
    schema = SCHEMA.model_copy(update={"sensitive": ["age", "region"]})
    holdout = pd.DataFrame({"age": [30.0, np.nan, 41.5], "region": ["north", None, "south"]})  # as Parquet reads
    live = [input_groups(schema, {"age": a, "region": r}) for a, r in ((30, "north"), (None, None), (41.5, "south"))]
    expected = group_frame(schema, holdout).to_dict("records")
    assert live == expected
    assert expected[0] == {"age": "30", "region": "north"}


def test_regression_groups_mae_and_rmse() -> None:
    schema = DatasetSchema.model_validate({
        "features": [{"name": "x", "dtype": "numeric"}],
        "attributes": [{"name": "sex", "dtype": "categorical"}],
        "sensitive": ["sex"],
        "target": {"name": "y", "dtype": "numeric"},
        "task": "regression",
    })  # fmt: skip
    rows = [Labelled(p, y, {"sex": s}) for p, y, s in ((1, 0, "a"), (3, 0, "a"), (5, 5, "b"), (2, 2, "b"))]
    rows.append(Labelled("not a number", 1, {"sex": "b"}))  # cannot be scored: left out
    live = live_groups(schema, 1, rows, min_group_rows=2)
    a = next(g for g in live.features[0].groups if g.group == "a").metrics
    assert a["mae"] == 2.0
    assert a["rmse"] == pytest.approx(math.sqrt(5))
    assert live.labels == 5
    assert live.differences == {"mae_difference:sex": 2.0}


def test_gauges_keep_only_the_largest_groups_and_drop_stale_ones() -> None:
    registry = CollectorRegistry()
    gauges = GroupGauges(registry, largest=1)
    gauges.record("churn", live_groups(SCHEMA, 1, labelled(), 4))
    text = _metrics(registry)
    assert 'driftloop_live_group_labels{feature="region",group="north",model="churn"} 6.0' in text
    assert 'group="south"' not in text  # only the largest group per feature
    assert 'driftloop_live_fairness_difference{difference="demographic_parity_difference",feature="sex",' in text
    rows = [r for r in labelled() if r.groups["region"] == "south"]
    gauges.record("churn", live_groups(SCHEMA, 1, rows, 4))
    text = _metrics(registry)
    assert 'group="north"' not in text
    assert 'driftloop_live_group_labels{feature="region",group="south",model="churn"} 4.0' in text


def _metrics(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_feedback_attributes_must_be_declared_sensitive_and_valid() -> None:
    check_attributes(SCHEMA, 0, {"sex": "f", "region": None})
    check_attributes(SCHEMA, 0, None)
    with pytest.raises(ValidationFailed, match=r"labels\.2\.attributes\.age: not a sensitive column"):
        check_attributes(SCHEMA, 2, {"age": 30})
    with pytest.raises(ValidationFailed, match=r"labels\.0\.attributes\.region: unknown category 'east'"):
        check_attributes(SCHEMA, 0, {"region": "east"})
