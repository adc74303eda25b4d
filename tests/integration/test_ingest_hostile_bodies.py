"""The records route under attack, as an outside checker would send its bodies: garbled, truncated,
lying and exploding Arrow, Parquet, CSV and JSON. Every refusal is a 4xx in the platform's error
shape naming the cause, nothing is stored, the service keeps answering; a row-level problem is a
rejected row whose reason names the row and the field, in every format."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.bodies import arrow_file, parquet
from tests.bodies import arrow_stream as stream
from tests.conftest import Isolation, serve
from tests.integration.test_hardening import assert_error

pytestmark = pytest.mark.integration

POST = "/v1/datasets/k/records"
SCHEMA: dict[str, Any] = {
    "features": [
        {"name": "age", "dtype": "numeric", "min": 18, "max": 100},
        {"name": "plan", "dtype": "categorical", "categories": ["basic", "pro"]},
        {"name": "visits", "dtype": "integer", "nullable": True},
        {"name": "flag", "dtype": "boolean", "nullable": True},
    ],
    "target": {"name": "churned", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
    "key": "id",
}
LIMIT = 4 * 1024 * 1024  # max_decoded_bytes of these tests
ARROW = {"content-type": "application/vnd.apache.arrow.stream"}
ARROW_FILE = {"content-type": "application/vnd.apache.arrow.file"}
PARQUET = {"content-type": "application/vnd.apache.parquet"}
CSV = {"content-type": "text/csv"}
JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}


def table(n: int = 3, **columns: pa.Array | None) -> pa.Table:
    """``n`` good rows (keys k0, k1, …), with columns replaced, added, or dropped (None)."""
    base = pa.table({
        "id": [f"k{i}" for i in range(n)], "age": [30.0 + i % 50 for i in range(n)],
        "plan": ["basic"] * n, "visits": list(range(n)), "flag": [True] * n, "churned": ["no"] * n,
    })  # fmt: skip
    for name, values in columns.items():
        if values is None:
            base = base.drop_columns([name])
        elif name in base.column_names:
            base = base.set_column(base.column_names.index(name), name, values)
        else:
            base = base.append_column(name, values)
    return base


def zeros_column(rows: int, width: int) -> pa.Array:
    """``rows`` binary values of ``width`` zero bytes, over numpy memory (not Arrow's pool, which
    the bomb tests watch)."""
    offsets = pa.py_buffer(np.arange(rows + 1, dtype=np.int64) * width)
    data = pa.py_buffer(np.zeros(rows * width, np.uint8))
    return pa.Array.from_buffers(pa.large_binary(), rows, [None, offsets, data])


def one_value_repeated(rows: int, width: int) -> pa.Array:
    """A dictionary column: one ``width``-byte string named by ``rows`` indices."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array(["y" * width]))


def _flip(body: bytes, at: int, value: bytes) -> bytes:
    return body[:at] + value + body[at + len(value) :]


def _patched(body: bytes, was: list[int], now: list[int]) -> bytes:
    """``body`` with the one int32 buffer holding ``was`` holding ``now`` instead."""
    old, new = np.array(was, np.int32).tobytes(), np.array(now, np.int32).tobytes()
    assert body.count(old) == 1
    return body.replace(old, new)


def _varint(value: int) -> bytes:
    """``value`` as Thrift's compact protocol writes an integer (zigzag, then 7 bits a byte)."""
    value, out = (value << 1) ^ (value >> 63), bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def _understated(body: bytes) -> bytes:
    """A Parquet file whose footer says its row group and column chunks decode to about 1 MB (same-length
    integers swapped in, so every offset still holds): the pages are as they were."""
    meta = pq.read_metadata(pa.BufferReader(body))
    group = meta.row_group(0)
    start = len(body) - 8 - int.from_bytes(body[-8:-4], "little")
    footer = body[start:]
    for size in [group.total_byte_size, *(group.column(i).total_uncompressed_size for i in range(meta.num_columns))]:
        old = _varint(size)
        footer = footer.replace(old, _varint(1 << (7 * len(old) - 8)), 1)
    return body[:start] + footer


