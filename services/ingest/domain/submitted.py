"""The rows of a records.submitted micro-batch: JSON records and Arrow IPC streams, judged as one submission.

An event carries its rows as JSON objects or as an Arrow IPC stream. Each is
judged by the HTTP route's own code: an Arrow stream is read by
:func:`parse_body` as an ``application/vnd.apache.arrow.stream`` body would be
(same size limit, same refusals) and validated column by column, JSON records
by :func:`validate_records`. There is no third rule set.

What differs from one HTTP request is that a run of one dataset's events
becomes ONE submission (one dataset version). So an Arrow event that cannot be
read, whose columns do not match the schema, or that expands past the limit is
refused on its own (the consumer dead-letters it) before anything is stored,
and the judged parts of the others are joined: rows are numbered across the
events in order, as they always were for JSON records, and a key repeated in a
later event is refused like one repeated within an event.

A run holds at most what one submission may (:class:`Cap`: by default what one
HTTP request may hold), and :func:`runs` reads the events lazily, one run at a
time: the limits are per event, and a micro-batch holds up to thousands of
events, whose compressed Arrow buffers can expand many times over. Reading them
all before storing any held the whole micro-batch's rows in memory at once.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from libs.common.errors import BadRequest, DriftloopError
from libs.common.events import ARROW_STREAM, RecordsSubmitted
from libs.common.schema import DatasetSchema
from services.ingest.domain.parsing import parse_body
from services.ingest.domain.validation import (
    RejectedRows,
    ValidationResult,
    rejection,
    validate,
    validate_records,
)

#: An event's rows: an Arrow stream once read (a table), JSON records as sent.
Part: TypeAlias = pa.Table | list[dict[str, Any]]
_OF_ROW = re.compile(r"^(duplicate key .* of row )(\d+)$")
#: Bytes a JSON record is counted as (a validated row of a few features, in Arrow): it has no buffers to measure.
JSON_RECORD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Cap:
    """Most rows, and decoded bytes (:func:`size`), that one submission of a micro-batch holds."""

    rows: int
    bytes: int


@dataclass(slots=True)
class Run:
    """Consecutive events of one dataset, read: what one submission is made of. ``parts`` are the rows
    of the events that were read, ``refused`` why the others were not, each with the event's index."""

    parts: list[tuple[int, Part]] = field(default_factory=list)
    refused: list[tuple[int, DriftloopError]] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0

    def add(self, index: int, part: Part) -> None:
        self.parts.append((index, part))
        self.rows += rows(part)
        self.bytes += size(part)


def rows(part: Part) -> int:
    """How many rows ``part`` carries."""
    return len(part) if isinstance(part, list) else part.num_rows


def size(part: Part) -> int:
    """The bytes ``part`` holds once read: an Arrow table's buffers, :data:`JSON_RECORD_BYTES` a JSON record."""
    return len(part) * JSON_RECORD_BYTES if isinstance(part, list) else part.nbytes


def runs(
    schema: DatasetSchema, events: Iterable[RecordsSubmitted], *, max_decoded: int, max_rows: int, cap: Cap
) -> Iterator[Run]:
    """``events`` (one dataset's, in order) read one at a time and cut into consecutive runs under ``cap``.

    An event whose rows would take the run past ``cap`` (in rows or bytes) ends it: the run is
    yielded and the event starts the next one, so a run exceeds ``cap`` only when one event alone
    does. Lazy: the next run is read only when asked for, so whoever stores each run before asking
    for the next (and lets it go) holds at most one run and one event. An Arrow event that cannot be
    read goes to the run's ``refused`` (see :func:`read_arrow`; ``max_decoded`` and ``max_rows`` are
    its per-event limits) and counts for nothing; every run has a part or a refusal.
    """
    run = Run()
    passed: list[pa.Schema] = []
    for index, event in enumerate(events):
        try:
            part = _read(schema, event, max_decoded=max_decoded, max_rows=max_rows, seen=passed)
        except DriftloopError as exc:
            run.refused.append((index, exc))
            continue
        if run.parts and (run.rows + rows(part) > cap.rows or run.bytes + size(part) > cap.bytes):
            yield run
            run = Run()
        run.add(index, part)
    if run.parts or run.refused:
        yield run


def _read(schema: DatasetSchema, event: RecordsSubmitted, *, max_decoded: int, max_rows: int,
          seen: list[pa.Schema]) -> Part:  # fmt: skip
    """The event's rows: its JSON records as sent, or its Arrow stream read and checked (:func:`read_arrow`)."""
    if event.arrow is None:
        return event.records or []  # the event's model requires one of the two
    return read_arrow(schema, event.arrow, max_decoded=max_decoded, max_rows=max_rows, seen=seen)


