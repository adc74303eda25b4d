"""A batch's rejected rows as columns: row, field, reason, and the records as sent.

A request that rejects half of 10,000 rows used to make 5,000 Python objects:
a reason worded per row, a dict taken from the table per row, and that dict
written as JSON per row for the quarantine. That was most of the time the
request took (about 35 of 50 ms for an Arrow body). Here the reasons are Arrow
string columns built with ``pyarrow.compute``, and for a table body (CSV, Arrow,
Parquet) the records stay an Arrow sub-table of the body; they become JSON only
when the rejections API reads them (:mod:`quarantine`). A JSON body's records
are Python objects already: they are kept as their JSON text, as before.

:class:`RejectedRows` is also a sequence of :class:`Rejection`, made on demand,
for the few that an answer lists (the first 100) and for the paths where rows
are few (keys refused one by one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc


class Rejection(NamedTuple):
    """A rejected row: its index in the request, the first field at fault, why, the record as sent,
    and that record as the quarantine stores it (JSON, made with the rejection, off the event loop)."""

    row: int
    field: str | None
    reason: str
    record: Any = None
    text: str | None = None


def rejection(row: int, field: str | None, reason: str, record: Any = None) -> Rejection:
    return Rejection(row, field, reason, record, record_json(record))


NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
"""How the quarantine writes a non-finite number, which JSON cannot hold: as the string JavaScript
and Python's ``float()`` read back (``null`` would lose it: it already means a missing value)."""


def record_json(record: Any) -> str | None:
    """The rejected record as JSON for the quarantine; a NaN or an infinity in it becomes a string
    (:data:`NON_FINITE`), so ``{"age": NaN}`` is kept as ``{"age": "NaN"}``, never as null."""
    if record is None:
        return None
    if isinstance(record, dict):
        try:
            text = orjson.dumps(record, default=str)
        except TypeError:  # e.g. an integer beyond 64 bits: the standard library writes it
            pass
        else:  # orjson writes NaN and infinity as null: a null the record's own Nones do not account for
            # (or one inside a string) needs a closer look; both counts are made in C.
            if text.count(b"null") == list(record.values()).count(None):
                return text.decode()
    try:
        return json.dumps(record, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts and lists, as its :data:`NON_FINITE` string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(value)]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@dataclass(frozen=True, eq=False)
class RejectedRows(Sequence[Rejection]):
    """Rejected rows in row order, as aligned columns.

    ``records`` is either an Arrow table (the rows of a table body as sent, one per rejection) or a
    string array of each record's quarantine JSON (null: no record), or None (no records at all)."""

    rows: np.ndarray
    fields: pa.Array
    reasons: pa.Array
    records: pa.Table | pa.Array | None = None

    @classmethod
    def empty(cls) -> RejectedRows:
        return cls(np.zeros(0, np.int64), pa.array([], pa.string()), pa.array([], pa.string()))

    @classmethod
    def of(cls, rejected: Sequence[Rejection]) -> RejectedRows:
        """Rejections made one by one (their records kept as their JSON text)."""
        if isinstance(rejected, RejectedRows):
            return rejected
        return cls(
            np.fromiter((r.row for r in rejected), np.int64, len(rejected)),
            pa.array([r.field for r in rejected], pa.string()),
            pa.array([r.reason for r in rejected], pa.string()),
            pa.array([r.text for r in rejected], pa.string()),
        )

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Rejection: ...
    @overload
    def __getitem__(self, index: slice) -> list[Rejection]: ...
    def __getitem__(self, index: int | slice) -> Rejection | list[Rejection]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self.slice(start, max(0, stop - start)).materialise()
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.slice(index, 1).materialise()[0]

    def __iter__(self) -> Iterator[Rejection]:
        return iter(self.materialise())

    def slice(self, start: int, length: int) -> RejectedRows:
        records = None if self.records is None else self.records.slice(start, length)
        return RejectedRows(self.rows[start : start + length], self.fields.slice(start, length),
                            self.reasons.slice(start, length), records)  # fmt: skip

    def texts(self) -> pa.Array:
        """Each record's quarantine JSON (null: no record), made here for a table's records."""
        if self.records is None:
            return pa.nulls(len(self), pa.string())
        if isinstance(self.records, pa.Table):
            return pa.array([record_json(r) for r in self.records.to_pylist()], pa.string())
        return self.records

    def materialise(self) -> list[Rejection]:
        """Each rejection as a :class:`Rejection` (a Python object per row: for a few rows)."""
        rows, fields, reasons = self.rows.tolist(), self.fields.to_pylist(), self.reasons.to_pylist()
        if isinstance(self.records, pa.Table):
            records: list[Any] = self.records.to_pylist()
            texts = [record_json(r) for r in records]
        else:
            texts = [None] * len(rows) if self.records is None else self.records.to_pylist()
            records = [None if t is None else json.loads(t) for t in texts]
        return list(map(Rejection, rows, fields, reasons, records, texts))

    def listed(self, limit: int) -> list[tuple[int, str | None, str]]:
        """(row, field, reason) of the first ``limit`` rejections: what an answer lists (no record)."""
        part = self.slice(0, min(limit, len(self)))
        return list(zip(part.rows.tolist(), part.fields.to_pylist(), part.reasons.to_pylist(), strict=True))

    def shifted(self, by: int) -> RejectedRows:
        return self if not by else RejectedRows(self.rows + by, self.fields, self.reasons, self.records)

    def replace_reasons(self, positions: Sequence[int], reasons: Sequence[str]) -> RejectedRows:
        if not positions:
            return self
        mask = np.zeros(len(self), dtype=bool)
        mask[list(positions)] = True
        fixed = pc.replace_with_mask(self.reasons, pa.array(mask), pa.array(list(reasons), pa.string()))
        return RejectedRows(self.rows, self.fields, fixed, self.records)

    @staticmethod
    def concat(parts: Sequence[RejectedRows]) -> RejectedRows:
        """The parts as one, in row order (a stable sort: rows given twice keep the parts' order).
        Records stay a table when every part's are tables of one schema; otherwise they become JSON text."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return RejectedRows.empty()
        if len(parts) == 1:
            return parts[0]
        rows = np.concatenate([p.rows for p in parts])
        fields = pa.concat_arrays([p.fields for p in parts])
        reasons = pa.concat_arrays([p.reasons for p in parts])
        tables = [p.records for p in parts if isinstance(p.records, pa.Table)]
        records: pa.Table | pa.Array
        if len(tables) == len(parts) and all(t.schema.equals(tables[0].schema) for t in tables):
            records = pa.concat_tables(tables)
        else:
            records = pa.concat_arrays([p.texts() for p in parts])
        order = np.argsort(rows, kind="stable")
        if (order[1:] > order[:-1]).all():
            return RejectedRows(rows, fields, reasons, records)
        take = pa.array(order)
        return RejectedRows(rows[order], fields.take(take), reasons.take(take), records.take(take))
