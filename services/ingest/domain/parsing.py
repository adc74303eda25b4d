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
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from libs.common import jsonbody
from libs.common.errors import BadRequest, DriftloopError, PayloadTooLarge
from services.ingest.domain import arrow_ipc, parquet_pages


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
_PARQUET_BATCH_ROWS = 16_384
"""Rows a Parquet body is decoded by, its size counted after each step (a request holds 10,000 or so)."""
_LINE_END = re.compile(r"\r\n?|\n")


def parse_body(
    body: bytes, content_type: str, *, content_encoding: str = "", max_decoded: int = 256 * 1024 * 1024,
    max_rows: int | None = None,
) -> ParsedBody:  # fmt: skip
    """Records of ``body`` according to its media type (and content encoding), at most ``max_rows``: an
    Arrow or Parquet body declaring more is refused before it is read, an NDJSON one before its lines
    are parsed."""
    body = decode_content(body, content_encoding, max_decoded)
    if not body.strip():
        raise BadRequest(f"request body is empty: send {_ACCEPTED}")
    media = content_type.split(";")[0].strip().lower() or "application/json"
    try:
        parsed = _parse(body, media, max_decoded, max_rows)
        if max_rows is not None and parsed.count > max_rows:  # JSON and CSV: known once read
            raise BadRequest(f"the body holds {parsed.count} records; the limit is {max_rows}", limit=max_rows)
        return parsed
    except BadRequest as exc:  # a body of another format than its type says: say which it looks like
        found = next(((name, how) for magic, name, how, types in _MAGIC
                      if body.startswith(magic) and media not in types), None)  # fmt: skip
        if found is None:
            raise
        exc.message = f"{exc.message} (the body looks like {found[0]}: send it with {found[1]})"
        exc.args = (exc.message,)
        raise


_MAGIC = [
    (b"PAR1", "Parquet", f"Content-Type: {PARQUET_TYPES[0]}", PARQUET_TYPES),
    (b"ARROW1", "an Arrow IPC file", f"Content-Type: {ARROW_TYPES[1]}", ARROW_TYPES),
    (b"\xff\xff\xff\xff", "an Arrow IPC stream", f"Content-Type: {ARROW_TYPES[0]}", ARROW_TYPES),
    (b"\x1f\x8b", "gzip", "Content-Encoding: gzip", ()),
    (b"\x28\xb5\x2f\xfd", "zstd", "Content-Encoding: zstd", ()),
]
"""How the binary formats begin, how such a body is sent, and the types under which it is no surprise."""


def _parse(body: bytes, media: str, max_decoded: int, max_rows: int | None) -> ParsedBody:
    if media in ARROW_TYPES:
        return ParsedBody(None, {}, from_text=False, table=_arrow(body, media, max_decoded, max_rows))
    if media in PARQUET_TYPES:
        return ParsedBody(None, {}, from_text=False, table=_parquet(body, max_decoded, max_rows))
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
        return _ndjson(raw, max_rows)
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


