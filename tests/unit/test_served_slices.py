"""What a request served, sliced for the prediction log, logs exactly the rows of the whole."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from cli.churn_stream import FEATURES, ChurnStream
from services.serving.domain.features import CompiledSchema
from services.serving.domain.models import Inference
from services.serving.domain.predictions import Served, log_columns, probability_dicts
from tests.factories import CHURN


def test_the_slices_of_a_request_log_the_same_rows_as_the_whole() -> None:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=3).batch(7)]
    columns = CompiledSchema(CHURN).from_instances(rows)
    probabilities = np.linspace(0, 1, 7)
    inference = Inference(np.array(["no", "yes"] * 3 + ["no"]), np.column_stack([1 - probabilities, probabilities]))
    served = Served([f"{i:032d}" for i in range(7)], columns, inference, ["no", "yes"], list(CHURN.features),
                    datetime(2026, 1, 2, tzinfo=UTC))  # fmt: skip
    assert log_columns([served.slice(start, start + 3) for start in range(0, 7, 3)]) == {
        **log_columns([served]),
        "at": [served.at] * 7,
    }
    assert [served.slice(s, s + 3).rows for s in range(0, 7, 3)] == [3, 3, 1]


def test_probability_dicts_name_every_class_in_order() -> None:
    two = probability_dicts(np.array([[0.25, 0.75]]), ["a", "b"], 1)
    three = probability_dicts(
        np.array([[0.1, 0.2, 0.7], [0.3333333333, 0.3333333333, 0.3333333334]]), ["x", "y", "z"], 2
    )
    assert two == [{"a": 0.25, "b": 0.75}]
    assert three == [{"x": 0.1, "y": 0.2, "z": 0.7}, {"x": 0.333333, "y": 0.333333, "z": 0.333333}]
    assert probability_dicts(None, None, 2) == [None, None]
