"""ONNX export of trained pipelines: the graph contract serving relies on, and the parity check."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from libs.common.frames import MISSING_CATEGORY, features_frame
from libs.common.schema import DatasetSchema
from services.trainer.domain.export import check_parity, convert, export, feeds
from services.trainer.domain.training import TrainingConfig, train

FAST = TrainingConfig(n_iter=1, time_budget_s=600, n_jobs=1, max_iter=60)


def mixed(
    rows: int, task: str = "classification", classes: int = 2, seed: int = 0
) -> tuple[DatasetSchema, pd.DataFrame]:
    """Numeric, integer, boolean and categorical features, with missing values in a numeric and a categorical."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "amount": rng.normal(50, 20, rows),
        "visits": rng.poisson(3, rows).astype(float),
        "member": rng.integers(0, 2, rows).astype(float),
        "plan": rng.choice(["basic", "plus", "pro"], rows).astype(object),
        "region": rng.choice(["n", "s", "e", "w"], rows).astype(object),
    })  # fmt: skip
    score = (frame.amount - 50) / 20 + (frame.plan == "pro") - 0.3 * frame.visits + frame.member
    frame.loc[rng.random(rows) < 0.1, "amount"] = np.nan
    frame.loc[rng.random(rows) < 0.1, "plan"] = None
    if task == "regression":
        target: dict[str, str] = {"name": "y", "dtype": "numeric"}
        frame["y"] = 1000 * score + rng.normal(0, 100, rows)
    else:
        target = {"name": "y", "dtype": "categorical"}
        edges = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
        frame["y"] = [f"c{k}" for k in np.searchsorted(edges, score + rng.normal(0, 0.3, rows))]
    schema = DatasetSchema.model_validate({
        "features": [
            {"name": "amount", "dtype": "numeric", "nullable": True},
            {"name": "visits", "dtype": "integer"},
            {"name": "member", "dtype": "boolean"},
            {"name": "plan", "dtype": "categorical", "nullable": True},
            {"name": "region", "dtype": "categorical"},
        ],
        "target": target,
        "task": task,
    })  # fmt: skip
    return schema, frame


@pytest.mark.parametrize("classes", [2, 4])
def test_a_classifier_exports_to_the_contract_with_parity(classes: int) -> None:
    schema, frame = mixed(1000, classes=classes)
    result = train(schema, frame, FAST)
    exported = export(schema, result.pipeline, result.holdout_frame)
    assert exported.parity, exported.detail
    assert exported.detail.startswith("labels equal on 200 holdout rows, max |Δp|")
    assert exported.onnx is not None

    model = onnx.load_from_string(exported.onnx)
    assert json.loads({p.key: p.value for p in model.metadata_props}["classes"]) == list(result.pipeline.classes_)
    session = ort.InferenceSession(exported.onnx, providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape[1]) for i in session.get_inputs()] == [
        ("amount", "tensor(float)", 1), ("visits", "tensor(float)", 1), ("member", "tensor(float)", 1),
        ("plan", "tensor(string)", 1), ("region", "tensor(string)", 1),
    ]  # fmt: skip
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    # A missing category is fed as the marker, a missing number as NaN: same answer as the pipeline's.
    rows = [{"amount": None, "visits": 2, "member": 1, "plan": None, "region": "n"}]
    label, probabilities = session.run(None, feeds(schema, features_frame(schema, rows)))
    assert feeds(schema, features_frame(schema, rows))["plan"][0, 0] == MISSING_CATEGORY
    assert label[0] == result.pipeline.predict(features_frame(schema, rows))[0]
    assert probabilities.shape == (1, classes)
    np.testing.assert_allclose(probabilities, result.pipeline.predict_proba(features_frame(schema, rows)), atol=1e-4)


def test_a_regressor_exports_with_parity_relative_to_the_output_size() -> None:
    schema, frame = mixed(1000, task="regression")
    result = train(schema, frame, FAST)
    exported = export(schema, result.pipeline, result.holdout_frame)
    assert exported.parity, exported.detail
    assert "(relative) on 200 holdout rows" in exported.detail
    assert exported.onnx is not None
    session = ort.InferenceSession(exported.onnx, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["variable"]


def test_an_all_categorical_schema_exports() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.choice(["x", "y", "z"], 600), "b": rng.choice(["p", "q"], 600)})
    frame["y"] = np.where((frame.a == "x") ^ (rng.random(600) < 0.1), "yes", "no")
    schema = DatasetSchema.model_validate({
        "features": [{"name": "a", "dtype": "categorical"}, {"name": "b", "dtype": "categorical"}],
        "target": {"name": "y", "dtype": "categorical"},
        "task": "classification",
    })  # fmt: skip
    result = train(schema, frame, FAST)
    assert export(schema, result.pipeline, result.holdout_frame).parity


def test_an_unconvertible_pipeline_gives_no_parity_and_the_reason() -> None:
    schema, frame = mixed(400)
    x = features_frame(schema, frame)[["amount", "visits"]].fillna(0)
    pipeline = Pipeline([
        ("preprocess", ColumnTransformer([("squash", FunctionTransformer(np.tanh), ["amount", "visits"])])),
        ("model", HistGradientBoostingClassifier(max_iter=5)),
    ]).fit(x, frame["y"])  # fmt: skip
    exported = export(schema, pipeline, x)
    assert not exported.parity
    assert exported.onnx is None
    assert exported.detail.startswith("not convertible: ")
    assert "FunctionTransformer" in exported.detail


def test_parity_fails_when_the_onnx_model_answers_differently() -> None:
    schema, frame = mixed(1000)
    ours = train(schema, frame, FAST)
    other = train(schema, mixed(1000, seed=9)[1], TrainingConfig(n_iter=1, n_jobs=1, max_iter=5))
    held, detail = check_parity(schema, ours.pipeline, convert(schema, other.pipeline), ours.holdout_frame)
    assert not held
    assert "labels differ on" in detail or "max |Δp|" in detail
