"""Turning a request body into records: JSON array, NDJSON, CSV, Arrow IPC or Parquet.

A body that cannot be read at all is a bad request; a single line that is not
a JSON object is a rejected row (kept with its reason), so one bad line in an
NDJSON upload does not cost the others.

Text formats are parsed by C code: JSON with orjson (through
:mod:`libs.common.jsonbody`, which keeps its refusals of duplicate keys, NUL
and deep nesting), CSV with pyarrow's reader into text columns (so a cell is
judged exactly as before: ``"42"`` is parsed as a number because it came as
text). Arrow and Parquet bodies arrive typed and stay columnar. A compressed
body (``Content-Encoding: gzip``, ``deflate`` or ``zstd``, or a Parquet/Arrow body whose
buffers are compressed) may expand to at most ``max_decoded`` bytes.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from libs.common import jsonbody
from libs.common.errors import BadRequest, DriftloopError, PayloadTooLarge


class UnsupportedMediaType(DriftloopError):
    status_code = 415
    code = "unsupported_media_type"


@dataclass(frozen=True)
class ParsedBody:
    """The records of one body, before validation: a list of JSON objects or a table."""

    records: list[dict[str, Any] | None] | None
    """One entry per record (JSON, NDJSON, Kafka); None where the record itself was unreadable."""
    unreadable: dict[int, str]
    """Row index → why it could not be read."""
    from_text: bool
    """Values arrived as text (CSV) and may be parsed into numbers."""
    table: pa.Table | None = field(default=None)
    """The columns as sent (CSV: text columns; Arrow and Parquet: typed), when the body is columnar."""

    @property
    def count(self) -> int:
        """Records received, unreadable ones included."""
        return self.table.num_rows if self.table is not None else len(self.records or [])

    @property
    def rows(self) -> list[dict[str, Any] | None]:
        """Every record as a dict (built from the table on demand: only for small uses)."""
        return self.table.to_pylist() if self.table is not None else list(self.records or [])


JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-lines")
CSV_TYPES = ("text/csv", "application/csv")
ARROW_TYPES = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file")
_ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet")
_ACCEPTED = "application/json, application/x-ndjson, text/csv, application/vnd.apache.arrow.stream or " \
            "application/vnd.apache.parquet"  # fmt: skip
_BOM = b"\xef\xbb\xbf"


def parse_body(
    body: bytes, content_type: str, *, content_encoding: str = "", max_decoded: int = 256 * 1024 * 1024
) -> ParsedBody:
    """Records of ``body`` according to its media type (and content encoding)."""
    body = decode_content(body, content_encoding, max_decoded)
    if not body.strip():
        raise BadRequest(f"request body is empty: send {_ACCEPTED}")
    media = content_type.split(";")[0].strip().lower() or "application/json"
    if media in ARROW_TYPES:
        return ParsedBody(None, {}, from_text=False, table=_arrow(body, media, max_decoded))
    if media in PARQUET_TYPES:
        return ParsedBody(None, {}, from_text=False, table=_parquet(body, max_decoded))
    if media not in JSON_TYPES + NDJSON_TYPES + CSV_TYPES:
        raise UnsupportedMediaType(f"unsupported content type {media!r}: use {_ACCEPTED}")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8: {exc}") from exc
    if "\x00" in text:  # PostgreSQL stores no NUL, not even in a quarantined row
        raise BadRequest("request body holds a NUL character")
    raw = body[len(_BOM) :] if body.startswith(_BOM) else body
    if media in JSON_TYPES:
        return _json(raw)
    if media in NDJSON_TYPES:
        return _ndjson(raw)
    return _csv(raw, text)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decompressed by its ``Content-Encoding``, refused once it expands past ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "zstd":
        return _zstd(body, limit)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported content encoding {encoding!r}: use gzip, deflate or zstd")
    wbits = 32 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    out: list[bytes] = []
    size, rest = 0, body
    try:
        while rest:
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(rest, limit - size + 1)
            size += len(chunk)
            out.append(chunk)
            if size > limit or inflater.unconsumed_tail:
                raise PayloadTooLarge(f"the {encoding} body expands past the limit of {limit} bytes", limit=limit)
            if not inflater.eof:
                raise BadRequest(f"the {encoding} body is truncated")
            rest = inflater.unused_data  # gzip allows several members one after the other
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding}: {exc}") from exc
    return b"".join(out)


def _zstd(body: bytes, limit: int) -> bytes:
    """A zstd body (RFC 8878), decompressed as a stream and refused once it expands past ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    try:
        stream = pa.CompressedInputStream(pa.BufferReader(body), "zstd")
        while chunk := stream.read(min(1 << 20, limit - size + 1)):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the zstd body expands past the limit of {limit} bytes", limit=limit)
            out.append(chunk)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(f"the body is not valid zstd: {exc}") from exc
    return b"".join(out)


def _json(raw: bytes) -> ParsedBody:
    doc = jsonbody.loads(raw, allow_nan=True)  # NaN is judged per value: the row is rejected, not the body
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        doc = doc["records"]
    if not isinstance(doc, list):
        raise BadRequest('body must be a JSON array of records (or {"records": [...]})')
    if not doc:
        raise BadRequest("body holds no records")
    unreadable = {
        i: f"record is a {type(item).__name__}, not a JSON object"
        for i, item in enumerate(doc)
        if type(item) is not dict
    }
    rows = [None if i in unreadable else item for i, item in enumerate(doc)] if unreadable else doc
    return ParsedBody(rows, unreadable, from_text=False)


