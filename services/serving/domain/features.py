"""Requests to columns: validation compiled once per schema, run over the whole batch.

A request arrives as rows (the driftloop JSON API) or as columns (the Open
Inference Protocol). Either way the model wants one array per feature, so the
batch is turned into columns first and each column is checked at once: its
Python types in one pass, ranges and finiteness with NumPy. Almost every
request is valid, and for those this is the whole cost.

When a column fails the fast check, the batch is checked again row by row
with the same rules ingest applies (:func:`libs.common.validation.validate_row`),
so the error names the first bad instance and field exactly as before, and
the row-by-row rules decide: the fast path only ever accepts what they accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from libs.common.schema import DatasetSchema, DType, FeatureSpec
from libs.common.validation import validate_row


class InvalidInstance(Exception):
    """The first problem found in a batch: which instance, which field, what."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        super().__init__(f"instance {index}: {field}: {problem}")
        self.index = index
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Columns:
    """A validated batch: one array per feature, in schema order.

    Numeric, integer and boolean features are float64 with NaN for a missing
    value; categorical features are object arrays of str with None for missing.
    """

    rows: int
    arrays: dict[str, np.ndarray]

    def slice(self, start: int, stop: int) -> Columns:
        return Columns(stop - start, {name: a[start:stop] for name, a in self.arrays.items()})

    @staticmethod
    def concat(parts: Sequence[Columns]) -> Columns:
        if len(parts) == 1:
            return parts[0]
        names = parts[0].arrays.keys()
        return Columns(sum(p.rows for p in parts), {n: np.concatenate([p.arrays[n] for p in parts]) for n in names})


class _Slow(Exception):
    """The fast check could not vouch for a column; check the batch row by row."""