def read_arrow(
    schema: DatasetSchema, data: bytes, *, max_decoded: int, max_rows: int, seen: list[pa.Schema] | None = None
) -> pa.Table:
    """The rows of one Arrow IPC stream, read and checked against ``schema``, not yet validated.

    Raises what the HTTP route answers with a 4xx: :class:`BadRequest` (not a
    readable stream, or more rows than ``max_rows``), :class:`PayloadTooLarge`
    (its buffers expand past ``max_decoded`` bytes) or ``SchemaMismatch`` (a
    column missing or of a type that cannot be read as the declared one).
    Whether the columns match depends on their names and types alone, so it is
    checked on no rows, once per Arrow schema in ``seen`` (the schemas that passed).
    """
    # the row count is checked on what the stream declares, before its buffers are read
    parsed = parse_body(data, ARROW_STREAM, max_decoded=max_decoded, max_rows=max_rows)
    table = parsed.table
    assert table is not None  # an Arrow body is always read as a table
    seen = [] if seen is None else seen
    if not any(table.schema.equals(known) for known in seen):
        _validated(schema, table.slice(0, 0))
        seen.append(table.schema)
    return table


def _validated(schema: DatasetSchema, table: pa.Table) -> ValidationResult:
    try:
        return validate(schema, table=table)
    except (pa.ArrowException, TypeError) as exc:  # a column type no rule foresaw (nested, extension, …)
        raise BadRequest(f"the Arrow IPC stream could not be validated: {exc}") from exc


def combine(schema: DatasetSchema, parts: Sequence[Part]) -> ValidationResult:
    """One submission from the parts of one dataset's events, in event order.

    Runs of consecutive JSON parts are validated together, and so are runs of
    Arrow tables with the same columns (one call, not one per small event:
    validating a table has a fixed cost per column); see :func:`join`.
    """
    judged: list[ValidationResult] = []
    records: list[dict[str, Any] | None] = []
    tables: list[pa.Table] = []

    def flush() -> None:
        if records:
            judged.append(validate_records(schema, list(records)))
            records.clear()
        if tables:
            judged.append(_validated(schema, pa.concat_tables(tables)))
            tables.clear()

    for part in parts:
        if isinstance(part, list):
            if tables:
                flush()
            records.extend(part)
        else:
            if records or (tables and not part.schema.equals(tables[0].schema)):
                flush()
            tables.append(part)
    flush()
    return join(schema.key, judged)


def join(key: str | None, parts: Sequence[ValidationResult]) -> ValidationResult:
    """The parts as one result: rows numbered on from part to part, accepted rows concatenated
    in order, and a key that an earlier part accepted refused in the later one
    (``duplicate key 'k' of row N``, N counted across the parts, as within a part)."""
    if len(parts) == 1:
        return parts[0]
    starts = np.cumsum([0, *(p.accepted.num_rows + len(p.rejected) for p in parts)]).tolist()
    seen: dict[str, int] = {}
    tables: list[pa.Table] = []
    keys: list[tuple[int, str, int]] = []
    rejected: list[RejectedRows] = []
    for part, start in zip(parts, starts, strict=False):
        rejected.append(_shifted(part.rejected, start, key))
        keep = np.ones(part.accepted.num_rows, dtype=bool)
        repeated: list[tuple[int, str]] = []
        for position, (row, value, _) in enumerate(part.keys):
            if value in seen:
                keep[position] = False
                repeated.append((row, value))
            else:
                seen[value] = row + start
                keys.append((row + start, value, len(keys)))
        if repeated:
            records = part.originals([row for row, _ in repeated])
            rejected.append(RejectedRows.of([
                rejection(row + start, key, f"duplicate key {value!r} of row {seen[value]}", record)
                for (row, value), record in zip(repeated, records, strict=True)
            ]))  # fmt: skip
        tables.append(part.accepted if keep.all() else part.accepted.filter(pa.array(keep)))

    def originals(rows: Sequence[int]) -> list[Any]:
        """The records at these (joined) row indices, each asked of its part in one call per part."""
        wanted: dict[int, list[int]] = {}
        for row in rows:
            wanted.setdefault(bisect_right(starts, row) - 1, []).append(row)
        found: dict[int, Any] = {}
        for index, joined in wanted.items():
            local = [row - starts[index] for row in joined]
            found.update(zip(joined, parts[index].originals(local), strict=True))
        return [found[row] for row in rows]

    return ValidationResult(pa.concat_tables(tables), RejectedRows.concat(rejected), keys, originals)


def _shifted(part: RejectedRows, start: int, key: str | None) -> RejectedRows:
    """``part`` with its rows (and the earlier row a duplicate key names) counted across the parts."""
    if not start or not len(part):
        return part
    positions: list[int] = []
    reasons: list[str] = []
    if key is not None:  # only rows refused for their key name another row: few, one by one
        for position in np.flatnonzero(_is(part.fields, key)).tolist():
            if match := _OF_ROW.match(part.reasons[position].as_py()):
                positions.append(position)
                reasons.append(f"{match.group(1)}{int(match.group(2)) + start}")
    return part.replace_reasons(positions, reasons).shifted(start)


def _is(values: pa.Array, text: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.equal(values, text), False).to_numpy(zero_copy_only=False), dtype=bool)