def _ndjson(raw: bytes, max_rows: int | None) -> ParsedBody:
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise BadRequest("body holds no records")
    if max_rows is not None and len(lines) > max_rows:  # counted before each line is parsed in Python
        raise BadRequest(f"the body holds {len(lines)} records; the limit is {max_rows}", limit=max_rows)
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
    end = _LINE_END.search(text)  # the header line, not a copy of the whole body
    first = text if end is None else text[: end.start()]
    header = next(csv.reader([first]), [])
    if not header or first.count('"') % 2:  # no header, or a header cell spanning lines
        return _csv_rows(text)
    if end is None:  # a header line alone (pyarrow cannot tell its columns without a line end)
        raise BadRequest("CSV body has a header but no records")
    repeated = sorted({n for n, c in Counter(header).items() if c > 1})
    if repeated:
        raise BadRequest(f"CSV header repeats column(s) {repeated}", columns=repeated)
    ragged: list[int] = []

    def skip(row: Any) -> str:
        ragged.append(row.number)
        return "skip"

    parse = pcsv.ParseOptions(newlines_in_values=b'"' in raw, invalid_row_handler=skip)
    convert = pcsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False,
                                  quoted_strings_can_be_null=False)  # fmt: skip
    try:
        try:
            table = pcsv.read_csv(io.BytesIO(raw), parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise
            # A line longer than the reader's block (1 MiB): read as one block, as long as the body.
            blocks = pcsv.ReadOptions(block_size=len(raw) + 1)
            table = pcsv.read_csv(io.BytesIO(raw), read_options=blocks, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadRequest(f"CSV body could not be read: {exc}") from exc
    if ragged or table.column_names != header:
        return _csv_rows(text)
    if table.num_rows == 0:
        raise BadRequest("CSV body has a header but no records")
    return ParsedBody(None, {}, from_text=True, table=table)


def _csv_rows(text: str) -> ParsedBody:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": the reader sees \r, \n and \r\n
    rows: list[dict[str, Any] | None] = []
    unreadable: dict[int, str] = {}
    try:
        if not reader.fieldnames:
            raise BadRequest("CSV body needs a header line naming the columns")
        repeated = sorted({n for n, c in Counter(reader.fieldnames).items() if c > 1})
        if repeated:  # DictReader would keep the last cell of each silently
            raise BadRequest(f"CSV header repeats column(s) {repeated}", columns=repeated)
        for i, record in enumerate(reader):
            if None in record:  # more cells than header columns
                rows.append(None)
                unreadable[i] = f"CSV line {reader.line_num} has more cells than the header"
            else:
                rows.append(dict(record))
    except csv.Error as exc:  # e.g. a cell past the csv module's field size limit (128 KiB)
        raise BadRequest(f"CSV line {reader.line_num} could not be read: {exc}") from exc
    if not rows:
        raise BadRequest("CSV body has a header but no records")
    return ParsedBody(rows, unreadable, from_text=True)


def _arrow(body: bytes, media: str, limit: int, max_rows: int | None) -> pa.Table:
    """An Arrow IPC stream (or file), measured from its metadata before any batch is read
    (:mod:`arrow_ipc`), then read batch by batch, each checked in full (offsets, dictionary
    indices, UTF-8): pyarrow's compute kernels trust a batch's structure, and a garbled one
    would read out of bounds.

    A body that opens with the IPC file format's magic is read as a file whichever of the two Arrow
    media types it came with: ``.arrow``/Feather files are often sent as "the Arrow type"."""
    as_file = media.endswith(".file") or body.startswith(_ARROW_FILE_MAGIC)
    what = "Arrow IPC file" if as_file else "Arrow IPC stream"
    batches: list[pa.RecordBatch] = []
    try:
        if as_file:
            found = arrow_ipc.file_messages(body)
        else:
            found, after = arrow_ipc.stream_messages(body)
            if after:  # a reader stops at the first end-of-stream marker: what follows would be dropped unread
                raise BadRequest(f"the {what} goes on for {after} bytes after its end-of-stream marker; "
                                 "send one stream per body")  # fmt: skip
        rows, decoded = arrow_ipc.batches(found)
        _check_size(what, rows, decoded, limit, max_rows)
        if as_file:
            file = pa.ipc.open_file(pa.BufferReader(body))
            schema = file.schema
            chunks = (file.get_batch(i) for i in range(file.num_record_batches))
        else:
            stream = pa.ipc.open_stream(pa.BufferReader(body))
            schema = stream.schema
            chunks = iter(stream)
        _check_names(schema, what)
        for batch in chunks:
            _check_columns(batch, what)
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=schema)
    except MemoryError as exc:  # a buffer declaring more than can be allocated, past the measuring
        raise PayloadTooLarge(f"the {what} declares buffers larger than can be held", limit=limit) from exc
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:  # EOFError: a block cut short
        raise BadRequest(f"the body is not a readable {what}: {exc}") from exc
    return _records_in(table, what, limit)


def _parquet(body: bytes, limit: int, max_rows: int | None) -> pa.Table:
    """A Parquet file; its metadata's row count and uncompressed size are checked before any page
    is read. Text columns are read dictionary-encoded as stored, so a value repeated down a
    column is held once until :func:`_records_in` has measured what decoding it would take."""
    what = "Parquet file"
    try:
        pages = parquet_pages.declared_bytes(body, limit)  # each page is allocated as its header says, then decoded
        meta = pq.read_metadata(pa.BufferReader(body))
        arrow = meta.schema.to_arrow_schema()
        expands = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        # Fixed-width columns take rows x width whatever their encoding (a run of a million zeros is 3 bytes)
        fixed = meta.num_rows * sum(f.type.bit_width // 8 for f in arrow if pa.types.is_primitive(f.type))
        _check_size(what, meta.num_rows, max(expands, fixed, pages), limit, max_rows)
        texts = [f.name for f in arrow if _is_text(f.type)]
        file = pq.ParquetFile(pa.BufferReader(body), metadata=meta, read_dictionary=texts)  # the footer read once
        batches, size = [], 0
        for batch in file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            # the footer's sizes are the sender's word: what the pages hold is counted as they are decoded
            size += batch.nbytes
            if size > limit:
                raise PayloadTooLarge(f"the {what} expands past the limit of {limit} bytes once decoded",
                                      limit=limit)  # fmt: skip
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=file.schema_arrow)
        _check_names(table.schema, what)
        _check_columns(table, what)
    except MemoryError as exc:  # a page header declaring more than can be allocated
        raise PayloadTooLarge(f"the {what} declares buffers larger than can be held", limit=limit) from exc
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        raise BadRequest(f"the body is not a readable {what}: {exc}") from exc
    if table.num_rows != meta.num_rows:
        raise BadRequest(f"the {what} holds {table.num_rows} records where its metadata says {meta.num_rows}")
    table = _records_in(table, what, limit)
    for name in texts:  # measured: now decoded as the reader would have
        index = table.schema.get_field_index(name)
        if index >= 0 and pa.types.is_dictionary(table.schema.field(index).type):
            table = table.set_column(index, name, table.column(index).cast(table.schema.field(index).type.value_type))
    return table


def _is_text(kind: pa.DataType) -> bool:
    """Whether values of ``kind`` are variable-length bytes (text or binary)."""
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                or pa.types.is_large_binary(kind))  # fmt: skip


