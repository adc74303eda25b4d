"""records.submitted with Arrow IPC payloads: the event's shape, the producer helper, and how a
micro-batch mixing JSON and Arrow events is judged as one submission."""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.records import read_table
from libs.common.arrow_records import arrow_events, arrow_stream
from libs.common.errors import BadRequest, DriftloopError, InvalidEvent, PayloadTooLarge
from libs.common.events import RecordsSubmitted, parse_event
from services.ingest.domain.submitted import JSON_RECORD_BYTES, Cap, Part, Run, combine, read_arrow, runs
from services.ingest.domain.validation import SchemaMismatch, validate_records
from tests.unit.test_columnar_validation import SCHEMA, UNKEYED, assert_same

ARROW_TYPES = pa.schema([("x", pa.float64()), ("n", pa.int64()), ("m", pa.int64()), ("c", pa.string()),
                         ("g", pa.bool_()), ("y", pa.string()), ("id", pa.int64())])  # fmt: skip
NARROW = ARROW_TYPES.set(1, pa.field("n", pa.int32()))
LIMITS: dict[str, Any] = {"max_decoded": 1 << 20, "max_rows": 10_000}


def _envelope(**fields: Any) -> bytes:
    return json.dumps({"event_type": "records.submitted", "producer": "crm", "dataset": "d", **fields}).encode()


