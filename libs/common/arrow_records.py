"""Producing ``records.submitted`` events whose rows travel as Arrow IPC streams.

A table (read from Parquet, CSV, a DataFrame, …) is cut into slices whose
events each fit in one Kafka message, every slice written as an Arrow IPC
stream with compressed buffers. The consumer reads them exactly as the HTTP
route reads an ``application/vnd.apache.arrow.stream`` body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import pyarrow as pa

from libs.common.events import RecordsSubmitted

#: Under the broker's default ``message.max.bytes`` (1 MiB) and aiokafka's ``max_request_size``.
DEFAULT_MESSAGE_BYTES = 1_000_000
#: Rows per event at most (a smaller, faster micro-batch step than ingest's own per-event limit,
#: ``max_rows_per_request``, 1,000,000 by default; an event is also cut by ``DEFAULT_MESSAGE_BYTES``).
DEFAULT_MAX_ROWS = 100_000
Compression = Literal["zstd", "lz4"] | None
T = TypeVar("T")


def arrow_stream(table: pa.Table, compression: Compression = "zstd") -> bytes:
    """``table`` as an Arrow IPC stream, its buffers compressed with ``compression`` (None: plain)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def fitted_slices(
    table: pa.Table, *, max_rows: int, max_bytes: int, budget: int, encode: Callable[[pa.Table], T],
    size: Callable[[T], int],
) -> Iterator[tuple[pa.Table, T]]:  # fmt: skip
    """Consecutive slices of ``table``, each with what ``encode`` made of it: at most ``max_rows`` rows
    and ``size(encoded) <= max_bytes``.

    A slice starts at the rows ``budget`` uncompressed bytes hold (the table's mean row width) and is
    halved until it fits, and later slices keep the smaller size; so the cut depends on the table
    alone, and the same table is cut the same way every time. A single row that does not fit is a
    :class:`ValueError`.
    """
    if table.num_rows == 0:
        return
    step = max(1, min(max_rows, int(budget // max(1.0, table.nbytes / table.num_rows))))
    start = 0
    while start < table.num_rows:
        piece = table.slice(start, step)
        encoded = encode(piece)
        if size(encoded) > max_bytes:
            if step == 1:
                raise ValueError(f"row {start} alone takes more than {max_bytes} bytes")
            step = max(1, step // 2)
            continue
        yield piece, encoded
        start += piece.num_rows


def arrow_events(
    table: pa.Table,
    *,
    dataset: str,
    producer: str,
    max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
    compression: Compression = "zstd",
    **fields: Any,
) -> Iterator[RecordsSubmitted]:
    """Events carrying ``table``'s rows in order, each at most ``max_message_bytes`` once serialised and
    at most ``max_rows`` rows (ingest refuses more in one event: ``DRIFTLOOP_INGEST_MAX_ROWS_PER_REQUEST``;
    narrow rows, such as a few booleans, fit far more than that in a message).

    Cut by :func:`fitted_slices` (base64 adds a third to the stream); a single row that does not fit
    is a :class:`ValueError`. ``fields`` go to every event (``principal``, ``entity_id``,
    ``correlation_id``).
    """

    def event(piece: pa.Table) -> RecordsSubmitted:
        return RecordsSubmitted(dataset=dataset, producer=producer, arrow=arrow_stream(piece, compression), **fields)

    for _, made in fitted_slices(table, max_rows=max_rows, max_bytes=max_message_bytes,
                                 budget=max_message_bytes * 3 // 4, encode=event,
                                 size=lambda e: len(e.to_bytes())):  # fmt: skip
        yield made