def _check_size(what: str, rows: int, decoded: int, limit: int, max_rows: int | None) -> None:
    """Refuse a columnar body by what its metadata declares, before its buffers are read."""
    if decoded > limit:
        raise PayloadTooLarge(f"the {what} expands past the limit of {limit} bytes: it declares {decoded}",
                              limit=limit)  # fmt: skip
    if max_rows is not None and rows > max_rows:
        raise BadRequest(f"the {what} holds {rows} records; the limit is {max_rows}", limit=max_rows)


def _records_in(table: pa.Table, what: str, limit: int) -> pa.Table:
    repeated = sorted({n for n, c in Counter(table.column_names).items() if c > 1})
    if repeated:
        raise BadRequest(f"the {what} repeats column(s) {repeated}", columns=repeated)
    if table.num_rows == 0:
        raise BadRequest(f"the {what} holds no records")
    size = table.nbytes + sum(_decoded_extra(column) for column in table.columns)
    if size > limit:
        raise PayloadTooLarge(f"the {what} expands past the limit of {limit} bytes once decoded", limit=limit)
    return _plain(table, what)


def _plain(table: pa.Table, what: str) -> pa.Table:
    """The columns in the layouts every kernel takes (``take`` has none for views or run-end encoding,
    and a rejected row's record is taken from every column): view types as their plain ones, a
    run-end encoded column decoded (measured before, by :func:`_decoded_extra`)."""
    for index, column_field in enumerate(table.schema):
        column = table.column(index)
        if pa.types.is_run_end_encoded(column_field.type):
            column = pc.run_end_decode(column)
        plain = _plain_type(column.type)
        if plain is None:
            raise BadRequest(f"column {column_field.name!r} is {column_field.type}, which ingest does not read",
                             field=column_field.name)  # fmt: skip
        if plain != column_field.type:
            try:
                column = column.cast(plain)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadRequest(f"column {column_field.name!r} ({column_field.type}) could not be read: {exc}",
                                 field=column_field.name) from exc  # fmt: skip
            table = table.set_column(index, column_field.name, column)
    return table


