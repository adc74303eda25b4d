"""Cutting a data file into request bodies that ingest's records route accepts.

A file of any size is read a window at a time and cut into chunks, each under
ingest's limits (``max_body_bytes`` as sent, ``max_rows_per_request`` rows).
Parquet and Arrow files are read with pyarrow batch by batch (a 10 GB file is
never held whole) and each chunk is sent as an Arrow IPC stream with
zstd-compressed buffers, which ingest reads without a copy. CSV and NDJSON
files are cut between records and sent as they are, the header repeated on
every CSV chunk, so ingest judges their text exactly as if the file had been
posted whole. A JSON array is read whole and sent as NDJSON lines.

The cut depends on the file and the two limits only: running the same post
again makes the same bodies, which is what lets each chunk carry an
``Idempotency-Key`` (file digest + chunk index) that ingest answers a second
time without storing anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from libs.common import jsonbody
from libs.common.arrow_records import DEFAULT_MAX_ROWS, arrow_stream, fitted_slices
from libs.common.events import ARROW_STREAM

#: Ingest's default ``max_body_bytes`` (10 MiB) and a request size that keeps a failed request cheap.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
CSV = "text/csv"
NDJSON = "application/x-ndjson"
FORMATS = ("parquet", "arrow", "csv", "json", "ndjson")
SUFFIXES = {
    ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow", ".arrows": "arrow", ".feather": "arrow",
    ".ipc": "arrow", ".csv": "csv", ".json": "json", ".ndjson": "ndjson", ".jsonl": "ndjson",
}  # fmt: skip


class Unreadable(ValueError):
    """The file cannot be cut into chunks: not of its format, no records, or a record over the size limit."""


@dataclass(frozen=True)
class Chunk:
    """One request body and where its rows are in the file."""

    index: int
    first_row: int
    """The file's record number of its first row (0-based; CSV header and blank lines not counted)."""
    rows: int
    body: bytes
    content_type: str


def detect(path: Path, fmt: str | None = None) -> str:
    """The file's format: ``fmt`` when given, else by its suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise Unreadable(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise Unreadable(f"cannot tell the format of {path.name} from its suffix ({', '.join(SUFFIXES)}): "
                         "give --format")  # fmt: skip
    return found


def file_digest(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def idempotency_key(prefix: str, chunk: int) -> str:
    """The ``Idempotency-Key`` of chunk ``chunk`` of a post whose keys start with ``prefix``."""
    return f"{prefix}-{chunk}"


def key_prefix(dataset: str, digest: str) -> str:
    """The keys' prefix of a file posted to ``dataset``: the same file to the same dataset has the same keys."""
    return "driftloop-" + hashlib.sha256(f"{dataset}\0{digest}".encode()).hexdigest()[:40]


def chunks(path: Path, fmt: str, *, max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES
           ) -> Iterator[Chunk]:  # fmt: skip
    """The chunks of the file at ``path`` in order, each at most ``max_rows`` rows and ``max_bytes`` long."""
    if fmt in ("parquet", "arrow"):
        bodies = _columnar(path, fmt, max_rows, max_bytes)
    else:
        bodies = _text(path, fmt, max_rows, max_bytes)
    first = 0
    for index, (rows, body, content_type) in enumerate(bodies):
        yield Chunk(index, first, rows, body, content_type)
        first += rows
    if first == 0:
        raise Unreadable(f"{path.name} holds no records")


def _columnar(path: Path, fmt: str, max_rows: int, max_bytes: int) -> Iterator[tuple[int, bytes, str]]:
    try:
        batches = _parquet_batches(path, max_rows, max_bytes) if fmt == "parquet" else _arrow_batches(path)
        for window in windows(batches, max_rows, max_bytes):
            for piece, body in fitted_slices(window, max_rows=max_rows, max_bytes=max_bytes, budget=max_bytes,
                                             encode=arrow_stream, size=len):  # fmt: skip
                yield piece.num_rows, body, ARROW_STREAM
    except (pa.ArrowException, OSError) as exc:
        raise Unreadable(f"{path.name} could not be read as {fmt}: {exc}") from exc
    except ValueError as exc:  # a row wider than a request
        raise Unreadable(f"{path.name}: a single row takes more than a request's {max_bytes:,} bytes") from exc