def _schema_length(body: bytes) -> int:
    """Bytes of a stream's schema message (continuation, length, flatbuffer)."""
    return 8 + int.from_bytes(body[4:8], "little")


Case = tuple[str, bytes, dict[str, str], int, tuple[str, ...]]


def arrow_cases() -> list[Case]:
    good = table()
    body = stream(good)
    schema_only = body[: _schema_length(body)] + b"\xff\xff\xff\xff\x00\x00\x00\x00"
    two_schemas = stream(good) + stream(table(id=pa.array([1, 2, 3])))
    not_utf8 = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(np.array([0, 1, 2, 3], np.int32)),
                                                       pa.py_buffer(b"\xff\xfe\xfd")])  # fmt: skip
    bad_offsets = _patched(stream(table(plan=pa.array(["a" * 7] * 3))), [0, 7, 14, 21], [0, 7, 14, 9999])
    plans = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1, 1, 0], pa.int32()), pa.array(["basic", "pro"]))
    bad_indices = _patched(stream(table(5, plan=plans)), [1, 0, 1, 1, 0], [1, 0, 500, 1, 0])
    union = pa.UnionArray.from_sparse(pa.array([0, 1, 0], pa.int8()), [pa.array([1.0, 2, 3]), pa.array(["a"] * 3)])
    return [
        ("empty arrow body", b"", ARROW, 400, ("empty",)),
        ("schema message cut", body[:40], ARROW, 400, ("Arrow IPC stream",)),
        ("batch cut", body[: len(body) - 60], ARROW, 400, ("Arrow IPC stream",)),
        ("garbage after the magic", b"ARROW1\x00\x00" + b"\x07" * 300, ARROW, 400, ("Arrow IPC file",)),
        ("file without footer", arrow_file(good)[:-10], ARROW_FILE, 400, ("Arrow IPC file",)),
        ("file footer length lies", _flip(arrow_file(good), len(arrow_file(good)) - 10, b"\xff\xff\x00\x00"),
         ARROW_FILE, 400, ("Arrow IPC file",)),
        ("stream sent as a file", body, ARROW_FILE, 400, ("Arrow IPC file",)),
        ("batch length prefix garbled", _flip(body, _schema_length(body) + 4, b"\xff\xff\xff\x7f"), ARROW, 400,
         ("Arrow IPC stream",)),
        ("schema only", schema_only, ARROW, 400, ("no records",)),
        ("zero rows", stream(good.slice(0, 0)), ARROW, 400, ("no records",)),
        ("zero columns", stream(pa.table({})), ARROW, 400, ("no records",)),
        ("two streams in one body", two_schemas, ARROW, 400, ("after its end-of-stream",)),
        ("duplicate column names", stream(pa.Table.from_arrays([good["id"], good["age"], good["age"]],
                                                               names=["id", "age", "age"])),
         ARROW, 400, ("repeats", "age")),
        ("missing column", stream(table(age=None)), ARROW, 422, ("age",)),
        ("text for a number", stream(table(age=pa.array(["30", "x", "1"]))), ARROW, 422, ("age", "string")),
        ("list for a number", stream(table(age=pa.array([[1.0]] * 3))), ARROW, 422, ("age", "list")),
        ("struct for a category", stream(table(plan=pa.array([{"a": 1}] * 3))), ARROW, 422, ("plan", "struct")),
        ("map for an integer", stream(table(visits=pa.array([[("a", 1)]] * 3, pa.map_(pa.string(), pa.int64())))),
         ARROW, 422, ("visits", "map")),
        ("union for a number", stream(table(age=union)), ARROW, 422, ("age", "union")),
        ("timestamp for a number", stream(table(age=pa.array([1, 2, 3], pa.timestamp("s")))), ARROW, 422,
         ("age", "timestamp")),
        ("duration for an integer", stream(table(visits=pa.array([1, 2, 3], pa.duration("s")))), ARROW, 422,
         ("visits", "duration")),
        ("binary for a category", stream(table(plan=pa.array([b"basic"] * 3))), ARROW, 422, ("plan", "binary")),
        ("integer for a boolean", stream(table(flag=pa.array([1, 0, 1]))), ARROW, 422, ("flag", "int64")),
        ("text that is not UTF-8", stream(table(plan=not_utf8)), ARROW, 400, ("'plan'", "UTF8")),
        ("offsets past the data", bad_offsets, ARROW, 400, ("'plan'", "offset")),
        ("dictionary index past the dictionary", bad_indices, ARROW, 400, ("'plan'", "500")),
        ("LZ4 bomb", stream(table(2000, pad=zeros_column(2000, 10_000)), "lz4"), ARROW, 413, ("expands",)),
        ("ZSTD bomb", stream(table(2000, pad=zeros_column(2000, 10_000)), "zstd"), ARROW, 413, ("expands",)),
        ("dictionary bomb", stream(table(2000, plan=one_value_repeated(2000, 100_000))), ARROW, 413, ("expands",)),
        ("run-end encoded bomb", stream(table(2000, plan=pa.RunEndEncodedArray.from_arrays([2000], ["y" * 100_000]))),
         ARROW, 413, ("expands",)),
        ("list view column", stream(table(extra=pa.array([[1]] * 3, pa.list_view(pa.int64())))), ARROW, 400,
         ("'extra'", "list_view")),
        ("too many rows", stream(table(60_000, visits=pa.nulls(60_000, pa.int64()))), ARROW, 400,
         ("60000 records", "limit")),
    ]  # fmt: skip


