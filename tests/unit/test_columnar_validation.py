"""Columnar validation decides and words every row exactly as row-by-row validation does.

The reference below is the row-by-row algorithm ingest used before it went
columnar (``validate_row`` per record, then the record key), run on the same
records; random batches in every format must give the same accepted rows and
the same (row, field, reason) rejections.
"""

from __future__ import annotations

import gzip
import io
import random
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common.errors import BadRequest, PayloadTooLarge
from libs.common.schema import DatasetSchema
from libs.common.validation import validate_row
from services.ingest.domain.parsing import parse_body
from services.ingest.domain.validation import SchemaMismatch, record_key, validate, validate_records

SCHEMA = DatasetSchema.model_validate(
    {
        "features": [
            {"name": "x", "dtype": "numeric", "min": 0, "max": 10},
            {"name": "u", "dtype": "numeric", "nullable": True},
            {"name": "n", "dtype": "integer", "nullable": True, "min": -5},
            {"name": "m", "dtype": "integer"},
            {"name": "c", "dtype": "categorical", "categories": ["a", "b"]},
            {"name": "o", "dtype": "categorical", "categories": ["a"], "closed": False, "nullable": True},
            {"name": "f", "dtype": "boolean", "nullable": True},
            {"name": "g", "dtype": "boolean"},
        ],
        "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
        "task": "classification",
        "key": "id",
    }
)
UNKEYED = SCHEMA.model_copy(update={"key": None})


