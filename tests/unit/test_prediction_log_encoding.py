"""The prediction log publishes columns (predictions.logged's columnar form): consumers must read them
as the records ingest's rules would have given, row for row, whatever the features' types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from cli.churn_stream import FEATURES, ChurnStream
from libs.common.errors import InvalidEvent
from libs.common.events import PredictionRecord, PredictionsLogged, parse_event
from libs.common.schema import DatasetSchema
from services.serving.adapters.prediction_log import encode
from services.serving.domain.features import CompiledSchema, row_values
from services.serving.domain.models import Inference
from services.serving.domain.predictions import Served, log_columns
from tests.factories import CHURN

MIXED = DatasetSchema.model_validate({
    "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]}, "task": "classification",
    "features": [
        {"name": "x", "dtype": "numeric", "nullable": True},
        {"name": "n", "dtype": "integer", "nullable": True},
        {"name": "b", "dtype": "boolean", "nullable": True},
        {"name": "c", "dtype": "categorical", "categories": ["p", "q"], "nullable": True},
    ],
})  # fmt: skip


def served(schema: DatasetSchema, rows: list[dict[str, Any]], first_id: int, at: datetime) -> Served:
    n = len(rows)
    probabilities = np.linspace(0.0, 1.0, n) / 3
    matrix = np.column_stack([1 - probabilities, probabilities])
    inference = Inference(np.array(["no", "yes"] * n)[:n], matrix)
    columns = CompiledSchema(schema).from_instances(rows)
    return Served(
        [f"{first_id + i:032d}" for i in range(n)], columns, inference, ["no", "yes"], list(schema.features), at
    )


def expected(part: Served) -> list[dict[str, Any]]:
    """The records value by value, as the log built them before it published columns."""
    columns = [row_values(f, part.columns.arrays[f.name]) for f in part.features]
    names = [f.name for f in part.features]
    assert part.inference.probabilities is not None
    probabilities = np.round(part.inference.probabilities, 6).tolist()
    return [
        PredictionRecord(request_id=i, features=dict(zip(names, row, strict=True)), prediction=label,
                         probabilities=dict(zip(part.classes or [], p, strict=True)), at=part.at).model_dump()
        for i, row, label, p in zip(part.request_ids, zip(*columns, strict=True), part.inference.labels.tolist(),
                                    probabilities, strict=True)
    ]  # fmt: skip


def test_an_encoded_batch_parses_as_the_event_with_every_record() -> None:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=5).batch(12)]
    first, second = (datetime(2026, 1, 2, 3, 4, s, tzinfo=UTC) for s in (5, 6))
    parts = [served(CHURN, rows[:9], 0, first), served(CHURN, rows[9:], 9, second)]
    encoded = encode("churn", 3, log_columns(parts), 12)
    event = parse_event(encoded.payload)
    assert isinstance(event, PredictionsLogged)
    assert (str(event.event_id), event.model, event.version, encoded.rows) == (encoded.event_id, "churn", 3, 12)
    assert [r.model_dump() for r in event.records] == expected(parts[0]) + expected(parts[1])
    assert [r.at for r in event.records] == [first] * 9 + [second] * 3


def test_missing_integer_boolean_and_categorical_values_come_back_as_ingest_stores_them() -> None:
    rows: list[dict[str, Any]] = [
        {"x": 1.5, "n": 7, "b": True, "c": "p"}, {"x": None, "n": None, "b": None}, {"n": 2**60, "b": False},
    ]  # fmt: skip
    plain = [{"x": 0.25, "n": -3, "b": False, "c": "q"}] * 10  # no missing value: the vectorised conversions
    at = datetime(2026, 1, 2, tzinfo=UTC)
    parts = [served(MIXED, rows, 0, at), served(MIXED, plain, 3, at)]
    event = parse_event(encode("mixed", 1, log_columns(parts), 13).payload)
    assert isinstance(event, PredictionsLogged)
    features = [r.features for r in event.records]
    assert features[:3] == [{"x": 1.5, "n": 7, "b": True, "c": "p"}, {"x": None, "n": None, "b": None, "c": None},
                            {"x": None, "n": 2**60, "b": False, "c": None}]  # fmt: skip
    assert features[3:] == [{"x": 0.25, "n": -3, "b": False, "c": "q"}] * 10
    assert type(features[3]["n"]) is int
    assert type(features[3]["b"]) is bool


def test_a_column_of_the_wrong_length_is_refused() -> None:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=5).batch(3)]
    columns = log_columns([served(CHURN, rows, 0, datetime(2026, 1, 2, tzinfo=UTC))])
    columns["features"][FEATURES[0]] = columns["features"][FEATURES[0]][:2]
    with pytest.raises(InvalidEvent, match=f"columns.features.{FEATURES[0]}: expected a list of 3 values"):
        parse_event(encode("churn", 1, columns, 3).payload)


def test_a_version_1_event_with_records_still_parses() -> None:
    event = PredictionsLogged(producer="t", model="churn", version=1, records=[
        PredictionRecord(request_id="r", features={"a": 1}, prediction="no")])  # fmt: skip
    payload = event.model_dump(mode="json") | {"schema_version": 1}
    parsed = parse_event(payload)
    assert isinstance(parsed, PredictionsLogged)
    assert parsed.records == event.records