def parquet_cases() -> list[Case]:
    good = parquet(table())
    assert good[4:8] == b"\x15\x04\x15\x24"  # the first page header: its type, then its uncompressed size (18)
    return [
        ("empty parquet body", b"", PARQUET, 400, ("empty",)),
        ("magic only", b"PAR1", PARQUET, 400, ("Parquet",)),
        ("magic and zeros", b"PAR1" + b"\x00" * 64 + b"PAR1", PARQUET, 400, ("Parquet",)),
        ("footer cut", good[:-20] + good[-8:], PARQUET, 400, ("Parquet",)),
        ("footer length lies", _flip(good, len(good) - 8, b"\xff\xff\xff\x0f"), PARQUET, 400, ("Parquet",)),
        ("footer garbled", _flip(good, len(good) - 60, b"\x99" * 40), PARQUET, 400, ("Parquet",)),
        ("pages garbled", _flip(good, 4, b"\xff" * 40), PARQUET, 400, ("Parquet",)),
        ("CSV sent as Parquet", b"id,age\nk0,30\n", PARQUET, 400, ("Parquet",)),
        ("Arrow sent as Parquet", stream(table()), PARQUET, 400, ("Parquet", "looks like an Arrow IPC stream")),
        ("zero rows", parquet(table().slice(0, 0)), PARQUET, 400, ("no records",)),
        ("missing column", parquet(table(churned=None)), PARQUET, 422, ("churned",)),
        ("nested for a number", parquet(table(age=pa.array([{"x": [1.0]}] * 3))), PARQUET, 422, ("age", "struct")),
        ("zstd bomb", parquet(table(2000, pad=zeros_column(2000, 10_000)), compression="zstd"), PARQUET, 413,
         ("expands",)),
        ("dictionary bomb", parquet(table(2000, plan=one_value_repeated(2000, 100_000)), compression="zstd"),
         PARQUET, 413, ("expands",)),
        ("too many rows", parquet(table(60_000), row_group_size=60_000), PARQUET, 400, ("60000 records", "limit")),
        ("footer understates the pages", _understated(parquet(table(2000, pad=zeros_column(2000, 10_000)),
                                                              compression="zstd", use_dictionary=False)),
         PARQUET, 413, ("expands", "declares")),
        ("a page header declares 2 GiB", good[:7] + _varint(2**31 - 1) + good[8:], PARQUET, 413, ("expands",)),
        ("a page header cut short", good[:7] + b"\xff" * 11 + good[18:], PARQUET, 400, ("Parquet",)),
    ]  # fmt: skip