def _ndjson(raw: bytes) -> ParsedBody:
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise BadRequest("body holds no records")
    rows: list[dict[str, Any] | None] = []
    unreadable: dict[int, str] = {}
    for index, line in enumerate(lines):
        try:  # bytes: orjson's path, with jsonbody's checks per line
            item = jsonbody.loads(line, allow_nan=True)
        except jsonbody.InvalidJSON as exc:  # kept as an unreadable row: its reason, not its bytes
            rows.append(None)
            unreadable[index] = f"line is not valid JSON: {exc.message}"
            continue
        if isinstance(item, dict):
            rows.append(item)
        else:
            rows.append(None)
            unreadable[index] = f"line is a {type(item).__name__}, not a JSON object"
    return ParsedBody(rows, unreadable, from_text=False)


def _csv(raw: bytes, text: str) -> ParsedBody:
    """CSV through pyarrow's reader, every column as text; a body with ragged lines takes the
    csv module's path, which says which line is wrong."""
    end = text.find("\n")
    first = (text if end < 0 else text[:end]).rstrip("\r")
    header = next(csv.reader([first]), [])
    if not header or first.count('"') % 2:  # no header, or a header cell spanning lines
        return _csv_rows(text)
    repeated = sorted({n for n, c in Counter(header).items() if c > 1})
    if repeated:
        raise BadRequest(f"CSV header repeats column(s) {repeated}", columns=repeated)
    ragged: list[int] = []

    def skip(row: Any) -> str:
        ragged.append(row.number)
        return "skip"

    try:
        table = pcsv.read_csv(
            io.BytesIO(raw),
            parse_options=pcsv.ParseOptions(newlines_in_values=b'"' in raw, invalid_row_handler=skip),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )  # fmt: skip
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadRequest(f"CSV body could not be read: {exc}") from exc
    if ragged or table.column_names != header:
        return _csv_rows(text)
    if table.num_rows == 0:
        raise BadRequest("CSV body has a header but no records")
    return ParsedBody(None, {}, from_text=True, table=table)


def _csv_rows(text: str) -> ParsedBody:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise BadRequest("CSV body needs a header line naming the columns")
    repeated = sorted({n for n, c in Counter(reader.fieldnames).items() if c > 1})
    if repeated:  # DictReader would keep the last cell of each silently
        raise BadRequest(f"CSV header repeats column(s) {repeated}", columns=repeated)
    rows: list[dict[str, Any] | None] = []
    unreadable: dict[int, str] = {}
    for i, record in enumerate(reader):
        if None in record:  # more cells than header columns
            rows.append(None)
            unreadable[i] = f"CSV line {reader.line_num} has more cells than the header"
        else:
            rows.append(dict(record))
    if not rows:
        raise BadRequest("CSV body has a header but no records")
    return ParsedBody(rows, unreadable, from_text=True)


def _arrow(body: bytes, media: str, limit: int) -> pa.Table:
    """An Arrow IPC stream (or file), read batch by batch so a compressed one cannot expand past ``limit``.

    A body that opens with the IPC file format's magic is read as a file whichever of the two Arrow
    media types it came with: ``.arrow``/Feather files are often sent as "the Arrow type"."""
    as_file = media.endswith(".file") or body.startswith(_ARROW_FILE_MAGIC)
    what = "Arrow IPC file" if as_file else "Arrow IPC stream"
    batches: list[pa.RecordBatch] = []
    size = 0
    try:
        if as_file:
            file = pa.ipc.open_file(pa.BufferReader(body))
            schema = file.schema
            chunks = (file.get_batch(i) for i in range(file.num_record_batches))
        else:
            stream = pa.ipc.open_stream(pa.BufferReader(body))
            schema = stream.schema
            chunks = iter(stream)
        for batch in chunks:
            size += batch.nbytes
            if size > limit:
                raise PayloadTooLarge(f"the {what} expands past the limit of {limit} bytes", limit=limit)
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise BadRequest(f"the body is not a readable {what}: {exc}") from exc
    return _records_in(table, what)


def _parquet(body: bytes, limit: int) -> pa.Table:
    """A Parquet file; its metadata's uncompressed size is checked against ``limit`` before any page is read."""
    try:
        file = pq.ParquetFile(pa.BufferReader(body))
        meta = file.metadata
        expands = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if expands > limit:
            raise PayloadTooLarge(f"the Parquet body expands to {expands} bytes, past the limit of {limit}",
                                  limit=limit)  # fmt: skip
        table = file.read()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise BadRequest(f"the body is not a readable Parquet file: {exc}") from exc
    if table.nbytes > limit:  # the metadata said less than the pages held
        raise PayloadTooLarge(f"the Parquet body expands past the limit of {limit} bytes", limit=limit)
    return _records_in(table, "Parquet file")


def _records_in(table: pa.Table, what: str) -> pa.Table:
    repeated = sorted({n for n, c in Counter(table.column_names).items() if c > 1})
    if repeated:
        raise BadRequest(f"the {what} repeats column(s) {repeated}", columns=repeated)
    if table.num_rows == 0:
        raise BadRequest(f"the {what} holds no records")
    return table
