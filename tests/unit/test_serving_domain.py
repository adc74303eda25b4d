"""Serving's pure parts: compiled validation, micro-batching, V2 decoding."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.schema import DatasetSchema
from libs.common.validation import validate_row
from services.serving.domain import v2
from services.serving.domain.batching import MicroBatcher
from services.serving.domain.features import (
    ABSENT,
    FEW_ROWS,
    Columns,
    CompiledSchema,
    InvalidInstance,
    row_values,
)

SCHEMA = DatasetSchema.model_validate(
    {
        "features": [
            {"name": "x", "dtype": "numeric", "min": 0, "max": 10},
            {"name": "n", "dtype": "integer", "nullable": True},
            {"name": "b", "dtype": "boolean", "nullable": True},
            {"name": "c", "dtype": "categorical", "categories": ["a", "b"]},
            {"name": "o", "dtype": "categorical", "closed": False, "nullable": True},
        ],
        "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
        "task": "classification",
    }
)
COMPILED = CompiledSchema(SCHEMA)


def test_valid_rows_become_typed_columns_and_back() -> None:
    rows = [{"x": 1.5, "n": 3, "b": True, "c": "a", "o": "free"}, {"x": 0, "c": "b", "extra": 1}]
    columns = COMPILED.from_instances(rows)
    assert columns.rows == 2
    assert columns.arrays["x"].dtype == np.float64
    assert np.isnan(columns.arrays["n"][1])
    assert list(columns.arrays["c"]) == ["a", "b"]
    assert row_values(SCHEMA.features[1], columns.arrays["n"]) == [3, None]
    assert row_values(SCHEMA.features[2], columns.arrays["b"]) == [True, None]
    assert row_values(SCHEMA.features[4], columns.arrays["o"]) == ["free", None]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"x": 11}, "instance 1: x: 11.0 is above the maximum 10.0"),
        ({"x": -1.0}, "instance 1: x: -1.0 is below the minimum 0.0"),
        ({"x": "3"}, "instance 1: x: expected a number, got a string"),
        ({"x": True}, "instance 1: x: expected a number, got a boolean"),
        ({"x": None}, "instance 1: x: missing value where the column is not nullable"),
        ({"x": float("nan")}, "instance 1: x: NaN where the column is not nullable"),
        ({"x": float("inf")}, "instance 1: x: infinite value"),
        ({"n": 1.5}, "instance 1: n: 1.5 is not an integer"),
        ({"b": 1}, "instance 1: b: expected a boolean, got 1"),
        ({"c": "z"}, "instance 1: c: unknown category 'z' (allowed: a, b)"),
        ({"c": 3}, "instance 1: c: expected a category (string), got int"),
    ],
)
def test_the_first_bad_instance_and_field_are_named(bad: dict[str, Any], message: str) -> None:
    good = {"x": 1.0, "c": "a"}
    with pytest.raises(InvalidInstance) as caught:
        COMPILED.from_instances([good, {**good, **bad}, {**good, "x": 99}])
    assert str(caught.value) == message


def test_an_absent_feature_is_a_missing_column_not_a_null() -> None:
    with pytest.raises(InvalidInstance, match="instance 0: x: missing column"):
        COMPILED.from_instances([{"c": "a"}])
    with pytest.raises(InvalidInstance, match="instance 0: instance: expected an object, got list"):
        COMPILED.from_instances([[1, 2]])
    columns = COMPILED.from_columns({"x": [1.0], "c": ["a"], "n": [ABSENT]}, 1)
    assert np.isnan(columns.arrays["n"][0])


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 15),
    st.floats(-5, 15),
    st.sampled_from([float("nan"), float("inf"), 10**400]),
    st.sampled_from(["a", "b", "z"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={k: values for k in ("x", "n", "b", "c", "o")}), min_size=1))
def test_the_fast_path_agrees_with_the_row_by_row_rules(rows: list[dict[str, Any]]) -> None:
    first = next(
        (i for i, r in enumerate(rows) if validate_row(SCHEMA, r, from_text=False, require_target=False)[1]), None
    )
    if first is None:
        columns = COMPILED.from_instances(rows)
        assert columns.rows == len(rows)
        for f in SCHEMA.features:  # the same values the row-by-row rules give
            expected = [validate_row(SCHEMA, r, from_text=False, require_target=False)[0][f.name] for r in rows]
            assert row_values(f, columns.arrays[f.name]) == expected
    else:
        with pytest.raises(InvalidInstance) as caught:
            COMPILED.from_instances(rows)
        assert caught.value.index == first


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={k: values for k in ("x", "n", "b", "c", "o")}), min_size=1,
                max_size=FEW_ROWS))  # fmt: skip
def test_few_rows_are_judged_as_many_rows_are(rows: list[dict[str, Any]]) -> None:
    """A handful of rows is checked value by value, more with NumPy: the same rows get the same answer."""
    many = rows * (FEW_ROWS // len(rows) + 1)  # over FEW_ROWS: the NumPy path

    def judged(batch: list[dict[str, Any]]) -> Columns | tuple[int, str]:
        try:
            return COMPILED.from_instances(batch)
        except InvalidInstance as exc:
            return exc.index, exc.field

    few, both = judged(rows), judged(many)
    if not isinstance(few, Columns) or not isinstance(both, Columns):
        assert few == both  # the same first bad instance and field
        return
    for f in SCHEMA.features:
        assert row_values(f, both.arrays[f.name][: len(rows)]) == row_values(f, few.arrays[f.name])


class Rows:
    def __init__(self, values: list[int]) -> None:
        self.values = values

    @property
    def rows(self) -> int:
        return len(self.values)

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(self.values[start:stop])


def doubling(calls: list[int]) -> MicroBatcher[Rows, Rows]:
    def infer(batch: Rows) -> Rows:
        calls.append(batch.rows)
        return Rows([2 * v for v in batch.values])

    return MicroBatcher(infer, lambda parts: Rows([v for p in parts for v in p.values]), inline_rows=1000)


async def test_concurrent_submissions_share_one_call_and_get_their_own_rows() -> None:
    calls: list[int] = []
    batcher = doubling(calls)
    answers = await asyncio.gather(*(batcher.submit(Rows([i, i + 100])) for i in range(20)))
    assert [a.values for a in answers] == [[2 * i, 2 * i + 200] for i in range(20)]
    assert calls == [40]


async def test_a_lone_request_is_not_held_and_limits_split_batches() -> None:
    calls: list[int] = []
    batcher = doubling(calls)
    assert (await batcher.submit(Rows([1]))).values == [2]
    batcher.max_rows = 8
    answers = await asyncio.gather(*(batcher.submit(Rows([i, i])) for i in range(10)), batcher.submit(Rows([7] * 9)))
    assert answers[-1].values == [14] * 9
    assert sum(calls) == 1 + 20 + 9
    assert max(calls) <= 9  # the 9-row request ran alone; the gathered ones stopped at max_rows
    batcher.enabled = False
    await asyncio.gather(*(batcher.submit(Rows([i])) for i in range(3)))
    assert calls[-3:] == [1, 1, 1]


async def test_an_inference_error_reaches_every_caller_of_the_batch() -> None:
    def infer(batch: Rows) -> Rows:
        raise ValueError("model broke")

    batcher: MicroBatcher[Rows, Rows] = MicroBatcher(infer, lambda parts: parts[0], inline_rows=10)
    results = await asyncio.gather(*(batcher.submit(Rows([i])) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)


def test_columns_concatenate_and_slice() -> None:
    a = COMPILED.from_instances([{"x": 1.0, "c": "a"}])
    b = COMPILED.from_instances([{"x": 2.0, "c": "b"}, {"x": 3.0, "c": "a"}])
    both = Columns.concat([a, b])
    assert both.rows == 3
    assert list(both.slice(1, 3).arrays["x"]) == [2.0, 3.0]


def test_v2_pandas_and_row_major_forms_decode_to_the_same_columns() -> None:
    pandas_form = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": "x", "shape": [2, 1], "datatype": "FP64", "data": [[1.0], [2.0]]},
            {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["a", "b"], "parameters": {"content_type": "str"}},
        ],
        "outputs": [{"name": "predict_proba"}],
    }
    decoded = v2.decode(pandas_form, SCHEMA, max_rows=10)
    assert decoded.rows == 2
    assert decoded.outputs == ["predict_proba"]
    assert decoded.raw["x"] == [1.0, 2.0]
    assert decoded.raw["n"] == [ABSENT, ABSENT]
    row_major = {"inputs": [{"name": "input-0", "shape": [2, 5], "datatype": "BYTES",
                             "data": [1.0, 3, True, "a", "p", 2.0, None, None, "b", None]}]}  # fmt: skip
    rows = v2.decode(row_major, SCHEMA, max_rows=10)
    assert rows.outputs == ["predict"]
    assert rows.raw["x"] == [1.0, 2.0]
    assert rows.raw["c"] == ["a", "b"]
    assert COMPILED.from_columns(rows.raw, rows.rows).rows == 2


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["1"]}], "takes FP16 or FP32"),
        ([{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0]}], "shape [2] holds 2 values but data has 1"),
        ([{"name": "c", "shape": [1], "datatype": "BYTES", "data": ["a"]}], "missing input for feature 'x'"),
        ([{"name": "q", "shape": [1], "datatype": "FP64", "data": [1.0]}], "unknown input 'q'"),
        ([{"name": "x", "shape": [1], "datatype": "FP64"}], "input 'x' has no data"),
        ([{"name": "x", "shape": [-1], "datatype": "FP64", "data": [1.0]}], "non-negative integers"),
    ],
)
def test_v2_protocol_errors_say_what_is_wrong(inputs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(v2.ProtocolError) as caught:
        v2.decode({"inputs": inputs}, SCHEMA, max_rows=10)
    assert message in caught.value.message
    assert 400 <= caught.value.status < 500


async def test_batches_keep_flowing_when_full_batches_interleave_with_gathering() -> None:
    calls: list[int] = []
    batcher = doubling(calls)
    batcher.max_rows = 5

    async def client(i: int) -> list[int]:
        out = []
        for j in range(20):
            out.extend((await batcher.submit(Rows([i * 100 + j]))).values)
            if j % 3 == 0:
                await asyncio.sleep(0)
        return out

    answers = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(7))), timeout=10)
    assert answers == [[2 * (i * 100 + j) for j in range(20)] for i in range(7)]
    assert sum(calls) == 140
    assert max(calls) <= 5


def test_a_one_feature_schema_reads_many_rows() -> None:
    schema = DatasetSchema.model_validate(
        {
            "features": [{"name": "x", "dtype": "numeric"}],
            "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
            "task": "classification",
        }
    )
    columns = CompiledSchema(schema).from_instances([{"x": float(i), "extra": "ignored"} for i in range(3 * FEW_ROWS)])
    assert columns.arrays["x"].tolist() == [float(i) for i in range(3 * FEW_ROWS)]