def text_cases() -> list[Case]:
    row = {"id": "k0", "age": 30, "plan": "basic", "visits": 1, "flag": True, "churned": "no"}
    header = "id,age,plan,visits,flag,churned\n"
    return [
        ("CSV header only", header.encode(), CSV, 400, ("no records",)),
        ("CSV duplicate header", b"id,age,age,plan\nk0,30,31,basic\n", CSV, 400, ("repeats", "age")),
        ("CSV with a NUL", (header + "k0,30,ba\x00sic,1,true,no\n").encode(), CSV, 400, ("NUL",)),
        ("CSV in Latin-1", (header + "k0,30,b\xe4sic,1,true,no\n").encode("latin-1"), CSV, 400, ("UTF-8",)),
        ("CSV blank", b"\n\n  \n", CSV, 400, ("empty",)),
        ("JSON deep", b"[" * 100_000 + b"]" * 100_000, JSON, 400, ("nested",)),
        ("JSON duplicate key", b'[{"id": "k0", "id": "k1"}]', JSON, 400, ("duplicate key", "id")),
        ("JSON not a list", b'{"id": "k0"}', JSON, 400, ("JSON array",)),
        ("JSON records not a list", b'{"records": 5}', JSON, 400, ("JSON array",)),
        ("JSON empty list", b"[]", JSON, 400, ("no records",)),
        ("JSON trailing garbage", json.dumps([row]).encode() + b"]", JSON, 400, ("JSON",)),
        ("JSON string", b'"hello"', JSON, 400, ("JSON array",)),
        ("JSON with a NUL escape", b'[{"id": "k\\u0000"}]', JSON, 400, ("NUL",)),
        ("JSON lone surrogate", b'[{"id": "\\ud800"}]', JSON, 400, ("surrogate",)),
        ("JSON number of 5,000 digits", b'[{"id": "k0", "age": 1' + b"0" * 5000 + b"}]", JSON, 400,
         ("number too long",)),
        ("CSV header only, no line end", header.strip().encode(), CSV, 400, ("no records",)),
        ("NDJSON blank", b"\n \n", NDJSON, 400, ("empty",)),
        ("CSV sent as JSON", header.encode() + b"k0,30,basic,1,true,no\n", JSON, 400, ("JSON",)),
        ("Parquet sent as CSV", parquet(table()), CSV, 400, ("UTF-8", "looks like Parquet")),
        ("gzip sent without its encoding", gzip.compress(header.encode()), CSV, 400, ("Content-Encoding: gzip",)),
        ("NDJSON of more lines than the limit", b"{}\n" * 60_000, NDJSON, 400, ("60000 records", "limit")),
        ("Arrow sent as JSON", stream(table()), JSON, 400, ("UTF-8",)),
        ("XML", b"<rows/>", {"content-type": "application/xml"}, 415, ("unsupported content type",)),
        ("form", b"a=1", {"content-type": "application/x-www-form-urlencoded"}, 415, ("unsupported",)),
    ]  # fmt: skip


def encoding_cases() -> list[Case]:
    csv = ("id,age,plan,visits,flag,churned\n" + "".join(f"k{i},30,basic,1,true,no\n" for i in range(3))).encode()
    bomb = gzip.compress(b"id,age,plan,visits,flag,churned\n" + b"k,30,basic,1,true,no\n" * 400_000)
    zeros = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS)
    deflate_bomb = zeros.compress(b"[" + b" " * 20_000_000) + zeros.flush()
    zstd_bomb = pa.compress(b" " * 20_000_000, "zstd", asbytes=True)
    return [
        ("gzip bomb", bomb, {**CSV, "content-encoding": "gzip"}, 413, ("expands past the limit",)),
        ("deflate bomb", deflate_bomb, {**JSON, "content-encoding": "deflate"}, 413, ("expands past the limit",)),
        ("zstd bomb", zstd_bomb, {**JSON, "content-encoding": "zstd"}, 413, ("expands past the limit",)),
        ("gzip cut", gzip.compress(csv)[:-12], {**CSV, "content-encoding": "gzip"}, 400, ("gzip",)),
        ("says gzip, is plain", csv, {**CSV, "content-encoding": "gzip"}, 400, ("gzip",)),
        ("says zstd, is gzip", gzip.compress(csv), {**CSV, "content-encoding": "zstd"}, 400, ("zstd",)),
        ("says deflate, is zstd", pa.compress(csv, "zstd", asbytes=True), {**CSV, "content-encoding": "deflate"},
         400, ("deflate",)),
        ("gzip of garbage", gzip.compress(b"\xff\xfe" * 100), {**CSV, "content-encoding": "gzip"}, 400,
         ("UTF-8",)),
        ("gzip of nothing", gzip.compress(b""), {**CSV, "content-encoding": "gzip"}, 400, ("empty",)),
        ("brotli", csv, {**CSV, "content-encoding": "br"}, 415, ("content encoding", "br")),
        ("made-up encoding", csv, {**CSV, "content-encoding": "x-magic"}, 415, ("content encoding",)),
    ]  # fmt: skip


