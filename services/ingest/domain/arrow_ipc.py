"""What an Arrow IPC body declares, read from its messages' metadata before any buffer is decoded.

pyarrow decompresses a record batch's LZ4 or ZSTD buffers when it reads the batch, into
buffers as large as each one's 8-byte length prefix says: a few hundred kilobytes of ZSTD
can claim (and fill) gigabytes before the batch exists to be measured, and a garbled prefix
asks malloc for petabytes. Its readers also check a batch's structure only cheaply (offsets
and dictionary indices inside their buffers, valid UTF-8 are left to ``validate(full=True)``).

So a body is measured first: each record batch and dictionary batch message's row count
and the bytes its buffers decode to (the prefixes when compressed, the lengths otherwise),
from a few fields of the flatbuffers Arrow's ``Message.fbs`` and ``File.fbs`` define. The
file format is measured through its footer's blocks, which is where its reader looks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3
"""``MessageHeader`` union tags (Message.fbs)."""
_FILE_MAGIC = b"ARROW1"


class Malformed(ValueError):
    """The metadata points outside its buffer, or says what no writer writes."""


@dataclass(frozen=True)
class Declared:
    """One batch message: the rows it says it holds and the bytes its buffers decode to."""

    rows: int
    decoded: int
    dictionary: bool


def _unpack(fmt: str, data: bytes | pa.Buffer, at: int) -> tuple[int, ...]:
    if at < 0 or at + struct.calcsize(fmt) > len(data):
        raise Malformed(f"metadata offset {at} is outside its {len(data)} bytes")
    return struct.unpack_from(fmt, data, at)


class _Table:
    """A flatbuffers table: fields by index (their vtable slot), absent fields as defaults."""

    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at = data, at
        self.vtable = at - _unpack("<i", data, at)[0]
        self.size = _unpack("<H", data, self.vtable)[0]

    def _slot(self, index: int) -> int:
        slot = 4 + 2 * index
        return _unpack("<H", self.data, self.vtable + slot)[0] if slot + 2 <= self.size else 0

    def scalar(self, index: int, fmt: str, default: int) -> int:
        slot = self._slot(index)
        return _unpack(fmt, self.data, self.at + slot)[0] if slot else default

    def _target(self, index: int) -> int | None:
        slot = self._slot(index)
        if not slot:
            return None
        return self.at + slot + _unpack("<I", self.data, self.at + slot)[0]

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self.data, at)

    def structs(self, index: int, fmt: str) -> list[tuple[int, ...]]:
        at = self._target(index)
        if at is None:
            return []
        count, size = _unpack("<I", self.data, at)[0], struct.calcsize(fmt)
        if at + 4 + count * size > len(self.data):
            raise Malformed(f"a vector of {count} entries runs past its metadata")
        return list(struct.iter_unpack(fmt, self.data[at + 4 : at + 4 + count * size]))


def _root(metadata: bytes) -> _Table:
    return _Table(metadata, _unpack("<I", metadata, 0)[0])


def declared(message: pa.ipc.Message) -> Declared | None:
    """What a batch message declares (None: not a batch, e.g. the schema)."""
    metadata = message.metadata.to_pybytes()
    root = _root(metadata)
    kind, header = root.scalar(1, "<B", 0), root.table(2)
    if kind not in (_DICTIONARY_BATCH, _RECORD_BATCH) or header is None:
        return None
    batch = header if kind == _RECORD_BATCH else header.table(1)  # DictionaryBatch.data
    if batch is None:
        raise Malformed("a dictionary batch without its data")
    rows = batch.scalar(0, "<q", 0)
    buffers = batch.structs(2, "<qq")  # Buffer {offset, length}
    body = b"" if message.body is None else message.body
    compressed = batch.table(3) is not None  # BodyCompression present
    return Declared(rows, sum(_decoded(body, offset, length, compressed) for offset, length in buffers),
                    kind == _DICTIONARY_BATCH)  # fmt: skip


def _decoded(body: bytes | pa.Buffer, offset: int, length: int, compressed: bool) -> int:
    if offset < 0 or length < 0 or offset + length > len(body):
        raise Malformed(f"a buffer ({offset}, {length}) lies outside the message body of {len(body)} bytes")
    if not compressed or length == 0:
        return length
    if length < 8:
        raise Malformed("a compressed buffer shorter than its length prefix")
    prefix = _unpack("<q", body, offset)[0]
    if prefix == -1:  # stored uncompressed after the prefix
        return length - 8
    if prefix < 0:
        raise Malformed(f"a compressed buffer declares {prefix} bytes")
    return prefix


def stream_messages(body: bytes) -> tuple[list[Declared], int]:
    """The batches a stream declares, and how many bytes follow its end (another stream, or garbage)."""
    source = pa.BufferReader(body)
    found = [d for m in pa.ipc.MessageReader.open_stream(source) if (d := declared(m)) is not None]
    return found, len(body) - source.tell()


def file_messages(body: bytes) -> list[Declared]:
    """The batches an IPC file's footer lists (dictionaries and record batches)."""
    if len(body) < 18 or not body.endswith(_FILE_MAGIC):
        raise Malformed("no Arrow file footer (the body does not end with ARROW1)")
    size = _unpack("<i", body, len(body) - 10)[0]
    start = len(body) - 10 - size
    if size <= 0 or start < 8:
        raise Malformed(f"the footer length {size} does not fit the body")
    footer = _root(body[start : len(body) - 10])
    blocks = footer.structs(2, "<qi4xq") + footer.structs(3, "<qi4xq")  # Block {offset, metaDataLength, bodyLength}
    buffer = pa.py_buffer(body)
    found = []
    for offset, _, _ in blocks:
        if not 0 <= offset < start:
            raise Malformed(f"a block at offset {offset} lies outside the file's messages")
        if (d := declared(pa.ipc.read_message(buffer.slice(offset)))) is not None:
            found.append(d)
    return found


def batches(declared: Iterator[Declared] | list[Declared]) -> tuple[int, int]:
    """Rows of the record batches, and bytes every batch decodes to."""
    rows = decoded = 0
    for d in declared:
        rows += 0 if d.dictionary else d.rows
        decoded += d.decoded
    return rows, decoded
