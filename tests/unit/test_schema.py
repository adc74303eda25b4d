"""Dataset schema declarations: what is refused and why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.common.schema import DatasetSchema, DType, FeatureSpec, Task


def test_a_valid_schema_finds_its_features() -> None:
    schema = DatasetSchema(
        features=[FeatureSpec(name="x", dtype=DType.NUMERIC), FeatureSpec(name="c", dtype=DType.CATEGORICAL)],
        target=FeatureSpec(name="y", dtype=DType.NUMERIC),
        task=Task.REGRESSION,
    )
    assert schema.feature("c") is not None
    assert schema.feature("nope") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "dtype": "categorical", "min": 0}, "min/max apply to numeric"),
        ({"name": "x", "dtype": "numeric", "min": 5, "max": 1}, "exceeds max"),
        ({"name": "x", "dtype": "numeric", "categories": ["a"]}, "categories apply to categorical"),
        ({"name": "1bad", "dtype": "numeric"}, "pattern"),
        ({"name": "x", "dtype": "complex"}, "Input should be"),
    ],
)
def test_inconsistent_features_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FeatureSpec.model_validate(kwargs)


def test_duplicate_columns_and_categorical_regression_are_refused() -> None:
    x = FeatureSpec(name="x", dtype=DType.NUMERIC)
    with pytest.raises(ValidationError, match="repeated"):
        DatasetSchema(features=[x, x], target=FeatureSpec(name="y", dtype=DType.NUMERIC), task=Task.REGRESSION)
    with pytest.raises(ValidationError, match="regression target must be numeric"):
        DatasetSchema(features=[x], target=FeatureSpec(name="y", dtype=DType.CATEGORICAL), task=Task.REGRESSION)