FAMILIES: dict[str, Callable[[], list[Case]]] = {
    "arrow": arrow_cases, "parquet": parquet_cases, "text": text_cases, "encoding": encoding_cases,
}  # fmt: skip


async def _state(client: httpx.AsyncClient, runtime: Any) -> tuple[Any, ...]:
    shown = (await client.get("/v1/datasets/k")).json()
    counts = await runtime.db.fetchrow(
        "SELECT (SELECT count(*) FROM submissions) AS s, (SELECT count(*) FROM rejection_blocks) AS b, "
        "(SELECT count(*) FROM record_keys) AS k, (SELECT count(*) FROM outbox) AS o"
    )
    return shown["version"], shown["total_rows"], tuple(shown["records"].values()), tuple(counts)


@pytest.mark.parametrize("family", list(FAMILIES))
async def test_hostile_bodies_are_refused_with_the_cause_and_nothing_is_stored(
    isolated: Isolation, family: str
) -> None:
    cases = FAMILIES[family]()
    app, runtime = create_app(isolated.settings(IngestSettings, max_decoded_bytes=LIMIT, max_rows_per_request=50_000,
                                                records_burst=1e7))  # fmt: skip
    # Arrow's allocations, sampled while the bodies are handled: the pool's own high-water mark is the
    # whole process's and never resets, so once an earlier test raised it, it would show nothing here.
    allocated = [pa.total_allocated_bytes()]

    async def sample() -> None:
        while True:
            allocated.append(pa.total_allocated_bytes())
            await asyncio.sleep(0.001)

    failures: list[str] = []
    sampler = asyncio.create_task(sample())
    async with serve(app) as client:
        assert (await client.put("/v1/datasets/k", json=SCHEMA)).status_code == 201
        before = await _state(client, runtime)
        for why, body, headers, status, words in cases:
            answer = await client.post(POST, content=body, headers=headers)
            try:
                assert_error(answer, status, *words)
            except AssertionError:
                failures.append(f"{why}: {answer.status_code} {answer.text[:300]}")
            assert (await client.get("/healthz")).status_code == 200, why
        assert await _state(client, runtime) == before, "a refused body stored something"
        answer = await client.post(POST, content=stream(table()), headers=ARROW)
        assert answer.status_code == 200, answer.text  # and the service still takes a good body
    sampler.cancel()
    assert not failures, "\n".join(failures)
    # The bombs above declare gigabytes; none was decoded (Arrow never held more than the limit's order).
    grew = max(allocated) - allocated[0]
    assert len(allocated) > len(cases), "the sampler did not run while the bodies were handled"
    assert grew < 16 * LIMIT, f"Arrow's allocations grew by {grew} bytes"