class CompiledSchema:
    """The checks of one schema, prepared once and applied to whole batches."""

    def __init__(self, schema: DatasetSchema) -> None:
        self.schema = schema
        self.features = list(schema.features)
        self.names = [f.name for f in self.features]
        self._allowed = {
            f.name: frozenset(f.categories) for f in self.features if f.closed and f.categories is not None
        }
        numeric = [f for f in self.features if f.dtype is not DType.CATEGORICAL]
        self._numeric = [f.name for f in numeric]
        self._checks = [
            (f.name, f.dtype, f.nullable, -math.inf if f.min is None else f.min,
             math.inf if f.max is None else f.max, self._allowed.get(f.name))
            for f in self.features
        ]  # fmt: skip
        self._low = np.array([[-np.inf if f.min is None else f.min] for f in numeric], dtype=np.float64)
        self._high = np.array([[np.inf if f.max is None else f.max] for f in numeric], dtype=np.float64)

    def missing_row(self) -> Columns:
        """One row with every value missing (NaN, None), bypassing the checks: a runtime's warm-up input."""
        return Columns(1, {
            f.name: np.array([None], dtype=object) if f.dtype is DType.CATEGORICAL else np.array([np.nan])
            for f in self.features
        })  # fmt: skip

    def from_instances(self, instances: Sequence[Any]) -> Columns:
        """Columns from rows (dicts of feature → value); keys that are not features are ignored."""
        for index, instance in enumerate(instances):
            if type(instance) is not dict:
                raise InvalidInstance(index, "instance", f"expected an object, got {type(instance).__name__}")
        raw = {name: [instance.get(name, ABSENT) for instance in instances] for name in self.names}
        return self.from_columns(raw, len(instances))

    def from_columns(self, raw: dict[str, list[Any]], rows: int) -> Columns:
        """Columns from per-feature value lists of ``rows`` values each.

        A feature missing from ``raw`` is absent in every row; :data:`ABSENT`
        marks one absent value (reported as a missing column, unlike a null).
        """
        try:
            return Columns(rows, self._few(raw, rows) if rows <= FEW_ROWS else self._fast(raw, rows))
        except _Slow:
            return self._row_by_row(raw, rows)

    def _fast(self, raw: dict[str, list[Any]], rows: int) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        numbers: list[list[Any]] = []
        nulls: list[int] = []
        for spec in self.features:
            values = raw.get(spec.name) or [ABSENT] * rows
            types = set(map(type, values))
            missing = types & _MISSING_TYPES
            if missing:
                if not spec.nullable:
                    raise _Slow
                if _Absent in missing:
                    values = [None if v is ABSENT else v for v in values]
                types -= missing
            if spec.dtype is DType.CATEGORICAL:
                allowed = self._allowed.get(spec.name)
                if not types <= {str}:
                    raise _Slow
                if allowed is not None and not allowed.issuperset(v for v in values if v is not None):
                    raise _Slow
                column = np.empty(rows, dtype=object)
                column[:] = values
                arrays[spec.name] = column
                continue
            if not (types <= {bool} if spec.dtype is DType.BOOLEAN else types <= {int, float}):
                raise _Slow
            if (
                spec.dtype is DType.INTEGER
                and float in types
                and any(not v.is_integer() for v in values if type(v) is float)
            ):
                raise _Slow
            numbers.append(values)
            nulls.append(values.count(None) if missing else 0)
        if numbers:
            # One matrix for every numeric column: a handful of NumPy calls per batch, not per column.
            try:
                matrix = np.array(numbers, dtype=np.float64)
            except (OverflowError, ValueError, TypeError):
                raise _Slow from None
            nan = np.isnan(matrix)
            if (nan.sum(axis=1) != nulls).any():
                raise _Slow  # NaN sent as a number
            with np.errstate(invalid="ignore"):
                if ((matrix < self._low) | (matrix > self._high) | np.isinf(matrix)).any():
                    raise _Slow
            arrays.update(zip(self._numeric, matrix, strict=True))
        return {name: arrays[name] for name in self.names}

    def _few(self, raw: dict[str, list[Any]], rows: int) -> dict[str, np.ndarray]:
        """The checks of :meth:`_fast`, value by value: for a handful of rows, a dozen NumPy calls per
        batch cost more than the values themselves (a one-row request is the common case under load)."""
        arrays: dict[str, np.ndarray] = {}
        numbers: list[list[Any]] = []
        for name, dtype, nullable, low, high, allowed in self._checks:
            values = raw.get(name) or [ABSENT] * rows
            if dtype is DType.CATEGORICAL:
                column = np.empty(rows, dtype=object)  # None where a value is missing
                for index, value in enumerate(values):
                    if type(value) is str and (allowed is None or value in allowed):
                        column[index] = value
                    elif not (nullable and (value is None or value is ABSENT)):
                        raise _Slow
                arrays[name] = column
                continue
            checked: list[Any] = []
            for value in values:
                kind = type(value)
                if dtype is DType.BOOLEAN:
                    if kind is bool:
                        checked.append(float(value))
                        continue
                elif kind is int or kind is float:
                    # NaN fails both comparisons; infinity fails them unless unbounded, hence isinf.
                    if not low <= value <= high or (kind is float and math.isinf(value)):
                        raise _Slow
                    if dtype is DType.INTEGER and kind is float and not value.is_integer():
                        raise _Slow
                    checked.append(value)
                    continue
                if not (nullable and (value is None or value is ABSENT)):
                    raise _Slow
                checked.append(math.nan)
            numbers.append(checked)
        if numbers:
            try:
                matrix = np.array(numbers, dtype=np.float64)
            except (OverflowError, ValueError, TypeError):
                raise _Slow from None
            arrays.update(zip(self._numeric, matrix, strict=True))
        return {name: arrays[name] for name in self.names}

    def _row_by_row(self, raw: dict[str, list[Any]], rows: int) -> Columns:
        """The ingest rules, one row at a time: the first problem raised, else the coerced columns
        (the fast check is stricter in rare cases, a NaN sent for a nullable value for one)."""
        coerced = []
        for index in range(rows):
            record = {name: values[index] for name, values in raw.items() if values[index] is not ABSENT}
            row, problems = validate_row(self.schema, record, from_text=False, require_target=False)
            if problems:
                field, problem = problems[0]
                raise InvalidInstance(index, field, problem)
            coerced.append(row)
        arrays: dict[str, np.ndarray] = {}
        for spec in self.features:
            values = [row[spec.name] for row in coerced]
            if spec.dtype is DType.CATEGORICAL:
                arrays[spec.name] = np.empty(rows, dtype=object)
                arrays[spec.name][:] = values
            else:
                arrays[spec.name] = np.array(values, dtype=np.float64)
        return Columns(rows, arrays)


FEW_ROWS = 8
"""Batches up to this many rows are checked value by value, larger ones column by column with NumPy."""


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
"""Marks a value an instance does not have at all (unlike an explicit null)."""
_MISSING_TYPES = frozenset({type(None), _Absent})


def row_values(spec: FeatureSpec, column: np.ndarray) -> list[Any]:
    """A column back to the plain values ingest would have stored (None for missing), for the prediction log."""
    if spec.dtype is DType.CATEGORICAL:
        return list(column)
    values: list[Any] = column.tolist()
    if spec.dtype is DType.INTEGER:
        return [None if math.isnan(v) else int(v) for v in values]
    if spec.dtype is DType.BOOLEAN:
        return [None if math.isnan(v) else v == 1.0 for v in values]
    return [None if math.isnan(v) else v for v in values]
