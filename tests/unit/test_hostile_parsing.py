"""Bodies garbled byte by byte: parsing and validating one either works or raises a 4xx error
naming the cause; never another exception, never a crash (a garbled Arrow offset once had
pyarrow.compute read out of bounds and kill the process). And an Arrow body's size is known
from its metadata before a compressed buffer is decoded."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.errors import DriftloopError
from libs.common.schema import DatasetSchema
from services.ingest.domain import arrow_ipc, parquet_pages, quarantine
from services.ingest.domain.parsing import parse_body
from services.ingest.domain.validation import validate
from tests.bodies import arrow_file, arrow_stream, parquet

SCHEMA = DatasetSchema.model_validate(
    {
        "features": [
            {"name": "visits", "dtype": "integer", "nullable": True},
            {"name": "age", "dtype": "numeric", "min": 18, "max": 100},
            {"name": "score", "dtype": "numeric", "nullable": True},
            {"name": "plan", "dtype": "categorical", "categories": ["basic", "pro"]},
            {"name": "active", "dtype": "boolean", "nullable": True},
        ],
        "target": {"name": "churned", "dtype": "categorical", "categories": ["no", "yes"]},
        "task": "classification",
        "key": "id",
    }
)
TABLE = pa.table(
    {
        "id": [f"k{i}" for i in range(40)],
        "age": [10.0 + 3 * i for i in range(40)],
        "plan": pa.array(["basic", "pro", "gold", "basic"] * 10).dictionary_encode(),
        "visits": pa.array([i if i % 3 else None for i in range(40)], pa.int32()),
        "churned": ["no", "yes"] * 20,
        "extra": [[i, None] for i in range(40)],
    }
)


def _stream(table: pa.Table, compression: str | None = None) -> bytes:
    return arrow_stream(table, compression, batch_rows=15)


_ROWS = TABLE.drop_columns(["plan"]).append_column("plan", pa.array(["basic", "pro", "gold", "basic"] * 10))
BODIES = [
    (_stream(TABLE), "application/vnd.apache.arrow.stream"),
    (_stream(TABLE, "lz4"), "application/vnd.apache.arrow.stream"),
    (_stream(TABLE, "zstd"), "application/vnd.apache.arrow.stream"),
    (arrow_file(TABLE), "application/vnd.apache.arrow.file"),
    (parquet(TABLE, row_group_size=20), "application/vnd.apache.parquet"),
    (parquet(TABLE, row_group_size=20, compression="zstd", use_dictionary=False), "application/vnd.apache.parquet"),
    (json.dumps(_ROWS.to_pylist()).encode(), "application/json"),
    (b"\n".join(json.dumps(r).encode() for r in _ROWS.to_pylist()), "application/x-ndjson"),
    (b"id,age,plan,visits,churned\n" + b"".join(f'k{i},{i},"basic",{i},no\n'.encode() for i in range(40)), "text/csv"),
]


def _judged(body: bytes, media: str, encoding: str = "") -> None:
    """Parse, validate and quarantine ``body`` as the route does; a refusal must be a 4xx."""
    try:
        parsed = parse_body(body, media, content_encoding=encoding, max_decoded=1 << 20, max_rows=1000)
        result = validate(SCHEMA, records=parsed.records, table=parsed.table, from_text=parsed.from_text,
                          unreadable=parsed.unreadable)  # fmt: skip
        for _, _, block in quarantine.blocks(result.rejected):
            quarantine.newest(block, 1, None, 100)
    except DriftloopError as exc:
        refused: DriftloopError | None = exc
    else:
        refused = None
    if refused is not None:
        assert 400 <= refused.status_code < 500, refused.message
        assert refused.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(BODIES) - 1),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(max_size=8)), min_size=1, max_size=4),
)
def test_a_garbled_body_is_read_or_refused_with_a_4xx(which: int, edits: list[tuple[float, bytes]]) -> None:
    body, media = BODIES[which]
    garbled = bytearray(body)
    for where, replacement in edits:
        at = int(where * len(garbled))
        garbled[at : at + max(1, len(replacement))] = replacement  # an empty replacement cuts a byte
    _judged(bytes(garbled), media)


@given(cut=st.integers(0, 400))
def test_a_truncated_body_is_read_or_refused_with_a_4xx(cut: int) -> None:
    for body, media in BODIES:
        _judged(body[: max(0, len(body) - cut)], media)
        packed = gzip.compress(body)
        _judged(packed[: max(0, len(packed) - cut)], media, "gzip")


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compressed_batches_are_measured_before_they_are_decoded(compression: str) -> None:
    big = pa.table({"pad": [b"\x00" * 10_000] * 300, "n": list(range(300))})
    plain, packed = arrow_ipc.stream_messages(_stream(big)), arrow_ipc.stream_messages(_stream(big, compression))
    assert plain[1] == packed[1] == 0  # nothing after the end-of-stream marker
    rows, decoded = arrow_ipc.batches(packed[0])
    assert rows == arrow_ipc.batches(plain[0])[0] == 300
    # what the prefixes declare is what decoding gives (the uncompressed buffers are padded besides)
    assert big.nbytes <= decoded <= arrow_ipc.batches(plain[0])[1]
    assert decoded > 10 * len(_stream(big, compression))
    rows, decoded = arrow_ipc.batches(arrow_ipc.file_messages(arrow_file(big)))  # the file, through its footer
    assert rows == 300
    assert decoded >= big.nbytes


def test_malformed_metadata_is_named() -> None:
    body = arrow_file(TABLE)
    with pytest.raises(arrow_ipc.Malformed, match="footer"):
        arrow_ipc.file_messages(body[:-10] + b"\xff\xff\xff\x7f" + body[-6:])
    with pytest.raises(arrow_ipc.Malformed, match="ARROW1"):
        arrow_ipc.file_messages(body[:-1])


@pytest.mark.parametrize(
    "options",
    [{}, {"compression": "zstd", "use_dictionary": False, "data_page_size": 500}, {"data_page_version": "2.0"},
     {"write_page_index": True, "row_group_size": 700}],
)  # fmt: skip
def test_parquet_pages_are_measured_from_their_headers(options: dict[str, object]) -> None:
    body = parquet(pa.concat_tables([TABLE] * 100), **options)
    meta = pq.read_metadata(pa.BufferReader(body))
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    declared = parquet_pages.declared_bytes(body, 1 << 30)
    # the footer's totals count the page headers besides (a few dozen bytes a page)
    assert (
        0.9 * sum(c.total_uncompressed_size for c in chunks)
        < declared
        <= sum(c.total_uncompressed_size for c in chunks)
    )
    first = min(c.dictionary_page_offset or c.data_page_offset for c in chunks)
    assert body[first] == 0x15  # a header's first field: the page's type
    with pytest.raises(parquet_pages.Malformed):
        parquet_pages.declared_bytes(body[: first + 3] + b"\xff" * 12 + body[first + 15 :], 1 << 30)
