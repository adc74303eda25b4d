"""The quarantine block of a submission's rejected rows: what goes in comes out, paged by id."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from libs.common.schema import DatasetSchema
from services.ingest.domain import quarantine
from services.ingest.domain.validation import record_json, rejection, validate

REJECTED = [
    rejection(2, "age", "age: 12.0 is below the minimum 18.0", {"age": 12.0, "plan": "pro"}),
    rejection(5, None, "record: expected an object, got a list", [1, 2]),
    rejection(6, "visits", "visits: not an integer", {"visits": 2**70 + 1}),  # beyond 64 bits: kept exact
    rejection(9, "plan", "plan: missing column"),  # no record at all
]


def test_every_rejection_comes_back_newest_first_with_its_id() -> None:
    block = quarantine.encode(REJECTED)
    page = quarantine.newest(block, first_id=100, before_id=None, limit=10)
    assert [r["id"] for r in page] == [103, 102, 101, 100]
    assert [(r["row"], r["field"], r["reason"], r["record"]) for r in reversed(page)] == [
        (r.row, r.field, r.reason, r.record) for r in REJECTED
    ]
    assert page[1]["record"]["visits"] == 2**70 + 1


@pytest.mark.parametrize(
    ("before_id", "limit", "ids"),
    [
        (None, 2, [103, 102]),
        (103, 2, [102, 101]),
        (101, 5, [100]),
        (100, 5, []),  # the whole block is newer than the cursor
        (50, 5, []),
        (10**9, 3, [103, 102, 101]),  # a cursor past the block: its newest rows
    ],
)
def test_a_page_holds_the_ids_below_the_cursor_up_to_the_limit(
    before_id: int | None, limit: int, ids: list[int]
) -> None:
    page = quarantine.newest(quarantine.encode(REJECTED), first_id=100, before_id=before_id, limit=limit)
    assert [r["id"] for r in page] == ids
    assert [r["row"] for r in page] == [REJECTED[i - 100].row for i in ids]


def test_many_rejections_are_cut_into_blocks_that_page_as_one() -> None:
    many = [rejection(row, "age", f"age: {row} is above the maximum 100.0", {"age": row}) for row in range(10)]
    blocks = quarantine.blocks(many, rows=4)
    assert [(start, rows) for start, rows, _ in blocks] == [(0, 4), (4, 4), (8, 2)]
    page = [r for start, _, block in reversed(blocks) for r in quarantine.newest(block, 1 + start, None, 100)]
    assert [r["id"] for r in page] == list(range(10, 0, -1))
    assert [r["record"]["age"] for r in page] == list(range(9, -1, -1))


@pytest.mark.parametrize(
    ("record", "text"),
    [
        ({"age": 12.5, "plan": None}, '{"age":12.5,"plan":null}'),
        ({"age": None, "plan": None, "note": "null"}, '{"age": null, "plan": null, "note": "null"}'),  # a string "null"
        ({"age": float("nan"), "plan": None}, '{"age": "NaN", "plan": null}'),  # NaN is not JSON: a string, not null
        ({"age": float("inf")}, '{"age": "Infinity"}'),
        ({"tags": [None, float("-inf")], "plan": None}, '{"tags": [null, "-Infinity"], "plan": null}'),  # nested
        ({"n": 2**70, "x": float("nan")}, '{"n": 1180591620717411303424, "x": "NaN"}'),
        ({"n": 2**70}, '{"n": 1180591620717411303424}'),
        ([1, None], "[1, null]"),
        (None, None),
    ],
)
def test_a_record_is_quarantined_as_json_and_never_loses_a_nan_to_null(record: Any, text: str | None) -> None:
    assert record_json(record) == text


def _version_1(rejected: list[Any]) -> bytes:
    """A block as the first quarantine wrote it: every record as JSON text, no version in the schema."""
    table = pa.table(
        [
            pa.array([r.row for r in rejected], pa.int32()),
            pa.array([r.field for r in rejected], pa.string()),
            pa.array([r.reason for r in rejected], pa.string()),
            pa.array([r.text for r in rejected], pa.string()),
        ],
        schema=quarantine.SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, quarantine.SCHEMA, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def test_a_table_body_keeps_its_rejected_rows_as_a_sub_table_read_as_the_json_of_version_1() -> None:
    """Version 2 stores a table body's rejected rows as they were sent (a struct column, no JSON per row);
    a page decodes them to exactly what version 1, which stored each record's JSON, gives."""
    body = pa.table({
        "age": pa.array([12.0, float("nan"), 30.5, None], pa.float32()),
        "plan": pa.array(["pro", "gold", None, "basic"]).dictionary_encode(),
        "visits": pa.array([2**62, 1, None, 3], pa.int64()),
        "seen": pa.array([1_700_000_000_000_000] * 4, pa.timestamp("us", tz="UTC")),
        "churned": ["no", "yes", "no", None],
    })  # fmt: skip
    result = validate(
        DatasetSchema.model_validate({
            "features": [{"name": "age", "dtype": "numeric", "min": 18, "max": 100},
                         {"name": "plan", "dtype": "categorical", "categories": ["basic", "pro"], "closed": True},
                         {"name": "visits", "dtype": "integer", "min": 0, "max": 100}],
            "target": {"name": "churned", "dtype": "categorical"}, "task": "classification",
        }),
        table=body,
    )  # fmt: skip
    assert isinstance(result.rejected.records, pa.Table)  # no Python object per rejected row
    assert [r.row for r in result.rejected] == [0, 1, 2, 3]
    block = quarantine.encode(result.rejected)
    stored = pa.ipc.open_stream(block).read_all()
    assert stored.schema.metadata == {quarantine.VERSION_KEY: quarantine.VERSION}
    assert pa.types.is_struct(stored.schema.field("record").type)
    old = quarantine.newest(_version_1(list(result.rejected)), 1, None, 10)
    new = quarantine.newest(block, 1, None, 10)
    assert new == old
    assert [r["reason"] for r in new][-2:] == [
        "age: NaN where the column is not nullable; plan: unknown category 'gold' (allowed: basic, pro)",
        "age: 12.0 is below the minimum 18.0; visits: 4611686018427387904 is above the maximum 100.0",
    ]
    assert new[-1]["record"] == {"age": 12.0, "plan": "pro", "visits": 2**62, "seen": "2023-11-14T22:13:20+00:00",
                                 "churned": "no"}  # fmt: skip