def _parquet_batches(path: Path, max_rows: int, max_bytes: int) -> Iterator[pa.RecordBatch]:
    """The file's rows, read a batch at a time of about what one request holds (by the row groups'
    uncompressed width, so a wide file is not read a hundred thousand rows at a time)."""
    # Not memory-mapped (mapped pages would count as the CLI's memory), and not pre-buffered: pyarrow
    # keeps every pre-buffered column chunk until the reader closes, so memory grew with the file
    # (a peak of 768 MB for a 508 MB file of 30 row groups; 290 MB, flat, without).
    with pq.ParquetFile(path, pre_buffer=False) as file:
        meta = file.metadata
        width = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / max(1, meta.num_rows)
        yield from file.iter_batches(batch_size=max(1, min(max_rows, int(max_bytes // max(1.0, width)))))


def _arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """An Arrow IPC file (Feather v2) or stream, read a record batch at a time."""
    with pa.OSFile(str(path)) as source:
        try:
            file = pa.ipc.open_file(source)
        except pa.ArrowInvalid:  # not the file format: the stream format
            source.seek(0)
            yield from pa.ipc.open_stream(source)
            return
        for i in range(file.num_record_batches):
            yield file.get_batch(i)


def windows(batches: Iterable[pa.RecordBatch], max_rows: int, max_bytes: int) -> Iterator[pa.Table]:
    """``batches`` regrouped into tables of ``max_rows`` rows, or fewer where that many would take more
    than ``max_bytes`` uncompressed (by each batch's mean row width); at least one row each."""
    pending: list[pa.RecordBatch] = []
    rows = size = 0
    for batch in batches:
        width = max(1.0, batch.nbytes / max(1, batch.num_rows))
        while batch.num_rows:
            room = min(max_rows - rows, int((max_bytes - size) // width))
            take = min(batch.num_rows, max(room, 0 if pending else 1))
            if take:
                pending.append(batch.slice(0, take))
                rows, size, batch = rows + take, size + int(take * width), batch.slice(take)
            if take < 1 or rows >= max_rows or size + width > max_bytes:
                yield pa.Table.from_batches(pending)
                pending, rows, size = [], 0, 0
    if pending:
        yield pa.Table.from_batches(pending)


def _text(path: Path, fmt: str, max_rows: int, max_bytes: int) -> Iterator[tuple[int, bytes, str]]:
    with path.open("rb") as source:
        if fmt == "csv":
            records = csv_records(source)
            header = next(records, b"").removeprefix(b"\xef\xbb\xbf")
            if not header.endswith(b"\n"):
                header += b"\n"
            yield from ((rows, body, CSV) for rows, body in text_bodies(records, header, max_rows, max_bytes))
        elif fmt == "ndjson":
            records = (line for line in source if line.strip())
            yield from ((rows, body, NDJSON) for rows, body in text_bodies(records, b"", max_rows, max_bytes))
        else:
            lines = json_lines(source.read(), path.name)
            yield from ((rows, body, NDJSON) for rows, body in text_bodies(lines, b"", max_rows, max_bytes))


def csv_records(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The records of a CSV file, each with its line ending; a quoted field may span lines (it goes
    on while the record's quotes are unbalanced: ``""`` inside a field counts twice). Empty lines,
    which ingest's CSV readers skip, are skipped here too."""
    pending: list[bytes] = []
    quotes = 0
    for line in lines:
        pending.append(line)
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            record = b"".join(pending)
            if record.rstrip(b"\r\n"):
                yield record
            pending, quotes = [], 0
    if pending and (record := b"".join(pending)).rstrip(b"\r\n"):
        yield record


def json_lines(data: bytes, name: str) -> Iterator[bytes]:
    """The records of a JSON array (or ``{"records": [...]}``) as NDJSON lines.

    Read with ingest's own JSON rules (a duplicate key or a NUL is refused here rather than by
    ingest); ``NaN`` and ``Infinity`` are kept, as ingest judges them per value."""
    try:
        doc = jsonbody.loads(data, allow_nan=True)
    except jsonbody.InvalidJSON as exc:
        raise Unreadable(f"{name}: {exc.message}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        doc = doc["records"]
    if not isinstance(doc, list):
        raise Unreadable(f'{name} is not a JSON array of records (or {{"records": [...]}})')
    if b"NaN" in data or b"Infinity" in data:  # orjson would write them as null
        return (json.dumps(item, allow_nan=True, ensure_ascii=False).encode() + b"\n" for item in doc)
    return (orjson.dumps(item) + b"\n" for item in doc)


def text_bodies(records: Iterable[bytes], header: bytes, max_rows: int, max_bytes: int
                ) -> Iterator[tuple[int, bytes]]:  # fmt: skip
    """``records`` (each ending its line) gathered into bodies of at most ``max_rows`` records and
    ``max_bytes`` bytes, each starting with ``header``."""
    parts, rows, size = [header], 0, len(header)
    for number, record in enumerate(records):
        line = record if record.endswith(b"\n") else record + b"\n"
        if len(header) + len(line) > max_bytes:
            raise Unreadable(f"record {number} alone takes {len(line):,} bytes, more than a request's {max_bytes:,}")
        if rows == max_rows or size + len(line) > max_bytes:
            yield rows, b"".join(parts)
            parts, rows, size = [header], 0, len(header)
        parts.append(line)
        rows, size = rows + 1, size + len(line)
    if rows:
        yield rows, b"".join(parts)
