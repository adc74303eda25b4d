"""What a Parquet body's pages declare, read from their headers before any page is decompressed.

A Parquet reader allocates each page as large as its header's ``uncompressed_page_size`` says
(up to 2 GiB) before it decompresses it, and trusts the footer's sizes no further than that. So a
body is measured from its page headers: each column chunk's pages are walked from the chunk's
first page to its end (``total_compressed_size`` bytes), reading the two sizes of each header.

The footer and the headers are read here (Thrift compact protocol, the few fields needed), not
through pyarrow's metadata objects: a garbled column chunk there throws a C++ exception that
pyarrow 26 does not catch (``RowGroupMetaData.column``), and the process aborts.
"""

from __future__ import annotations

from collections.abc import Callable

_I32, _I64, _LIST, _STRUCT = 5, 6, 9, 12
"""Thrift compact type ids (also: 1-2 bool, 3 byte, 4 i16, 7 double, 8 binary, 10 set, 11 map)."""
_DEPTH = 32
_MAGIC = b"PAR1"


class Malformed(ValueError):
    """A footer or page header that runs past its bytes or holds what no writer writes."""


def declared_bytes(body: bytes, limit: int) -> int:
    """The bytes every page of ``body`` decompresses to, as its header declares; once past ``limit``,
    the pages counted so far (a larger body need not be walked further to be refused)."""
    if len(body) < 12 or not body.endswith(_MAGIC):
        raise Malformed("no Parquet footer (the body does not end with PAR1)")
    size = int.from_bytes(body[-8:-4], "little")
    start = len(body) - 8 - size
    if not 4 <= start < len(body) - 8:
        raise Malformed(f"the footer length {size} does not fit the body")
    chunks: list[dict[int, int]] = []

    def column_meta(field: int, kind: int, at: int, depth: int) -> int:  # ColumnMetaData
        if field in (7, 9, 11) and kind == _I64:  # total_compressed_size, data_page_offset, dictionary_page_offset
            chunks[-1][field], at = _zigzag(footer, at)
            return at
        return _skip(footer, at, kind, depth)

    def column_chunk(field: int, kind: int, at: int, depth: int) -> int:  # ColumnChunk
        if field == 3 and kind == _STRUCT:  # meta_data
            chunks.append({})
            return _struct(footer, at, depth + 1, column_meta)
        return _skip(footer, at, kind, depth)

    def row_group(field: int, kind: int, at: int, depth: int) -> int:  # RowGroup
        if field == 1 and kind == _LIST:  # columns
            return _list(footer, at, depth + 1, column_chunk)
        return _skip(footer, at, kind, depth)

    def file_meta(field: int, kind: int, at: int, depth: int) -> int:  # FileMetaData
        if field == 4 and kind == _LIST:  # row_groups
            return _list(footer, at, depth + 1, row_group)
        return _skip(footer, at, kind, depth)

    footer = body[: len(body) - 8]
    _struct(footer, start, 0, file_meta)
    total = 0
    for chunk in chunks:
        size = chunk.get(7, 0)
        if not size:  # no pages (a row group of no rows)
            continue
        # the chunk's first page: its dictionary page's, else its first data page's offset (writers
        # leave either 0 or unset when there is none: no page lies before the magic's 4 bytes)
        first = min((o for o in (chunk.get(11), chunk.get(9)) if o is not None and o >= 4), default=0)
        if not 4 <= first < first + size <= start:
            raise Malformed("a column chunk lies outside the file")
        total = _chunk(body, first, first + size, total, limit)
        if total > limit:
            return total
    return total


