"""Record validation rules (shared by ingest and serving) and body parsing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from libs.common.errors import BadRequest
from libs.common.schema import DatasetSchema
from libs.common.validation import validate_row
from services.ingest.domain.parsing import UnsupportedMediaType, parse_body
from services.ingest.domain.validation import validate_records

SCHEMA = DatasetSchema.model_validate(
    {
        "features": [
            {"name": "x", "dtype": "numeric", "min": 0, "max": 10},
            {"name": "n", "dtype": "integer", "nullable": True},
            {"name": "c", "dtype": "categorical", "categories": ["a", "b"]},
            {"name": "o", "dtype": "categorical", "categories": ["a"], "closed": False},
            {"name": "f", "dtype": "boolean", "nullable": True},
        ],
        "target": {"name": "y", "dtype": "numeric"},
        "task": "regression",
    }
)


def problems(record: dict[str, Any], *, from_text: bool = False) -> list[tuple[str, str]]:
    return validate_row(SCHEMA, record, from_text=from_text)[1]


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"x": 5, "n": 1, "c": "a", "o": "zzz", "f": True, "y": 1.5}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"x": -1}, "x", "below the minimum"),
        ({"x": 11}, "x", "above the maximum"),
        ({"x": float("nan")}, "x", "NaN where the column is not nullable"),
        ({"x": float("inf")}, "x", "infinite"),
        ({"x": "5"}, "x", "got a string"),
        ({"x": True}, "x", "boolean"),
        ({"x": ...}, "x", "missing column"),
        ({"n": 1.5}, "n", "not an integer"),
        ({"c": "z"}, "c", "unknown category 'z'"),
        ({"c": 3}, "c", "expected a category"),
        ({"f": "yes"}, "f", "expected a boolean"),
        ({"y": None}, "y", "missing value"),
    ],
)
def test_each_rule_names_the_field(changes: dict[str, Any], field: str, message: str) -> None:
    found = problems(row(**changes))
    assert found, f"expected a problem with {field}"
    assert found[0][0] == field
    assert message in found[0][1]


def test_valid_rows_are_coerced() -> None:
    coerced, found = validate_row(SCHEMA, row(n=3.0, o="open-ended"), from_text=False)
    assert found == []
    assert coerced["n"] == 3
    assert isinstance(coerced["n"], int)
    assert coerced["o"] == "open-ended"  # open categories take new values


def test_nullable_columns_may_be_absent_or_null() -> None:
    assert problems(row(n=None, f=...)) == []


def test_text_values_are_parsed_only_when_they_came_as_text() -> None:
    text = {"x": "5.5", "n": "", "c": "b", "o": "a", "f": "true", "y": "2"}
    coerced, found = validate_row(SCHEMA, text, from_text=True)
    assert found == []
    assert coerced == {"x": 5.5, "n": None, "c": "b", "o": "a", "f": True, "y": 2.0}
    assert problems({**text, "x": "five"}, from_text=True)[0] == ("x", "'five' is not a number")


def test_serving_does_not_need_the_target() -> None:
    features = row(y=...)
    assert validate_row(SCHEMA, features, from_text=False, require_target=False)[1] == []


def test_batches_keep_every_rejection_with_its_row() -> None:
    result = validate_records(SCHEMA, [row(), row(x=99), None, row(), row(x=1)], unreadable={2: "garbled"})
    assert len(result.accepted) == 3  # identical rows are data: repeated observations are normal
    assert [(r.row, r.field) for r in result.rejected] == [(1, "x"), (2, None)]
    assert result.rejected[1].reason == "garbled"


def test_duplicates_are_decided_by_the_declared_key() -> None:
    keyed = SCHEMA.model_copy(update={"key": "id"})
    records: list[dict[str, Any] | None] = [
        {**row(), "id": 1},
        {**row(), "id": 2},
        {**row(), "id": 1},
        row(),
        {**row(), "id": ""},
    ]
    result = validate_records(keyed, records)
    assert len(result.accepted) == 2
    assert [(r.row, r.field, r.reason) for r in result.rejected] == [
        (2, "id", "duplicate key '1' of row 0"),
        (3, "id", "id: missing record key"),
        (4, "id", "id: missing record key"),
    ]
    assert [(i, k) for i, k, _ in result.keys] == [(0, "1"), (1, "2")]


def test_the_key_is_a_column_of_its_own() -> None:
    with pytest.raises(ValidationError, match="column of its own"):
        DatasetSchema.model_validate({**SCHEMA.model_dump(mode="json"), "key": "x"})


def test_bodies_in_three_formats() -> None:
    assert parse_body(b'[{"x": 1}]', "application/json").rows == [{"x": 1}]
    assert parse_body(b'{"records": [{"x": 1}]}', "application/json").rows == [{"x": 1}]
    nd = parse_body(b'{"x": 1}\n\nnot json\n[1]\n', "application/x-ndjson")
    assert nd.rows == [{"x": 1}, None, None]
    assert "not valid JSON" in nd.unreadable[1]
    assert "not a JSON object" in nd.unreadable[2]
    csv = parse_body(b"x,c\n1,a\n2,b,extra\n", "text/csv; charset=utf-8")
    assert csv.from_text
    assert csv.rows[0] == {"x": "1", "c": "a"}
    assert csv.rows[1] is None


@pytest.mark.parametrize(
    ("body", "media", "error"),
    [(b"  ", "application/json", BadRequest), (b"[]", "application/json", BadRequest),
     (b"x", "application/xml", UnsupportedMediaType), (b"x\n", "text/csv", BadRequest),
     (b"\xff", "application/json", BadRequest)],
)  # fmt: skip
def test_unreadable_bodies_are_refused(body: bytes, media: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_body(body, media)
