"""``driftloop datasets post``'s cutting of files into request bodies: formats, limits, record
boundaries, the same bodies on every run, and what ingest's own parser reads from them."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from cli import upload
from cli.posting import Refused, Summary, send_chunk
from cli.upload import Chunk, Unreadable
from libs.common.events import ARROW_STREAM
from services.ingest.domain.parsing import parse_body

ROWS = 2_500


def _table(rows: int = ROWS) -> pa.Table:
    return pa.table({
        "age": pa.array([18.0 + i % 80 for i in range(rows)]),
        "plan": pa.array(["basic" if i % 3 else "pro" for i in range(rows)]),
        "visits": pa.array([None if i % 7 == 0 else i for i in range(rows)], pa.int64()),
    })  # fmt: skip


def _read(chunks: list[Chunk]) -> pa.Table:
    """The rows ingest's parser reads from the chunks' bodies, one table."""
    tables = [parse_body(c.body, c.content_type).table for c in chunks]
    return pa.concat_tables([t for t in tables if t is not None])


@pytest.mark.parametrize(
    ("name", "found"),
    [("a.parquet", "parquet"), ("a.PQ", "parquet"), ("a.arrow", "arrow"), ("a.arrows", "arrow"),
     ("a.feather", "arrow"), ("a.ipc", "arrow"), ("a.csv", "csv"), ("a.json", "json"), ("a.ndjson", "ndjson"),
     ("a.jsonl", "ndjson")],
)  # fmt: skip
def test_the_format_is_told_by_the_suffix(name: str, found: str) -> None:
    assert upload.detect(Path(name)) == found


def test_format_overrides_the_suffix_and_an_unknown_suffix_asks_for_it() -> None:
    assert upload.detect(Path("export.txt"), "csv") == "csv"
    with pytest.raises(Unreadable, match=r"cannot tell the format of export.txt .*give --format"):
        upload.detect(Path("export.txt"))
    with pytest.raises(Unreadable, match="unknown format 'xlsx'"):
        upload.detect(Path("a.csv"), "xlsx")


def test_parquet_is_cut_into_arrow_streams_under_both_limits_and_read_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(_table(), path, row_group_size=700)  # row groups do not line up with requests
    chunks = list(upload.chunks(path, "parquet", max_rows=1_000, max_bytes=1 << 20))
    assert [c.rows for c in chunks] == [1_000, 1_000, 500]
    assert [c.first_row for c in chunks] == [0, 1_000, 2_000]
    assert {c.content_type for c in chunks} == {ARROW_STREAM}
    assert _read(chunks).equals(_table())
    # zstd-compressed buffers: ingest reads them as they are
    assert pa.ipc.open_stream(chunks[0].body).read_all().num_rows == 1_000
    narrow = list(upload.chunks(path, "parquet", max_rows=1_000, max_bytes=2_048))
    assert max(len(c.body) for c in narrow) <= 2_048 < max(len(c.body) for c in chunks)
    assert _read(narrow).equals(_table())


def test_a_large_parquet_file_is_never_held_whole(tmp_path: Path) -> None:
    """Memory follows a request's size, not the file's: 20 row groups of 1.5 MiB, 30 MiB in all."""
    rng = np.random.default_rng(0)
    group = pa.table({f"x{i}": rng.normal(size=50_000) for i in range(4)})
    path = tmp_path / "large.parquet"
    with pq.ParquetWriter(path, group.schema) as writer:
        for _ in range(20):
            writer.write_table(group)
    held = pa.total_allocated_bytes()
    peak = rows = 0
    for chunk in upload.chunks(path, "parquet"):
        peak, rows = max(peak, pa.total_allocated_bytes() - held), rows + chunk.rows
    assert rows == 1_000_000
    assert peak < 16 * 2**20  # 9 MiB; pre-buffered column chunks, kept until the reader closed, took 45


def test_the_same_file_is_cut_into_the_same_bodies_every_time(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(_table(), path, row_group_size=300)
    first = [c.body for c in upload.chunks(path, "parquet", max_rows=900, max_bytes=16_384)]
    assert first == [c.body for c in upload.chunks(path, "parquet", max_rows=900, max_bytes=16_384)]
    assert len(first) > 3


@pytest.mark.parametrize("as_file", [True, False])
def test_arrow_files_and_streams_are_read_batch_by_batch(tmp_path: Path, as_file: bool) -> None:
    path = tmp_path / "rows.arrow"
    table = _table()
    with pa.OSFile(str(path), "wb") as sink:
        opened = pa.ipc.new_file if as_file else pa.ipc.new_stream
        with opened(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=333)
    chunks = list(upload.chunks(path, "arrow", max_rows=1_000))
    assert [c.rows for c in chunks] == [1_000, 1_000, 500]
    assert _read(chunks).equals(table)


def test_windows_hold_at_most_max_rows_and_max_bytes_and_at_least_one_row() -> None:
    batches = _table().to_batches(max_chunksize=400)
    cut = list(upload.windows(batches, 1_000, 1 << 30))
    assert [t.num_rows for t in cut] == [1_000, 1_000, 500]
    width = _table().nbytes / ROWS
    by_bytes = list(upload.windows(batches, 1_000, int(width * 100)))
    assert {t.num_rows for t in by_bytes[:-1]} <= {99, 100}  # the budget over each batch's mean row width
    assert sum(t.num_rows for t in by_bytes) == ROWS
    assert [t.num_rows for t in upload.windows(batches[:1], 1_000, 1)] == [1] * 400  # a row wider than the limit


def test_a_row_wider_than_a_request_is_said_so(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"text": [os.urandom(8_000).hex() for _ in range(3)]}), path)
    with pytest.raises(Unreadable, match="a single row takes more than a request's 4,096 bytes"):
        list(upload.chunks(path, "parquet", max_bytes=4_096))


def test_a_file_that_is_not_its_format_or_holds_no_records_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "text.parquet").write_text("age,plan\n")
    with pytest.raises(Unreadable, match=r"text\.parquet could not be read as parquet"):
        list(upload.chunks(tmp_path / "text.parquet", "parquet"))
    (tmp_path / "header.csv").write_text("age,plan\n\n")
    with pytest.raises(Unreadable, match=r"header\.csv holds no records"):
        list(upload.chunks(tmp_path / "header.csv", "csv"))


def test_csv_records_end_where_their_quotes_balance() -> None:
    text = b'a,b\r\n1,"two\nlines"\r\n\r\n2,"say ""hi"""\n3,x'
    assert list(upload.csv_records(io.BytesIO(text))) == [
        b"a,b\r\n", b'1,"two\nlines"\r\n', b'2,"say ""hi"""\n', b"3,x"
    ]  # fmt: skip


