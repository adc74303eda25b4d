"""The quarantine block of a submission's rejected rows: what goes in comes out, paged by id."""

from __future__ import annotations

from typing import Any

import pytest

from services.ingest.domain import quarantine
from services.ingest.domain.validation import record_json, rejection

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
        ({"age": float("nan"), "plan": None}, "\"{'age': nan, 'plan': None}\""),  # NaN is not JSON: kept as text
        ({"age": float("inf")}, "\"{'age': inf}\""),
        ({"tags": [None, float("-inf")], "plan": None}, "\"{'tags': [None, -inf], 'plan': None}\""),  # nested
        ({"n": 2**70}, '{"n": 1180591620717411303424}'),
        ([1, None], "[1, null]"),
        (None, None),
    ],
)
def test_a_record_is_quarantined_as_json_and_never_loses_a_nan_to_null(record: Any, text: str | None) -> None:
    assert record_json(record) == text