async def test_values_at_the_edges_are_judged_per_row_with_reasons_in_every_format(isolated: Isolation) -> None:
    """Bounds are inclusive; a value just past one, an unknown or differently-cased category, a null
    target, a fractional or boolean integer, a missing or repeated key: each a rejected row naming its
    field, with the same reason whichever format carried it, kept with the record for the rejections API."""
    rows: list[dict[str, Any]] = [
        {"id": "a", "age": 18.0, "plan": "basic", "visits": 0, "flag": True, "churned": "no"},  # lowest bound
        {"id": "b", "age": 100.0, "plan": "pro", "visits": None, "flag": None, "churned": "yes"},  # highest
        {"id": "c", "age": 17.999, "plan": "basic", "visits": 1, "flag": False, "churned": "no"},
        {"id": "d", "age": 100.001, "plan": "basic", "visits": 1, "flag": False, "churned": "no"},
        {"id": "e", "age": 30.0, "plan": "Basic", "visits": 1, "flag": False, "churned": "no"},
        {"id": "f", "age": 30.0, "plan": "basic", "visits": 1, "flag": False, "churned": None},
        {"id": "g", "age": 30.0, "plan": "basic", "visits": 2.5, "flag": False, "churned": "no"},
        {"id": "a", "age": 30.0, "plan": "basic", "visits": 1, "flag": False, "churned": "no"},
        {"id": None, "age": 30.0, "plan": "basic", "visits": 1, "flag": False, "churned": "no"},
        {"id": "h", "age": 30.0, "plan": "basic", "visits": 3.0, "flag": False, "churned": "no"},  # integral float
    ]
    expected = [
        (2, "age", "age: 17.999 is below the minimum 18.0"),
        (3, "age", "age: 100.001 is above the maximum 100.0"),
        (4, "plan", "plan: unknown category 'Basic' (allowed: basic, pro)"),
        (5, "churned", "churned: missing value where the column is not nullable"),
        (6, "visits", "visits: 2.5 is not an integer"),
        (7, "id", "duplicate key 'a' of row 0"),
        (8, "id", "id: missing record key"),
    ]

    def typed(prefix: str) -> pa.Table:
        t = pa.Table.from_pylist(rows)
        return t.set_column(0, "id", pa.array([None if r["id"] is None else prefix + r["id"] for r in rows]))

    def csv(prefix: str) -> bytes:
        lines = ["id,age,plan,visits,flag,churned"]
        for r in rows:
            cells = [("" if r["id"] is None else prefix + r["id"]), *(r[c] for c in list(r)[1:])]
            lines.append(",".join("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                                  for v in cells))  # fmt: skip
        return ("\n".join(lines) + "\n").encode()

    def keyed(prefix: str) -> list[dict[str, Any]]:
        return [{**r, "id": None if r["id"] is None else prefix + r["id"]} for r in rows]

    bodies: dict[str, tuple[dict[str, str], Callable[[str], bytes]]] = {
        "json": (JSON, lambda p: json.dumps(keyed(p)).encode()),
        "ndjson": (NDJSON, lambda p: "\n".join(json.dumps(r) for r in keyed(p)).encode()),
        "csv": (CSV, csv),
        "arrow": (ARROW, lambda p: stream(typed(p))),
        "arrow file": (ARROW_FILE, lambda p: arrow_file(typed(p))),
        "parquet": (PARQUET, lambda p: parquet(typed(p))),
    }
    app, _ = create_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        await client.put("/v1/datasets/k", json=SCHEMA)
        for name, (headers, encode) in bodies.items():
            answer = await client.post(POST, content=encode(name), headers=headers)
            assert answer.status_code == 200, (name, answer.text)
            body = answer.json()
            assert (body["accepted"], body["rejected"]) == (3, 7), (name, body)
            got = [(r["row"], r["field"], r["reason"]) for r in body["rejections"]]
            assert got == [(row, field, reason.replace("'a'", f"'{name}a'")) for row, field, reason in expected], name
        stored = (await client.get("/v1/datasets/k/rejections?limit=1000")).json()
        assert stored["total"] == 7 * len(bodies)
        for r in stored["rejections"]:
            assert r["record"] is not None, r
            assert r["field"] is not None, r
        assert {r["record"]["plan"] for r in stored["rejections"] if r["row"] == 4} == {"Basic"}
        strict = await client.post(f"{POST}?mode=strict", content=stream(typed("s")), headers=ARROW)
        assert_error(strict, 422, "row 2: age: 17.999 is below the minimum 18.0", "(and 6 more rows)")


async def test_keys_that_could_not_be_stored_are_rejected_rows(isolated: Isolation) -> None:
    """A typed body can carry what JSON and CSV bodies cannot: a key holding a NUL, or one longer than
    PostgreSQL indexes. Each is a rejected row naming the key column; the other rows are stored. A key
    is its text: 7 sent as an integer in Arrow and "7" in JSON are the same key."""
    app, _ = create_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        await client.put("/v1/datasets/k", json=SCHEMA)
        keys = pa.array(["ok", "n\x00ul", "x" * 5000, "\u00e9" * 600, "fine"])
        answer = await client.post(POST, content=stream(table(5, id=keys)), headers=ARROW)
        assert answer.status_code == 200, answer.text
        assert answer.json()["rejections"] == [
            {"row": 1, "field": "id", "reason": "id: the record key holds a NUL character"},
            {"row": 2, "field": "id", "reason": "id: the record key is 5000 bytes long; the limit is 1024"},
            {"row": 3, "field": "id", "reason": "id: the record key is 1200 bytes long; the limit is 1024"},
        ]
        assert answer.json()["accepted"] == 2
        answer = await client.post(POST, content=parquet(table(2, id=pa.array([7, 8]))), headers=PARQUET)
        assert answer.json()["accepted"] == 2
        again = await client.post(POST, json=[{"id": "7", "age": 30, "plan": "pro", "churned": "no"}])
        assert again.json()["rejections"] == [
            {"row": 0, "field": "id", "reason": "duplicate key '7': an earlier submission stored it"}
        ]
        rejected = (await client.get("/v1/datasets/k/rejections")).json()["rejections"]
        assert {r["record"]["id"] for r in rejected if r["row"] == 1} == {"n\x00ul"}


async def test_awkward_text_bodies_are_read_and_their_bad_rows_named(isolated: Isolation) -> None:
    """Text bodies that are unusual but readable are read; each bad row in them is a rejection naming it."""
    header = "id,age,plan,visits,flag,churned"
    good = "{},30,basic,1,true,no"
    cases: list[tuple[str, bytes, dict[str, str], int, list[tuple[int, str | None, str]]]] = [
        ("CSV with CR line ends", "\r".join([header, good.format("cr0"), good.format("cr1"), ""]).encode(), CSV, 2,
         []),
        ("CSV with a BOM and quotes", ("\ufeff" + header + '\n"q0",30,"basic",1,true,no\n').encode(), CSV, 1, []),
        ("CSV with a cell of 2 MB", f"{header}\nbig0,30,{'x' * 2_000_000},1,true,no\n{good.format('big1')}\n".encode(),
         CSV, 1, [(0, "plan", "plan: unknown category 'xxx")]),
        ("CSV ragged", f"{header}\nr0,30,basic,1,true,no,extra\nr1,30\n{good.format('r2')}\n".encode(), CSV, 1,
         [(0, None, "CSV line 2 has more cells than the header"),
          (1, "plan", "plan: missing value")]),
        ("CSV CR ragged", "\r".join([header, good.format("s0") + ",x", good.format("s1"), ""]).encode(), CSV, 1,
         [(0, None, "CSV line 2 has more cells than the header")]),
        ("JSON items that are not objects", b'[1, "x", null, [], {"id": "j0", "age": 30, "plan": "basic", '
         b'"churned": "no"}]', JSON, 1,
         [(0, None, "record is a int, not a JSON object"), (1, None, "record is a str, not a JSON object"),
          (2, None, "record is a NoneType, not a JSON object"), (3, None, "record is a list, not a JSON object")]),
        ("JSON NaN, infinities and a 400-digit number",
         b'[{"id": "n0", "age": NaN, "plan": "basic", "churned": "no"}, '
         b'{"id": "n1", "age": -Infinity, "plan": "basic", "churned": "no"}, '
         b'{"id": "n2", "age": 1' + b"0" * 400 + b', "plan": "basic", "churned": "no"}, '
         b'{"id": "n3", "age": 30, "visits": 1' + b"0" * 30 + b', "plan": "basic", "churned": "no"}, '
         b'{"id": true, "age": 30, "plan": "basic", "churned": "no"}]', JSON, 0,
         [(0, "age", "age: NaN where the column is not nullable"), (1, "age", "age: infinite value"),
          (2, "age", "age: integer too large to be a number"),
          (3, "visits", "visits: 1000000000000000000000000000000 is outside the 64-bit integer range"),
          (4, "id", "id: a boolean cannot be a record key")]),
        ("NDJSON with bad lines", b'{"id": "d0", "age": 30, "plan": "basic", "churned": "no"}\r\nnot json\n[1]\n'
         b'{"id": "d1", "id": "d2"}\n', NDJSON, 1,
         [(1, None, "line is not valid JSON"), (2, None, "line is a list, not a JSON object"),
          (3, None, "duplicate key 'id'")]),
    ]  # fmt: skip
    app, _ = create_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        await client.put("/v1/datasets/k", json=SCHEMA)
        for why, body, headers, accepted, reasons in cases:
            answer = await client.post(POST, content=body, headers=headers)
            assert answer.status_code == 200, (why, answer.text[:300])
            got = answer.json()
            assert got["accepted"] == accepted, (why, got)
            assert len(got["rejections"]) == len(reasons), (why, got["rejections"])
            for (row, field, reason), r in zip(reasons, got["rejections"], strict=True):
                assert (r["row"], r["field"]) == (row, field), (why, r)
                assert reason in r["reason"], (why, r["reason"][:200])
                assert len(r["reason"]) < 300, (why, "a reason quotes a long value only in part")
        stored = (await client.get("/v1/datasets/k/rejections?limit=1000")).json()
        assert stored["total"] == sum(len(c[4]) for c in cases)


async def test_a_refused_body_does_not_spend_its_idempotency_key(isolated: Isolation) -> None:
    """A body refused with a 4xx claims nothing: the same key then carries the corrected body, whose
    retry is answered from the first answer; the key with yet another body is a 409."""
    app, runtime = create_app(isolated.settings(IngestSettings, max_decoded_bytes=LIMIT))
    key = {"Idempotency-Key": "upload-1"}
    async with serve(app) as client:
        await client.put("/v1/datasets/k", json=SCHEMA)
        good = stream(table())
        bomb = stream(table(2000, pad=zeros_column(2000, 10_000)), "zstd")
        assert_error(await client.post(POST, content=bomb, headers={**ARROW, **key}), 413, "expands")
        assert_error(await client.post(POST, content=good[:-70], headers={**ARROW, **key}), 400, "Arrow")
        first = await client.post(POST, content=good, headers={**ARROW, **key})
        assert first.status_code == 200, first.text
        retry = await client.post(POST, content=good, headers={**ARROW, **key})
        assert retry.json() == first.json()
        assert_error(await client.post(POST, content=stream(table(2)), headers={**ARROW, **key}), 409, "upload-1")
        assert await runtime.db.fetchval("SELECT count(*) FROM submissions") == 1


async def test_view_and_run_end_encoded_columns_are_read_as_their_plain_types(isolated: Isolation) -> None:
    """Arrow's newer layouts (string and binary views, run-end encoding) are read as the plain types,
    declared columns and extra ones alike, and a rejected row's record is kept from them."""
    columns = {
        "plan": pa.array(["basic", "gold", "pro"], pa.string_view()),
        "churned": pa.RunEndEncodedArray.from_arrays([2, 3], ["no", "yes"]),
        "note": pa.array([b"a", b"b", b"c"], pa.binary_view()),
        "tag": pa.RunEndEncodedArray.from_arrays([3], [7]),
    }
    app, _ = create_app(isolated.settings(IngestSettings))
    async with serve(app) as client:
        await client.put("/v1/datasets/k", json=SCHEMA)
        for name, (headers, encode) in {"stream": (ARROW, stream), "file": (ARROW_FILE, arrow_file)}.items():
            body = encode(table(**columns, id=pa.array([f"{name}{i}" for i in range(3)])))
            answer = await client.post(POST, content=body, headers=headers)
            assert answer.status_code == 200, (name, answer.text)
            assert answer.json()["rejections"] == [
                {"row": 1, "field": "plan", "reason": "plan: unknown category 'gold' (allowed: basic, pro)"}
            ]
        records = [r["record"] for r in (await client.get("/v1/datasets/k/rejections")).json()["rejections"]]
    assert [(r["plan"], r["churned"], r["tag"]) for r in records] == [("gold", "no", 7)] * 2
