"""Request bodies in the columnar formats ingest reads: an Arrow IPC stream or file, Parquet."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def arrow_stream(table: pa.Table, compression: str | None = None, batch_rows: int | None = None) -> bytes:
    """``table`` as an Arrow IPC stream (buffers LZ4- or ZSTD-compressed if asked, batches of ``batch_rows``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return bytes(sink.getvalue())


def arrow_file(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC file (magic, messages, footer)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def parquet(table: pa.Table, **options: Any) -> bytes:
    """``table`` as a Parquet file, written with ``pq.write_table``'s ``options``."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()