def _chunk(body: bytes, at: int, end: int, total: int, limit: int) -> int:
    sizes: dict[int, int] = {}

    def page_header(field: int, kind: int, at: int, depth: int) -> int:  # PageHeader
        if field in (2, 3) and kind == _I32:  # uncompressed_page_size, compressed_page_size
            sizes[field], at = _zigzag(body, at)
            return at
        return _skip(body, at, kind, depth)

    while at < end and total <= limit:
        sizes.clear()
        at = _struct(body, at, 0, page_header)
        uncompressed, compressed = sizes.get(2, -1), sizes.get(3, -1)
        if uncompressed < 0 or compressed < 0:
            raise Malformed("a page header without its sizes, or with a negative one")
        total += uncompressed
        at += compressed
    return total


def _byte(data: bytes, at: int) -> int:
    if at >= len(data):
        raise Malformed("a footer or page header runs past its bytes")
    return data[at]


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = _byte(data, at)
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
        if shift > 63:
            raise Malformed("an integer longer than 64 bits")


def _zigzag(data: bytes, at: int) -> tuple[int, int]:
    raw, at = _varint(data, at)
    return (raw >> 1) ^ -(raw & 1), at


Handler = Callable[[int, int, int, int], int]
"""(field id, Thrift type, position of its value, depth) -> position after the value."""


def _struct(data: bytes, at: int, depth: int, handle: Handler | None = None) -> int:
    """Past the struct at ``at``, each field given to ``handle`` (skipped without one)."""
    if depth > _DEPTH:
        raise Malformed("a footer or page header nested too deep")
    field = 0
    while True:
        head = _byte(data, at)
        at += 1
        if head == 0:  # STOP
            return at
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field += delta
        else:
            field, at = _zigzag(data, at)
        at = handle(field, kind, at, depth) if handle is not None else _skip(data, at, kind, depth)


def _list(data: bytes, at: int, depth: int, handle: Handler) -> int:
    """Past a list of structs, each struct's fields given to ``handle``."""
    head = _byte(data, at)
    count, inner = head >> 4, head & 0x0F
    at += 1
    if count == 15:
        count, at = _varint(data, at)
    if inner != _STRUCT:
        return _elements(data, at, depth, inner, count)
    for _ in range(count):  # each struct takes a byte at least, and a byte past the end raises
        at = _struct(data, at, depth + 1, handle)
    return at


def _skip(data: bytes, at: int, kind: int, depth: int) -> int:
    """Past one field value of Thrift compact type ``kind`` (a bool field's value is in its type)."""
    if kind in (1, 2):
        return at
    if kind in (_LIST, 10):  # list, set
        head = _byte(data, at)
        count, inner = head >> 4, head & 0x0F
        at += 1
        if count == 15:
            count, at = _varint(data, at)
        return _elements(data, at, depth, inner, count)
    if kind == 11:  # map
        count, at = _varint(data, at)
        if not count:
            return at
        head = _byte(data, at)
        at += 1
        for _ in range(count):
            at = _elements(data, at, depth, head >> 4, 1)
            at = _elements(data, at, depth, head & 0x0F, 1)
        return at
    return _elements(data, at, depth, kind, 1)


def _elements(data: bytes, at: int, depth: int, kind: int, count: int) -> int:
    """Past ``count`` values of ``kind`` laid one after the other (a bool takes a byte here)."""
    if depth > _DEPTH:
        raise Malformed("a footer or page header nested too deep")
    if kind in (1, 2, 3):
        at += count
    elif kind == 7:
        at += 8 * count
    elif kind in (4, 5, _I64):
        for _ in range(count):
            while _byte(data, at) & 0x80:
                at += 1
            at += 1
    elif kind == 8:
        for _ in range(count):
            size, at = _varint(data, at)
            at += size
    elif kind == _STRUCT:
        for _ in range(count):
            at = _struct(data, at, depth + 1)
    elif kind in (_LIST, 10, 11):
        for _ in range(count):
            at = _skip(data, at, kind, depth + 1)
    else:
        raise Malformed(f"a value of unknown Thrift type {kind}")
    if at > len(data):
        raise Malformed("a footer or page header runs past its bytes")
    return at