def test_an_arrow_event_round_trips_as_base64_in_json() -> None:
    data = arrow_stream(pa.table({"x": [1.0, 2.0]}))
    event = RecordsSubmitted(producer="crm", dataset="d", arrow=data)
    raw = json.loads(event.to_bytes())
    assert raw["arrow"] == base64.b64encode(data).decode()
    assert raw["records"] is None
    back = parse_event(event.to_bytes(), (RecordsSubmitted,))
    assert back == event
    assert isinstance(back, RecordsSubmitted)
    assert back.arrow == data


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "exactly one of 'records'.*got neither"),
        ({"records": [{"x": 1}], "arrow": "AAAA"}, "exactly one of 'records'.*not both"),
        ({"arrow": "not base64!"}, "arrow: Value error, not valid base64"),
        ({"arrow": ""}, "'arrow' is empty"),
        ({"records": []}, "records: List should have at least 1 item"),
    ],
)
def test_an_event_needs_exactly_one_payload(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(_envelope(**fields), (RecordsSubmitted,))


def test_the_json_schema_says_the_payload_is_base64_arrow() -> None:
    arrow = RecordsSubmitted.model_json_schema()["properties"]["arrow"]["anyOf"][0]
    assert arrow == {"type": "string", "contentEncoding": "base64",
                     "contentMediaType": "application/vnd.apache.arrow.stream"}  # fmt: skip


def test_the_helper_cuts_a_table_into_events_that_fit_a_message() -> None:
    rng = random.Random(3)
    table = pa.table({"x": [rng.random() for _ in range(20_000)], "c": [rng.choice("ab") for _ in range(20_000)]})
    events = list(arrow_events(table, dataset="d", producer="crm", max_message_bytes=40_000, principal="up"))
    assert len(events) > 3
    assert all(len(e.to_bytes()) <= 40_000 for e in events)
    assert all(e.principal == "up" for e in events)
    parts = [pa.ipc.open_stream(e.arrow).read_all() for e in events if e.arrow is not None]
    assert pa.concat_tables(parts).equals(table)  # every row, in order
    # Narrow rows: 400,000 booleans fit one message, but ingest takes at most max_rows rows an event.
    narrow = pa.table({"flag": [True, False] * 200_000})
    cut = list(arrow_events(narrow, dataset="d", producer="crm", max_rows=100_000))
    assert [pa.ipc.open_stream(e.arrow).read_all().num_rows for e in cut if e.arrow is not None] == [100_000] * 4
    with pytest.raises(ValueError, match="alone takes more than"):
        list(
            arrow_events(
                pa.table({"s": ["x" * 5000]}), dataset="d", producer="crm", max_message_bytes=2000, compression=None
            )
        )


def _typed_records(rng: random.Random, n: int, start: int) -> list[dict[str, Any]]:
    """Values Arrow and JSON carry alike (no text where a number belongs): the same rows in either form."""
    return [
        {
            "x": rng.choice([1.0, 5.5, 11.0, -0.5, None, float("nan")]),
            "n": rng.choice([1, -7, None]),
            "m": rng.choice([0, 3]),
            "c": rng.choice(["a", "b", "z", None]),
            "g": rng.choice([True, False, None]),
            "y": rng.choice(["no", "yes", "maybe"]),
            "id": rng.choice([None, *range(start, start + 40)]),  # repeats within and across events
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("schema", [SCHEMA, UNKEYED])
def test_a_mixed_micro_batch_is_judged_as_one_json_batch_of_the_same_rows(seed: int, schema: Any) -> None:
    """Rows numbered across events, reasons word for word, a key repeated in a later event refused
    naming the earlier row: exactly as if every row had come in one JSON event."""
    rng = random.Random(seed)
    events = [_typed_records(rng, rng.randint(1, 60), start=10 * i) for i in range(8)]
    parts: list[Part] = []
    for i, rows in enumerate(events):
        if (i + seed) % 3:
            # two Arrow schemas: runs of the same one are validated together, the others joined
            table = pa.Table.from_pylist(rows, schema=ARROW_TYPES if i % 4 else NARROW)
            parts.append(read_arrow(schema, arrow_stream(table, "lz4" if i % 2 else None), **LIMITS))
        else:
            parts.append(list(rows))
    every: list[dict[str, Any] | None] = [r for rows in events for r in rows]
    result = combine(schema, parts)
    assert_same(schema, result, every, from_text=False)
    assert len(result.rejected) > 0
    assert [k for _, k, _ in result.keys] == [str(r["id"]) for r in result.originals([k[0] for k in result.keys])]
    rejected = [r.row for r in result.rejected]
    # the quarantine keeps the rows as sent (repr: NaN is not equal to itself)
    assert repr(result.originals(rejected)) == repr([every[row] for row in rejected])


def test_consecutive_json_events_are_validated_together() -> None:
    rows = _typed_records(random.Random(1), 30, start=0)
    alone = validate_records(SCHEMA, list(rows))
    joined = combine(SCHEMA, [rows[:10], rows[10:25], rows[25:]])
    assert [(r.row, r.reason) for r in joined.rejected] == [(r.row, r.reason) for r in alone.rejected]
    assert joined.accepted.equals(alone.accepted)


def _good(n: int = 3) -> pa.Table:
    return pa.table({"x": [1.0] * n, "m": [1] * n, "c": ["a"] * n, "g": [True] * n, "y": ["no"] * n,
                     "id": list(range(n))})  # fmt: skip


def test_an_arrow_payload_is_refused_as_the_http_route_refuses_its_body() -> None:
    with pytest.raises(BadRequest, match="not a readable Arrow IPC stream"):
        read_arrow(SCHEMA, b"\x00garbage, not arrow", **LIMITS)
    with pytest.raises(BadRequest, match="not a readable Arrow IPC stream"):
        read_arrow(SCHEMA, arrow_stream(_good())[:-40], **LIMITS)  # truncated
    with pytest.raises(SchemaMismatch, match="'c' is int64"):
        read_arrow(SCHEMA, arrow_stream(_good().set_column(2, "c", pa.array([1, 2, 3]))), **LIMITS)
    with pytest.raises(SchemaMismatch, match="no column 'x'"):
        read_arrow(SCHEMA, arrow_stream(_good().drop_columns(["x"])), **LIMITS)
    big = _good(50_000).drop_columns(["id"]).append_column("pad", pa.array(["p" * 20] * 50_000))
    small = arrow_stream(big, "zstd")  # compressed buffers: it expands past the limit once read
    assert len(small) < (1 << 20) < big.nbytes
    with pytest.raises(PayloadTooLarge, match="expands past the limit of 1048576 bytes"):
        read_arrow(UNKEYED, small, max_decoded=1 << 20, max_rows=100_000)
    with pytest.raises(BadRequest, match="holds 50000 records; the limit is 10000"):
        read_arrow(UNKEYED, small, max_decoded=1 << 30, max_rows=10_000)
    assert read_arrow(UNKEYED, small, max_decoded=1 << 30, max_rows=100_000).num_rows == 50_000


def _event(rows: list[dict[str, Any]], arrow: bool) -> RecordsSubmitted:
    if not arrow:
        return RecordsSubmitted(producer="crm", dataset="d", records=rows)
    return RecordsSubmitted(producer="crm", dataset="d",
                            arrow=arrow_stream(pa.Table.from_pylist(rows, schema=ARROW_TYPES), "zstd"))  # fmt: skip


def _rows(run: Run) -> int:
    return sum(len(p) if isinstance(p, list) else p.num_rows for _, p in run.parts)


@pytest.mark.parametrize("seed", range(6))
def test_a_micro_batch_is_cut_into_runs_under_the_cap_keeping_every_event_in_order(seed: int) -> None:
    """Each run is as long as the cap allows (the next event would take it past), holds more than the cap
    only as one event alone, and the runs hold every readable event once, in order."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 5, 20, 45, 90]) for _ in range(30)]
    events = [
        _event(_typed_records(rng, n, start=100 * i), arrow=bool(rng.getrandbits(1))) for i, n in enumerate(sizes)
    ]
    bad = {3, 17}
    for i in bad:
        events[i] = RecordsSubmitted(producer="crm", dataset="d", arrow=b"\xff\xff\xff\xffnot arrow")
    cap = Cap(rows=60, bytes=1 << 30)
    cut = list(runs(SCHEMA, events, cap=cap, **LIMITS))
    assert [i for run in cut for i, _ in run.parts] == [i for i in range(30) if i not in bad]
    assert sorted(i for run in cut for i, _ in run.refused) == sorted(bad)
    assert all(isinstance(e, BadRequest) for run in cut for _, e in run.refused)
    for run, after in itertools.pairwise(cut):
        assert _rows(run) <= cap.rows or len(run.parts) == 1
        assert _rows(run) + sizes[after.parts[0][0]] > cap.rows  # the next run's first event did not fit
    assert _rows(cut[-1]) <= cap.rows or len(cut[-1].parts) == 1
    assert any(len(run.parts) == 1 and _rows(run) > cap.rows for run in cut)  # 90 rows: a run of its own
    # Each run's parts are the events' rows as sent: joined in order, they are the micro-batch's rows.
    stored = [combine(SCHEMA, [p for _, p in run.parts]) for run in cut]
    assert sum(r.accepted.num_rows + len(r.rejected) for r in stored) == sum(sizes) - sum(sizes[i] for i in bad)


def test_runs_are_cut_by_the_bytes_their_arrow_buffers_expand_to() -> None:
    table = pa.Table.from_pylist(_typed_records(random.Random(2), 1000, start=0), schema=ARROW_TYPES)
    wide = read_arrow(SCHEMA, arrow_stream(table), **LIMITS).nbytes
    events = [_event(table.to_pylist(), arrow=True) for _ in range(7)]
    assert all(len(e.arrow or b"") < wide / 4 for e in events)  # zstd: small on the wire
    cut = list(runs(SCHEMA, events, cap=Cap(rows=1_000_000, bytes=3 * wide), **LIMITS))
    assert [[i for i, _ in run.parts] for run in cut] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [run.bytes for run in cut] == [3 * wide, 3 * wide, wide]
    # JSON records have no buffers: each counts JSON_RECORD_BYTES
    json_events = [_event([{"x": 1.0}] * 10, arrow=False)] * 5
    cut = list(runs(SCHEMA, json_events, cap=Cap(rows=1_000_000, bytes=25 * JSON_RECORD_BYTES), **LIMITS))
    assert [len(run.parts) for run in cut] == [2, 2, 1]


def test_runs_are_read_one_at_a_time() -> None:
    """The next run's events are read only when it is asked for: at most one event past the run in hand."""
    pulled: list[int] = []

    def events() -> Iterator[RecordsSubmitted]:
        for i in range(10):
            pulled.append(i)
            yield _event(_typed_records(random.Random(i), 10, start=10 * i), arrow=True)

    read = runs(SCHEMA, events(), cap=Cap(rows=30, bytes=1 << 30), **LIMITS)
    first = next(read)
    assert [i for i, _ in first.parts] == [0, 1, 2]
    assert pulled == [0, 1, 2, 3]  # the fourth started the next run
    assert [i for i, _ in next(read).parts] == [3, 4, 5]
    assert pulled == [0, 1, 2, 3, 4, 5, 6]


def test_refused_events_are_reported_with_their_run_and_a_batch_of_them_alone_is_a_run() -> None:
    mismatch = RecordsSubmitted(producer="crm", dataset="d", arrow=arrow_stream(_good().drop_columns(["x"])))
    too_many = _event(_typed_records(random.Random(0), 20, start=0), arrow=True)
    cut = list(runs(SCHEMA, [mismatch, too_many], cap=Cap(rows=5, bytes=1 << 20), max_decoded=1 << 20, max_rows=10))
    assert len(cut) == 1
    assert cut[0].parts == []
    errors: list[DriftloopError] = [e for _, e in cut[0].refused]
    assert [type(e) for e in errors] == [SchemaMismatch, BadRequest]
    assert "holds 20 records; the limit is 10" in str(errors[1])
    assert list(runs(SCHEMA, [], cap=Cap(rows=5, bytes=1 << 20), **LIMITS)) == []


def test_the_cli_reads_parquet_arrow_and_csv_files(tmp_path: Path) -> None:
    table = pa.table({"x": [1.5, 2.0], "c": ["a", "b"]})
    pq.write_table(table, tmp_path / "rows.parquet")
    (tmp_path / "rows.arrows").write_bytes(arrow_stream(table))
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (tmp_path / "rows.csv").write_text("x,c\n1.5,a\n2.0,b\n")
    for name in ("rows.parquet", "rows.arrows", "rows.arrow", "rows.csv"):
        assert read_table(tmp_path / name).equals(table), name