def test_csv_is_sent_as_text_with_its_header_on_every_chunk(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    rows = [f'{20 + i},"basic, or\nnot",{i}\n' for i in range(50)]
    path.write_bytes(b"\xef\xbb\xbfage,plan,visits\n" + "".join(rows).encode())
    chunks = list(upload.chunks(path, "csv", max_rows=20))
    assert [c.rows for c in chunks] == [20, 20, 10]
    assert all(c.body.startswith(b"age,plan,visits\n") and c.content_type == upload.CSV for c in chunks)
    read = _read(chunks)  # ingest reads every cell as the text it was
    assert read.column("age").to_pylist() == [str(20 + i) for i in range(50)]
    assert set(read.column("plan").to_pylist()) == {"basic, or\nnot"}
    by_bytes = list(upload.chunks(path, "csv", max_rows=1_000, max_bytes=200))
    assert all(len(c.body) <= 200 for c in by_bytes)
    assert sum(c.rows for c in by_bytes) == 50


def test_ndjson_is_cut_between_lines_and_blank_lines_are_not_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.ndjson"
    path.write_text("".join(json.dumps({"age": i}) + "\n" + ("\n" if i % 4 == 0 else "") for i in range(10)))
    chunks = list(upload.chunks(path, "ndjson", max_rows=4))
    assert [(c.first_row, c.rows) for c in chunks] == [(0, 4), (4, 4), (8, 2)]
    assert [r["age"] for c in chunks for r in parse_body(c.body, c.content_type).rows if r] == list(range(10))


def test_a_json_array_is_sent_as_ndjson_keeping_nan(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('{"records": [{"age": 30, "plan": "pro"}, {"age": NaN}, 7]}')
    (chunk,) = upload.chunks(path, "json")
    assert chunk.content_type == upload.NDJSON
    parsed = parse_body(chunk.body, chunk.content_type)
    assert parsed.rows[0] == {"age": 30, "plan": "pro"}
    nan = (parsed.rows[1] or {})["age"]
    assert nan != nan  # NaN, for ingest to judge
    assert parsed.unreadable == {2: "line is a int, not a JSON object"}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"plan": "é"}] * 3))
    assert [c.rows for c in upload.chunks(plain, "json", max_rows=2)] == [2, 1]


