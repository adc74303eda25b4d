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

import struct
from typing import Any

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
    footer, _ = _struct(body[: len(body) - 8], start, 0)
    total = 0
    for group in _list(footer.get(4)):  # FileMetaData.row_groups
        for chunk in _list(_dict(group).get(1)):  # RowGroup.columns
            meta = _dict(_dict(chunk).get(3))  # ColumnChunk.meta_data
            size = _int(meta.get(7))  # total_compressed_size
            # the chunk's first page: its dictionary page's, else its first data page's offset (writers
            # leave either 0 or unset when there is none: no page lies before the magic's 4 bytes)
            offsets = [o for o in (meta.get(11), meta.get(9)) if isinstance(o, int) and o >= 4]
            if not size:  # no pages (a row group of no rows)
                continue
            first = min(offsets, default=0)
            if not 4 <= first < first + size <= start:
                raise Malformed("a column chunk lies outside the file")
            end = first + size
            total = _chunk(body, first, end, total, limit)
            if total > limit:
                return total
    return total


def _chunk(body: bytes, at: int, end: int, total: int, limit: int) -> int:
    while at < end and total <= limit:
        header, at = _struct(body, at, 0)
        uncompressed, compressed = _int(header.get(2)), _int(header.get(3))
        if uncompressed < 0 or compressed < 0:
            raise Malformed("a page header declares a negative size")
        total += uncompressed
        at += compressed
    return total


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed("a size is missing or not an integer")
    return value


def _dict(value: Any) -> dict[int, Any]:
    if not isinstance(value, dict):
        raise Malformed("a struct is missing")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise Malformed("a list is missing")
    return value


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


def _struct(data: bytes, at: int, depth: int) -> tuple[dict[int, Any], int]:
    """The struct at ``at`` (field id -> value), and where it ends."""
    if depth > _DEPTH:
        raise Malformed("a footer or page header nested too deep")
    found: dict[int, Any] = {}
    field = 0
    while True:
        head = _byte(data, at)
        at += 1
        if head == 0:  # STOP
            return found, at
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field += delta
        else:
            field, at = _zigzag(data, at)
        if kind in (1, 2):  # a bool field holds its value in its type
            found[field] = kind == 1
        else:
            found[field], at = _value(data, at, kind, depth)


def _value(data: bytes, at: int, kind: int, depth: int) -> tuple[Any, int]:
    """One value of Thrift compact type ``kind`` (in a container: a bool takes a byte)."""
    if kind in (1, 2):
        return _byte(data, at) == 1, at + 1
    if kind == 3:
        return _byte(data, at), at + 1
    if kind in (4, 5, 6):
        return _zigzag(data, at)
    if kind == 7:
        if at + 8 > len(data):
            raise Malformed("a footer or page header runs past its bytes")
        return struct.unpack_from("<d", data, at)[0], at + 8
    if kind == 8:
        size, at = _varint(data, at)
        if at + size > len(data):
            raise Malformed("a footer or page header runs past its bytes")
        return data[at : at + size], at + size
    if kind in (9, 10):
        head = _byte(data, at)
        count, inner = head >> 4, head & 0x0F
        at += 1
        if count == 15:
            count, at = _varint(data, at)
        items = []
        for _ in range(count):  # each element takes a byte at least, and a byte past the end raises
            item, at = _value(data, at, inner, depth + 1)
            items.append(item)
        return items, at
    if kind == 11:
        count, at = _varint(data, at)
        pairs = []
        if count:
            head = _byte(data, at)
            at += 1
            for _ in range(count):
                key, at = _value(data, at, head >> 4, depth + 1)
                value, at = _value(data, at, head & 0x0F, depth + 1)
                pairs.append((key, value))
        return pairs, at
    if kind == 12:
        return _struct(data, at, depth + 1)
    raise Malformed(f"a value of unknown Thrift type {kind}")