def _plain_type(kind: pa.DataType) -> pa.DataType | None:
    """``kind`` with its view types as the plain ones (None: it nests a layout no cast undoes)."""
    if pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_run_end_encoded(kind) or pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return None  # nested run-end encoding; list views (pyarrow 26 casts them to invalid lists)
    if pa.types.is_union(kind):
        children = [kind.field(i).type for i in range(kind.num_fields)]
        return kind if all(_plain_type(c) == c for c in children) else None
    if pa.types.is_list(kind):
        value = _plain_type(kind.value_type)
        return None if value is None else pa.list_(kind.value_field.with_type(value))
    if pa.types.is_large_list(kind):
        value = _plain_type(kind.value_type)
        return None if value is None else pa.large_list(kind.value_field.with_type(value))
    if pa.types.is_struct(kind):
        fields = [kind.field(i) for i in range(kind.num_fields)]
        plain = [_plain_type(f.type) for f in fields]
        return None if None in plain else pa.struct([f.with_type(p) for f, p in zip(fields, plain, strict=True)])
    if pa.types.is_dictionary(kind):
        value = _plain_type(kind.value_type)
        return None if value is None else pa.dictionary(kind.index_type, value, kind.ordered)
    if pa.types.is_map(kind) or pa.types.is_fixed_size_list(kind):
        children = [kind.field(i).type for i in range(kind.num_fields)]
        return kind if all(_plain_type(c) == c for c in children) else None
    return kind


def _run_end_extra(chunk: pa.RunEndEncodedArray) -> int:
    """Bytes a run-end encoded chunk takes once decoded: each run's length times its value's size."""
    runs = np.diff(np.asarray(chunk.run_ends.to_numpy(zero_copy_only=False), np.int64), prepend=0).clip(0)
    values = chunk.values
    if _is_text(values.type):
        sizes = np.asarray(pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False), np.int64) + 8
    else:
        sizes = np.full(len(values), max(1, values.nbytes // max(1, len(values))), np.int64)
    return int((runs * sizes[: len(runs)]).sum())


def _check_columns(columns: pa.RecordBatch | pa.Table, what: str) -> None:
    """Each column's structure checked in full (offsets and dictionary indices within their buffers,
    text valid UTF-8): compute kernels trust it, and a garbled offset would have them read out of bounds."""
    for name, column in zip(columns.schema.names, columns.columns, strict=True):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise BadRequest(f"the body is not a readable {what}: column {name!r}: {exc}", field=name) from exc


def _check_names(schema: pa.Schema, what: str) -> None:
    """Every column name, nested ones included, is UTF-8 (records are made from them, as JSON keys)."""
    fields = list(schema)
    while fields:
        field = fields.pop()
        try:
            field.name  # noqa: B018 (decoded here: pyarrow decodes names when they are read)
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the {what} names a column with bytes that are not UTF-8: {exc}") from exc
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        fields.extend(kind.field(i) for i in range(kind.num_fields))


def _decoded_extra(column: pa.ChunkedArray) -> int:
    """Bytes a dictionary-encoded or run-end encoded column takes beyond its encoding once decoded (as
    validation decodes a declared column): a megabyte value named by 100,000 indices is 100 GB."""
    if pa.types.is_run_end_encoded(column.type):
        return sum(_run_end_extra(chunk) for chunk in column.chunks)
    if not pa.types.is_dictionary(column.type):
        return 0
    value = column.type.value_type
    extra = 0
    for chunk in column.chunks:
        if _is_text(value):  # exactly: each index's value length, and an offset per row
            lengths = pc.binary_length(chunk.dictionary).take(chunk.indices)
            extra += (pc.sum(lengths).as_py() or 0) + 8 * len(chunk)
        elif pa.types.is_primitive(value):
            extra += len(chunk) * max(1, value.bit_width // 8)
        else:  # nested values: their mean size per index (an estimate)
            extra += chunk.dictionary.nbytes * len(chunk) // max(1, len(chunk.dictionary))
    return extra