def reference(schema: DatasetSchema, records: list[dict[str, Any] | None], *, from_text: bool) -> tuple[
    list[dict[str, Any]], list[tuple[int, str | None, str]]
]:  # fmt: skip
    """Row-by-row validation, as ingest did it before (rows and rejections)."""
    accepted: list[dict[str, Any]] = []
    rejected: list[tuple[int, str | None, str]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record is None:
            rejected.append((index, None, "unreadable record"))
            continue
        row, problems = validate_row(schema, record, from_text=from_text)
        if problems:
            rejected.append((index, problems[0][0], "; ".join(f"{c}: {m}" for c, m in problems)))
            continue
        if schema.key is not None:
            key = record_key(schema, record)
            if key is None:
                value = record.get(schema.key)
                kind = {bool: "a boolean", dict: "an object", list: "a list"}.get(type(value))
                why = f"{kind} cannot be a record key" if kind else "missing record key"
                rejected.append((index, schema.key, f"{schema.key}: {why}"))
                continue
            if key in seen:
                rejected.append((index, schema.key, f"duplicate key {key!r} of row {seen[key]}"))
                continue
            seen[key] = index
        accepted.append(row)
    return accepted, rejected


JSON_VALUES: dict[str, list[Any]] = {
    "x": [0, 5, 10, 2.5, -1, 11, 10.000001, float("nan"), float("inf"), "5", True, None, [1], 2**70, 10**400],
    "u": [1.5, None, float("nan"), "x", -1e300, 7],
    "n": [1, -5, -6, 2.0, 2.5, None, 2**62, 2**53 + 1, -(2**63), 2**64, "3", False],
    "m": [0, 1, 3.0, None, 9_007_199_254_740_993, 1e20, "1"],
    "c": ["a", "b", "z", "", None, 3, "A"],
    "o": ["a", "anything", "", None, 1],
    "f": [True, False, None, "yes", 1, 0],
    "g": [True, False, None, "true"],
    "y": ["no", "yes", "maybe", None],
    "id": [1, 2, 3, "a", "b", "", None, True, 1.0, "1"],
}
TEXT_VALUES: dict[str, list[str]] = {
    "x": ["0", "5", "10", " 2.5 ", "-1", "11", "1e1", "1e400", "nan", "inf", "five", "", "+5", "1_0", ".5", "5.",
          "\xa05", "0x1", "1e", "  "],
    "u": ["1.5", "", "nan", "-inf", "x", " 7"],
    "n": ["1", "-5", "-6", "2.0", "2.5", "", "1e3", "9007199254740993", "99999999999999999999", "3 "],
    "m": ["0", "1", "", "3.0", "1e20", "x"],
    "c": ["a", "b", "z", "", " a", "A"],
    "o": ["a", "anything", ""],
    "f": ["true", "FALSE", " yes ", "N", "1", "0", "", "maybe", "\xa0t"],
    "g": ["t", "no", "", "2"],
    "y": ["no", "yes", "maybe", ""],
    "id": ["1", "2", "3", "", "a", "a "],
}  # fmt: skip


def random_records(rng: random.Random, n: int, values: dict[str, list[Any]]) -> list[dict[str, Any] | None]:
    records: list[dict[str, Any] | None] = []
    for _ in range(n):
        if rng.random() < 0.02:
            records.append(None)
            continue
        record = {}
        for name, choices in values.items():
            if rng.random() < 0.7:
                record[name] = choices[0] if rng.random() < 0.5 else rng.choice(choices[:3])
            elif rng.random() < 0.9:
                record[name] = rng.choice(choices)
            # else: the column is missing from this record
        records.append(record)
    return records


def assert_same(schema: DatasetSchema, result: Any, records: list[Any], *, from_text: bool) -> None:
    rows, rejected = reference(schema, records, from_text=from_text)
    assert [(r.row, r.field, r.reason) for r in result.rejected] == rejected
    got = result.accepted.to_pylist()
    assert len(got) == len(rows)
    for mine, theirs in zip(got, rows, strict=True):
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            assert mine[name] == value, (name, mine[name], value)
            assert type(mine[name]) is type(value), (name, mine[name], value)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("schema", [SCHEMA, UNKEYED])
def test_json_records_are_judged_as_row_by_row(seed: int, schema: DatasetSchema) -> None:
    records = random_records(random.Random(seed), 400, JSON_VALUES)
    assert_same(schema, validate_records(schema, records), records, from_text=False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("schema", [SCHEMA, UNKEYED])
def test_csv_text_is_judged_as_row_by_row(seed: int, schema: DatasetSchema) -> None:
    rng = random.Random(seed)
    names = list(TEXT_VALUES) if seed % 3 else [n for n in TEXT_VALUES if n not in ("u", "m")]  # absent columns
    records: list[dict[str, Any] | None] = [
        {n: rng.choice(TEXT_VALUES[n]) if rng.random() < 0.4 else TEXT_VALUES[n][0] for n in names} for _ in range(400)
    ]
    table = pa.table({n: pa.array([r[n] for r in records if r], pa.string()) for n in names})
    result = validate(schema, table=table, from_text=True)
    assert_same(schema, result, records, from_text=True)
    assert result.originals([0]) == [records[0]]


@pytest.mark.parametrize("seed", range(4))
def test_typed_columns_are_judged_as_their_python_values(seed: int) -> None:
    rng = random.Random(seed)
    n = 300

    def pick(choices: list[Any]) -> list[Any]:
        return [choices[0] if rng.random() < 0.6 else rng.choice(choices) for _ in range(n)]

    table = pa.table({
        "x": pa.array(pick([1.0, 11.0, -0.5, None, float("nan"), float("inf")]), pa.float64()),
        "u": pa.array(pick([1, None, -3]), pa.int32()),
        "n": pa.array(pick([1.0, 2.5, None, -7.0, 3.0]), pa.float32()),
        "m": pa.array(pick([1, 2**63 + 5, 0]), pa.uint64()),
        "c": pa.array(pick(["a", "z", None]), pa.string()).dictionary_encode(),
        "o": pa.array(pick(["q", None]), pa.large_string()),
        "g": pa.array(pick([True, None, False]), pa.bool_()),
        "y": pa.array(pick(["no", "yes", "maybe"]), pa.string()),
        "id": pa.array(list(range(n // 2)) * 2, pa.int64()),
        "extra": pa.array(range(n), pa.int64()),
    })  # fmt: skip
    result = validate(SCHEMA, table=table)
    records = []
    for row in table.to_pylist():
        row["m"] = float(row["m"]) if row["m"] >= 2**63 else row["m"]  # judged as a number beyond int64
        row["n"] = None if row["n"] is None else float(row["n"])
        records.append(row)
    assert_same(SCHEMA, result, records, from_text=False)


def test_columnar_bodies_with_the_wrong_columns_are_refused() -> None:
    good = {"x": [1.0], "m": [1], "c": ["a"], "g": [True], "y": ["no"], "id": ["k"]}
    with pytest.raises(SchemaMismatch, match="no column 'x'"):
        validate(SCHEMA, table=pa.table({k: v for k, v in good.items() if k != "x"}))
    with pytest.raises(SchemaMismatch, match="'c' is int64"):
        validate(SCHEMA, table=pa.table({**good, "c": [1]}))
    with pytest.raises(SchemaMismatch, match="'x' is string"):
        validate(SCHEMA, table=pa.table({**good, "x": ["1.0"]}))
    assert len(validate(SCHEMA, table=pa.table(good)).accepted) == 1  # nullable columns may be absent


def _arrow_stream(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def test_arrow_and_parquet_bodies() -> None:
    table = pa.table({"x": [1.0, 2.0], "c": ["a", "b"]})
    arrow = parse_body(_arrow_stream(table), "application/vnd.apache.arrow.stream")
    assert arrow.table is not None
    assert arrow.table.equals(table)
    assert not arrow.from_text
    file = pa.BufferOutputStream()
    with pa.ipc.new_file(file, table.schema) as writer:
        writer.write_table(table)
    for media in ("application/vnd.apache.arrow.file", "application/vnd.apache.arrow.stream"):  # told by its magic
        read = parse_body(file.getvalue().to_pybytes(), media).table
        assert read is not None
        assert read.equals(table)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    parquet = parse_body(sink.getvalue(), "application/vnd.apache.parquet")
    assert parquet.table is not None
    assert parquet.table.equals(table)
    assert parquet.count == 2


@pytest.mark.parametrize(
    ("body", "media", "message"),
    [(b"ARROW1 not really", "application/vnd.apache.arrow.stream", "not a readable Arrow IPC file"),
     (b"PAR1garbagePAR1", "application/vnd.apache.parquet", "not a readable Parquet file"),
     (b"\xff\xff\xff\xff\x10\x00\x00\x00", "application/vnd.apache.arrow.stream", "Arrow")],
)  # fmt: skip
def test_malformed_columnar_bodies_are_bad_requests(body: bytes, media: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_body(body, media)


def test_compressed_bodies_may_not_expand_past_the_limit() -> None:
    csv = b"x,c\n" + b"1,a\n" * 100_000
    assert parse_body(gzip.compress(csv), "text/csv", content_encoding="gzip").count == 100_000
    with pytest.raises(PayloadTooLarge, match="expands past the limit"):
        parse_body(gzip.compress(csv), "text/csv", content_encoding="gzip", max_decoded=100_000)
    with pytest.raises(BadRequest, match="not valid gzip"):
        parse_body(b"not gzip", "text/csv", content_encoding="gzip")
    packed_csv = pa.compress(csv, codec="zstd", asbytes=True)
    assert parse_body(packed_csv, "text/csv", content_encoding="zstd").count == 100_000
    with pytest.raises(PayloadTooLarge, match="zstd body expands past the limit"):
        parse_body(packed_csv, "text/csv", content_encoding="zstd", max_decoded=100_000)
    with pytest.raises(BadRequest, match="not valid zstd"):
        parse_body(b"not zstd at all", "text/csv", content_encoding="zstd")
    zeros = pa.table({"x": pa.array([0.0] * 1_000_000)})
    packed = _arrow_stream(zeros, "zstd")
    assert len(packed) < 100_000
    with pytest.raises(PayloadTooLarge, match="Arrow IPC stream expands past"):
        parse_body(packed, "application/vnd.apache.arrow.stream", max_decoded=1_000_000)
    sink = io.BytesIO()
    pq.write_table(zeros, sink, compression="zstd")
    with pytest.raises(PayloadTooLarge, match="Parquet file expands past the limit"):
        parse_body(sink.getvalue(), "application/vnd.apache.parquet", max_decoded=1_000_000)


def test_csv_through_pyarrow_keeps_text_semantics() -> None:
    body = b'\xef\xbb\xbfx,c,note\n1,a,"two\nlines"\n,b,\n'
    parsed = parse_body(body, "text/csv")
    assert parsed.table is not None
    assert parsed.from_text
    assert parsed.rows == [{"x": "1", "c": "a", "note": "two\nlines"}, {"x": "", "c": "b", "note": ""}]


@pytest.mark.parametrize(
    "body",
    [b'[{"a": 1, "a": 2}]', b'[{"a":1,"a":2}]', b'[{"a" :1, "b": 2}, {"a":1, "a" :2}]',
     b'[{"a": 1}, {"b": "x\\u0000"}]', b'[{"a": "{", "a": 1}]'],
)  # fmt: skip
def test_the_fast_json_path_still_refuses_duplicate_keys_and_nul(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body(body, "application/json")


def test_flat_json_records_take_the_fast_path() -> None:
    from libs.common import jsonbody

    flat = b'[{"a": 1, "b": "x"}, {"a" : 2, "b": "}"}]'
    assert jsonbody._fast(flat, 64) == [{"a": 1, "b": "x"}, {"a": 2, "b": "}"}]
    nested = b"[" + b"[" * 70 + b"]" * 70 + b"]"
    assert jsonbody._fast(nested, 64) is jsonbody._UNSURE