@pytest.mark.parametrize(
    ("text", "says"),
    [('{"age": 1}', "not a JSON array of records"), ('[{"age": 1, "age": 2}]', "duplicate key 'age'"),
     ("[{", "not valid JSON")],
)  # fmt: skip
def test_a_json_file_ingest_would_refuse_is_refused_before_sending(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(Unreadable, match=says):
        list(upload.chunks(path, "json"))


def test_a_text_record_over_the_limit_is_named() -> None:
    with pytest.raises(Unreadable, match="record 1 alone takes 2,001 bytes, more than a request's 1,024"):
        list(upload.text_bodies([b"x\n", b"y" * 2_000 + b"\n"], b"h\n", 10, 1_024))


def test_keys_follow_the_file_and_the_dataset() -> None:
    digest = upload.file_digest(Path(__file__))
    prefix = upload.key_prefix("churn", digest)
    assert prefix == upload.key_prefix("churn", digest) != upload.key_prefix("other", digest)
    assert prefix != upload.key_prefix("churn", "0" * 64)
    key = upload.idempotency_key(prefix, 12_345)
    assert key.endswith("-12345")
    assert re.fullmatch(r"[\x21-\x7e]{1,200}", key)  # what ingest's Idempotency-Key header accepts


def _answer(accepted: int, rejected: list[int], version: int | None) -> dict[str, Any]:
    return {"accepted": accepted, "rejected": len(rejected), "version": version,
            "rejections": [{"row": r, "field": "age", "reason": "age: too young"} for r in rejected]}  # fmt: skip


def test_a_summary_counts_rows_stored_now_and_before_and_numbers_rejections_as_in_the_file() -> None:
    summary = Summary(dataset="churn", file="rows.parquet", format="parquet")
    summary.add(Chunk(0, 0, 100, b"", ""), _answer(99, [5], 3), replayed=True, throttled_s=0)
    summary.add(Chunk(1, 100, 100, b"", ""), _answer(98, [0, 99], 4), replayed=False, throttled_s=1.5)
    summary.add(Chunk(2, 200, 100, b"", ""), _answer(0, list(range(100)), None), replayed=False, throttled_s=0)
    summary.seconds = 2.0
    doc = summary.to_dict()
    assert (doc["requests"], doc["rows"], doc["accepted"], doc["rejected"]) == (3, 300, 98, 102)
    assert doc["replayed"] == {"requests": 1, "accepted": 99, "rejected": 1}
    assert (doc["versions"], doc["rows_per_s"], doc["throttled_s"]) == ([4], 150.0, 1.5)
    assert [r["row"] for r in doc["rejections"][:4]] == [5, 100, 199, 200]
    assert len(doc["rejections"]) == 100
    assert dict(summary.lines())["stored before"].startswith("1 requests already posted")


def test_a_refusal_names_the_chunk_and_the_files_row() -> None:
    chunk = Chunk(2, 2_000, 1_000, b"", ARROW_STREAM)
    refused = Refused(chunk, 422, "row 50: age: too young", {"error": "validation_failed", "row": 50})
    described = refused.describe()
    assert described["message"] == ("chunk 2 (file rows 2,000-2,999) refused: 422 row 50: age: too young "
                                    "(row 50 of the chunk is the file's row 2,050)")  # fmt: skip
    assert (described["error"], described["hint"]) == ("validation_failed", None)
    assert "--key" in Refused(chunk, 409, "used for a different request").describe()["hint"]


def test_csv_written_by_pyarrow_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    pcsv.write_csv(_table(), path)
    chunks = list(upload.chunks(path, "csv", max_rows=1_000))
    assert [c.rows for c in chunks] == [1_000, 1_000, 500]
    assert _read(chunks).column("plan").to_pylist() == _table().column("plan").to_pylist()


def test_a_transient_failure_is_retried_with_the_same_key_and_a_refusal_is_not() -> None:
    seen: list[tuple[str, str]] = []

    def ingest(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["idempotency-key"], request.url.params["mode"]))
        if len(seen) == 1:
            return httpx.Response(503, headers={"retry-after": "0"}, json={"error": "unavailable", "message": "db"})
        if request.headers["content-type"] == upload.CSV:
            return httpx.Response(400, json={"error": "bad_request", "message": "CSV body could not be read"})
        return httpx.Response(200, json=_answer(10, [], 1))

    chunk = Chunk(0, 0, 10, b"...", ARROW_STREAM)
    with httpx.Client(transport=httpx.MockTransport(ingest), base_url="http://ingest") as http:
        answered, throttled = send_chunk(http, "churn", chunk, "k-0", "strict")
        assert (answered.status_code, throttled, seen) == (200, 0.0, [("k-0", "strict")] * 2)
        with pytest.raises(Refused) as refused:
            send_chunk(http, "churn", Chunk(1, 10, 10, b"a\n1\n", upload.CSV), "k-1", "strict")
    assert refused.value.describe()["message"] == "chunk 1 (file rows 10-19) refused: 400 CSV body could not be read"
    assert len(seen) == 3  # not retried
