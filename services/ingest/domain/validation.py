"""Validation of a batch of records, column by column, with a reason kept per rejected row.

The per-value rules are shared with serving (``libs.common.validation``);
ingest adds what only a batch has: unreadable records and, when the schema
declares a record ``key``, records whose key is missing or repeats an
earlier row's, each kept with its reason. Identical rows are never refused
for being identical: repeated observations and low-cardinality features make
them normal data, and dropping them would distort the class balance.

How a batch is judged: each column is converted to its Arrow type and checked
with ``pyarrow.compute`` (nulls, NaN, infinity, range, integrality, closed
categories). Those checks are deliberately conservative: they only *suspect*
a value. Every suspected value, and only those, goes through the scalar rule
``coerce`` that serving uses, which decides and words the reason. So a value
is accepted or rejected, with the same message, exactly as row-by-row
validation would do, while the work per clean row is a few vectorised
passes. pyarrow.compute was chosen over polars or DuckDB because the bodies
are parsed into Arrow and stored as Parquet through pyarrow already: no
second engine, no copy between them.
"""

from __future__ import annotations

import abc
import contextlib
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from libs.common.datasets import arrow_schema
from libs.common.errors import ValidationFailed
from libs.common.schema import DatasetSchema, DType, FeatureSpec
from libs.common.validation import InvalidValue, coerce
from services.ingest.domain.rejected import RejectedRows, Rejection, record_json, rejection

__all__ = ["RejectedRows", "Rejection", "ValidationResult", "record_json", "rejection", "validate", "validate_records"]


class SchemaMismatch(ValidationFailed):
    """A columnar body whose columns cannot be read as the declared schema (missing, or of another type)."""

    code = "schema_mismatch"


@dataclass
class ValidationResult:
    accepted: pa.Table
    """The accepted rows, in the dataset's column types (no ingestion time yet)."""
    rejected: RejectedRows = field(default_factory=RejectedRows.empty)
    """The rejected rows, in row order, as columns (see :mod:`rejected`)."""
    keys: list[tuple[int, str, int]] = field(default_factory=list)
    """(row, key, position in ``accepted``) of each accepted row when the schema has a key."""
    originals: Callable[[Sequence[int]], list[Any]] = field(default=lambda rows: [None] * len(rows))
    """The records at these row indices, as they were sent (for the quarantine)."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_ARROW = {DType.NUMERIC: pa.float64(), DType.INTEGER: pa.int64(), DType.CATEGORICAL: pa.string(),
          DType.BOOLEAN: pa.bool_()}  # fmt: skip
_JSON_KINDS: dict[DType, frozenset[type]] = {
    DType.NUMERIC: frozenset({int, float, type(None)}),
    DType.INTEGER: frozenset({int, type(None)}),
    DType.CATEGORICAL: frozenset({str, type(None)}),
    DType.BOOLEAN: frozenset({bool, type(None)}),
}
#: Text that both ``float()`` and Arrow read as the same number; other text goes to the scalar rule.
_NUMBER_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TRUE = ["true", "1", "yes", "t", "y"]
_FALSE = ["false", "0", "no", "f", "n"]
_WARM_UP = DatasetSchema.model_validate(
    {"features": [{"name": "x", "dtype": "numeric", "min": 0}], "target": {"name": "y", "dtype": "categorical"},
     "task": "classification"}
)  # fmt: skip
_EXACT = float(2**53)
"""Integers beyond this lose digits as floats: compared with the scalar rule, not in float64."""


def key_text(value: Any) -> str | None:
    """A record key as text (None: no usable key)."""
    if value is None or value is MISSING or value == "" or isinstance(value, _NOT_KEYS):
        return None
    return str(value)


_NOT_KEYS = (dict, list, bool, bytes)
"""Values that name no record (a key is text or a number)."""


def _no_key(value: Any) -> str:
    """Why ``value`` is no key (:func:`key_text` gave None)."""
    if isinstance(value, _NOT_KEYS):
        kind = {dict: "an object", list: "a list", bool: "a boolean", bytes: "binary"}[type(value)]
        return f"{kind} cannot be a record key"
    return "missing record key"


def record_key(schema: DatasetSchema, record: dict[str, Any]) -> str | None:
    """The record's key as text (None: the schema has no key, or the record lacks it)."""
    return None if schema.key is None else key_text(record.get(schema.key))


def warm_up(schema: DatasetSchema | None = None) -> None:
    """Validate a tiny CSV-like batch once: the first ``pyarrow.compute`` call with a Python scalar
    imports pandas (seconds on a busy machine), which should not land on the first request."""
    table = pa.table({"x": pa.array(["1", ""]), "y": pa.array(["a", ""])})
    validate(schema or _WARM_UP, table=table, from_text=True)


def validate_records(
    schema: DatasetSchema,
    records: list[dict[str, Any] | None],
    *,
    from_text: bool = False,
    unreadable: dict[int, str] | None = None,
) -> ValidationResult:
    """Split ``records`` into accepted rows (coerced) and rejections with reasons."""
    return validate(schema, records=records, from_text=from_text, unreadable=unreadable or {})


def validate(
    schema: DatasetSchema,
    *,
    records: list[dict[str, Any] | None] | None = None,
    table: pa.Table | None = None,
    from_text: bool = False,
    unreadable: dict[int, str] | None = None,
) -> ValidationResult:
    """Validate a batch given as JSON-like records or as an Arrow table (CSV text columns when
    ``from_text``, typed columns otherwise); see the module docstring for how."""
    unreadable = unreadable or {}
    source: _Source
    if table is not None:
        source = _TextTable(table) if from_text else _TypedTable(table, schema)
    else:
        source = _Records(records or [], from_text)
    columns = schema.stored_columns
    arrays: list[pa.Array] = []
    problems: list[tuple[int, np.ndarray, pa.Array]] = []
    for number, spec in enumerate(columns):
        values, positions, messages = _judge(spec, source)
        arrays.append(values)
        if len(positions):
            problems.append((number, positions, messages))
    keep = np.ones(source.n, dtype=bool)
    found = _rejections([c.name for c in columns], problems, source, keep)
    parts = [found]
    missing = [i for i, r in enumerate(records) if r is None] if table is None and records else []
    if missing:
        unread = [Rejection(row, None, unreadable.get(row, "unreadable record")) for row in missing]
        parts.append(RejectedRows.of(unread))
    keys: list[tuple[int, str, int]] = []
    if schema.key is not None:
        keys, refused = _keys(schema.key, source, keep)
        parts.append(RejectedRows.of(refused))
    target = arrow_schema(schema)
    accepted = pa.Table.from_arrays(arrays, schema=pa.schema([target.field(c.name) for c in columns]))
    if not keep.all():
        accepted = accepted.filter(pa.array(keep))

    def originals(rows: Sequence[int]) -> list[Any]:
        return source.originals([source.position(r) for r in rows])

    return ValidationResult(accepted, RejectedRows.concat(parts), keys, originals)


def _rejections(
    names: list[str], problems: list[tuple[int, np.ndarray, pa.Array]], source: _Source, keep: np.ndarray
) -> RejectedRows:
    """The rows with problems, as columns: each row's first field at fault and its reason, worded as
    row-by-row validation words it (``field: message``, or several such joined by ``; `` in column
    order), with no Python per row; ``keep`` is cleared at those rows."""
    if not problems:
        return RejectedRows.empty()
    positions = np.concatenate([p for _, p, _ in problems])
    numbers = np.concatenate([np.full(len(p), n, np.int32) for n, p, _ in problems])
    messages = pa.concat_arrays([m for _, _, m in problems])
    order = np.argsort(positions, kind="stable")  # problems were gathered column by column
    positions, numbers = positions[order], numbers[order]
    take = pa.array(order)
    named = pc.take(pa.array(names, pa.string()), pa.array(numbers))
    worded = pc.binary_join_element_wise(named, messages.take(take), ": ")
    starts = np.flatnonzero(np.r_[True, positions[1:] != positions[:-1]])
    bad = positions[starts]
    if len(starts) == len(positions):  # one fault per row: the common case
        reasons = worded
    else:
        offsets = pa.array(np.r_[starts, len(positions)].astype(np.int32))
        reasons = pc.binary_join(pa.ListArray.from_arrays(offsets, worded), "; ")
    keep[bad] = False
    rows = bad if source.identity else source.rows_of(bad)
    return RejectedRows(rows.astype(np.int64), named.take(pa.array(starts)), reasons, source.records(bad))


def _keys(column: str, source: _Source, keep: np.ndarray) -> tuple[list[tuple[int, str, int]], list[Rejection]]:
    """Keys of the rows still kept, in order, and the rows refused for a missing or repeated
    key (``keep`` is updated)."""
    seen: dict[str, int] = {}
    keys: list[tuple[int, str, int]] = []
    refused: list[tuple[int, str]] = []
    values = source.values(column)
    for position in np.flatnonzero(keep).tolist():
        key = key_text(values[position])
        if key is None:
            refused.append((position, f"{column}: {_no_key(values[position])}"))
        elif unstorable := _unstorable_key(key):
            refused.append((position, f"{column}: {unstorable}"))
        elif key in seen:
            refused.append((position, f"duplicate key {key!r} of row {seen[key]}"))
        else:
            seen[key] = source.index(position)
            keys.append((seen[key], key, len(keys)))
    rejected: list[Rejection] = []
    if refused:
        positions = [p for p, _ in refused]
        keep[positions] = False
        for (position, reason), record in zip(refused, source.originals(positions), strict=True):
            rejected.append(rejection(source.index(position), column, reason, record))
    return keys, rejected


MAX_KEY_BYTES = 1024
"""Longest record key, in UTF-8 bytes: keys are a PostgreSQL primary key, whose B-tree entries
must fit a third of a page (about 2,700 bytes, the dataset's name included)."""


def _unstorable_key(key: str) -> str | None:
    """Why ``key`` cannot be stored as a record key (None: it can). A JSON or CSV body cannot carry
    a NUL, an Arrow or Parquet string can, and PostgreSQL text holds none."""
    if "\x00" in key:
        return "the record key holds a NUL character"
    if len(key) <= MAX_KEY_BYTES // 4:  # four bytes a character at most: short enough, not encoded
        return None
    size = len(key.encode("utf-8", "surrogatepass"))
    return f"the record key is {size} bytes long; the limit is {MAX_KEY_BYTES}" if size > MAX_KEY_BYTES else None


def _judge(spec: FeatureSpec, source: _Source) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """The column as its Arrow type, the bad positions and each one's problem; see the module docstring.

    Bad values repeat (an unknown category, a sentinel out of range): each distinct suspect value
    is judged once by the scalar rule, and the verdicts are spread back over the positions as arrays."""
    values, suspect = source.fast(spec)
    suspect |= _suspects(spec, values)
    if not suspect.any():
        return _final(spec, values), np.zeros(0, np.int64), pa.array([], pa.string())
    positions = np.flatnonzero(suspect)
    distinct, which = source.distinct(spec.name, positions)
    verdicts = [_scalar(spec, value, source.from_text) for value in distinct]
    good = np.fromiter((ok for ok, _ in verdicts), bool, len(verdicts))[which]
    values = _final(spec, pc.if_else(pa.array(suspect), pa.scalar(None, values.type), values))
    if good.any():
        mask = np.zeros(len(values), dtype=bool)
        mask[positions[good]] = True
        coerced = pa.array([v if ok else None for ok, v in verdicts], type=values.type)
        values = pc.replace_with_mask(values, pa.array(mask), coerced.take(pa.array(which[good])))
    messages = pa.array([None if ok else v for ok, v in verdicts], pa.string()).take(pa.array(which[~good]))
    return values, positions[~good], messages


def _scalar(spec: FeatureSpec, value: Any, from_text: bool) -> tuple[bool, Any]:
    """(True, the coerced value) or (False, why not), as row-by-row validation decides."""
    if value is MISSING:
        return (True, None) if spec.nullable else (False, "missing column")
    try:
        return True, coerce(spec, value, from_text=from_text)
    except InvalidValue as exc:
        return False, str(exc)


def _final(spec: FeatureSpec, values: pa.Array) -> pa.Array:
    """``values`` in the column's Arrow type (integers checked before arrive as float64 from text)."""
    target = _ARROW[spec.dtype]
    return values if values.type == target else pc.cast(values, target)


def _suspects(spec: FeatureSpec, values: pa.Array) -> np.ndarray:
    """Positions a vectorised check cannot clear: the scalar rule decides those."""
    n = len(values)
    if spec.dtype in (DType.NUMERIC, DType.INTEGER):
        suspect = _numeric_suspects(spec, values)
    elif spec.dtype is DType.CATEGORICAL and spec.closed and spec.categories is not None:
        known = pc.is_in(values, value_set=pa.array(spec.categories, pa.string()))
        suspect = np.asarray(pc.fill_null(pc.invert(known), False).to_numpy(zero_copy_only=False), dtype=bool)
    else:
        suspect = np.zeros(n, dtype=bool)
    if values.null_count:  # a null is judged by nullability alone
        valid = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        suspect = suspect & valid if spec.nullable else suspect | ~valid
    return suspect


def _numeric_suspects(spec: FeatureSpec, values: pa.Array) -> np.ndarray:
    """Non-finite, non-integral (for an integer column), inexact or out-of-range numbers, in numpy
    (a null counts as suspect here; :func:`_suspects` then applies nullability)."""
    if pa.types.is_integer(values.type):  # beyond 2**53 float64 would round: left to the scalar rule
        numbers = (pc.fill_null(values, 0) if values.null_count else values).to_numpy(zero_copy_only=False)
        suspect = (numbers > 2**53) | (numbers < -(2**53))
    else:
        numbers = values.to_numpy(zero_copy_only=False)  # float64; a null is NaN
        suspect = ~np.isfinite(numbers)
        if spec.dtype is DType.INTEGER:
            with np.errstate(invalid="ignore"):
                suspect |= (np.abs(numbers) > _EXACT) | (numbers != np.floor(numbers))
    with np.errstate(invalid="ignore"):  # NaN compares False: already suspect
        if spec.min is not None:
            suspect |= numbers < spec.min
        if spec.max is not None:
            suspect |= numbers > spec.max
    return np.asarray(suspect, dtype=bool)


class _Source(abc.ABC):
    """Where a batch's values come from; positions count readable records only."""

    n: int
    from_text: bool

    @abc.abstractmethod
    def fast(self, spec: FeatureSpec) -> tuple[pa.Array, np.ndarray]:
        """The column converted where that is cheap and safe, and the positions left to the scalar rule."""

    @abc.abstractmethod
    def column_values(self, name: str, positions: list[int]) -> list[Any]:
        """The values as sent at ``positions`` (``MISSING`` where the record lacks the column)."""

    def values(self, name: str) -> list[Any]:
        return self.column_values(name, list(range(self.n)))

    @abc.abstractmethod
    def distinct(self, name: str, positions: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """The distinct values as sent at ``positions``, and which of them each position holds."""

    @abc.abstractmethod
    def records(self, positions: np.ndarray) -> pa.Table | pa.Array:
        """The records as sent at ``positions``, as the quarantine keeps them (see :class:`RejectedRows`)."""

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        """Row indices of ``positions``."""
        return positions

    @abc.abstractmethod
    def originals(self, positions: Sequence[int]) -> list[Any]:
        """The records as sent at ``positions`` (what a rejection keeps for the quarantine)."""

    identity = True
    """Positions are row indices (no unreadable record was left out)."""

    def index(self, position: int) -> int:
        return position

    def position(self, row: int) -> int:
        return row


class _Records(_Source):
    """JSON objects (None: unreadable, not counted as a position)."""

    def __init__(self, records: list[dict[str, Any] | None], from_text: bool) -> None:
        self.rows: list[dict[str, Any]] = [r for r in records if r is not None]
        self.rows_index = [i for i, r in enumerate(records) if r is not None] if len(self.rows) < len(records) else None
        self.identity = self.rows_index is None
        self.positions: dict[int, int] | None = None
        self.n = len(self.rows)
        self.from_text = from_text

    def fast(self, spec: FeatureSpec) -> tuple[pa.Array, np.ndarray]:
        kind = _ARROW[spec.dtype]
        if self.from_text:  # text in records (the csv module's path): every value through the scalar rule
            return pa.nulls(self.n, kind), np.ones(self.n, dtype=bool)
        column: Sequence[Any]
        try:  # every record has the column: gathered in C
            column = list(map(operator.itemgetter(spec.name), self.rows))
        except KeyError:
            column = [r.get(spec.name, MISSING) for r in self.rows]
        allowed = _JSON_KINDS[spec.dtype]
        suspect = np.zeros(self.n, dtype=bool)
        if not set(map(type, column)) <= allowed:  # a string where a number belongs, a missing column, …
            # Judged by C calls per value (no Python frame); only the suspects are set aside, one by one.
            suspect = ~np.fromiter(map(allowed.__contains__, map(type, column)), dtype=bool, count=self.n)
            column = list(column)
            for position in np.flatnonzero(suspect).tolist():
                column[position] = None
        try:
            return pa.array(column, type=kind, from_pandas=False), suspect
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # e.g. an integer beyond 64 bits
            return pa.nulls(self.n, kind), np.ones(self.n, dtype=bool)

    def column_values(self, name: str, positions: list[int]) -> list[Any]:
        return [self.rows[p].get(name, MISSING) for p in positions]

    def distinct(self, name: str, positions: np.ndarray) -> tuple[list[Any], np.ndarray]:
        # Python values of any type: told apart by type and value (True is not 1); an unhashable one
        # (a list, an object) counts as distinct each time.
        index: dict[tuple[type, Any], int] = {}
        distinct: list[Any] = []
        which = np.empty(len(positions), np.int64)
        for i, value in enumerate(self.column_values(name, positions.tolist())):
            try:
                which[i] = index.setdefault((type(value), value), len(distinct))
            except TypeError:
                which[i] = len(distinct)
            if which[i] == len(distinct):
                distinct.append(value)
        return distinct, which

    def records(self, positions: np.ndarray) -> pa.Array:
        return pa.array([record_json(self.rows[p]) for p in positions.tolist()], pa.string())

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        return positions if self.rows_index is None else np.asarray(self.rows_index, np.int64)[positions]

    def originals(self, positions: Sequence[int]) -> list[Any]:
        return [self.rows[p] for p in positions]

    def index(self, position: int) -> int:
        return position if self.rows_index is None else self.rows_index[position]

    def position(self, row: int) -> int:
        if self.rows_index is None:
            return row
        if self.positions is None:
            self.positions = {r: p for p, r in enumerate(self.rows_index)}
        return self.positions[row]


class _Table(_Source):
    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.n = table.num_rows

    def column(self, name: str) -> pa.Array | None:
        if name not in self.table.column_names:
            return None
        return self.table.column(name).combine_chunks()

    def column_values(self, name: str, positions: list[int]) -> list[Any]:
        column = self.column(name)
        if column is None:
            return [MISSING] * len(positions)
        values: list[Any] = column.take(pa.array(positions, pa.int64())).to_pylist()
        return values

    def originals(self, positions: Sequence[int]) -> list[Any]:
        records: list[Any] = self.table.take(pa.array(list(positions), pa.int64())).to_pylist()
        return records

    def distinct(self, name: str, positions: np.ndarray) -> tuple[list[Any], np.ndarray]:
        column = self.column(name)
        if column is None:
            return [MISSING], np.zeros(len(positions), np.int64)
        # One type per column: Arrow's hashing tells values apart as the scalar rule would (-0.0 from 0.0;
        # every NaN alike, which the rule words alike); a null is a value of its own.
        encoded = pc.dictionary_encode(column.take(pa.array(positions)), null_encoding="encode")
        which = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.int64)
        return encoded.dictionary.to_pylist(), which

    def records(self, positions: np.ndarray) -> pa.Table:
        return self.table.take(pa.array(positions))

    def absent(self, spec: FeatureSpec) -> tuple[pa.Array, np.ndarray]:
        """A column the body does not have: nulls, or every row suspect (and rejected: missing column)."""
        return pa.nulls(self.n, _ARROW[spec.dtype]), np.full(self.n, not spec.nullable)


class _TextTable(_Table):
    """CSV columns, every cell text; an empty cell is a missing value."""

    from_text = True

    def fast(self, spec: FeatureSpec) -> tuple[pa.Array, np.ndarray]:
        column = self.column(spec.name)
        if column is None:
            return self.absent(spec)
        empty = pc.equal(column, "")
        if spec.dtype is DType.CATEGORICAL:
            return pc.if_else(empty, pa.scalar(None, pa.string()), column), np.zeros(self.n, dtype=bool)
        if spec.dtype is not DType.BOOLEAN:
            # The common case in one cast: where Arrow reads every cell, it reads each as float() does
            # (it refuses what float() might read otherwise: blanks around, underscores, other digits).
            # An empty cell becomes a null, which nullability judges.
            cells = pc.if_else(empty, pa.scalar(None, pa.string()), column) if pc.any(empty).as_py() else column
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return pc.cast(cells, pa.float64()), np.zeros(self.n, dtype=bool)
        trimmed = pc.utf8_trim(column, " \t\r\n\v\f")  # a subset of what str.strip() removes
        if spec.dtype is DType.BOOLEAN:
            lowered = pc.utf8_lower(trimmed)
            true, false = pc.is_in(lowered, value_set=pa.array(_TRUE)), pc.is_in(lowered, value_set=pa.array(_FALSE))
            readable = pc.or_(true, false)
            values = pc.if_else(readable, true, pa.scalar(None, pa.bool_()))
        else:
            readable = pc.match_substring_regex(trimmed, _NUMBER_TEXT)
            try:
                values = pc.cast(pc.if_else(readable, trimmed, pa.scalar(None, pa.string())), pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return pa.nulls(self.n, pa.float64()), np.ones(self.n, dtype=bool)
        unread = pc.invert(readable)
        if spec.nullable:  # an empty cell is a null the column allows: nothing to look at
            unread = pc.and_(unread, pc.invert(empty))
        return values, np.asarray(unread.to_numpy(zero_copy_only=False), dtype=bool)


class _TypedTable(_Table):
    """Arrow or Parquet columns, typed by the sender; a column that cannot be read as its
    declared type makes the whole body a mismatch (4xx), as a missing non-nullable column does."""

    from_text = False

    def __init__(self, table: pa.Table, schema: DatasetSchema) -> None:
        super().__init__(table)
        self.normalised: dict[str, pa.Array] = {}
        for spec in schema.stored_columns:
            column = super().column(spec.name)
            if column is None:
                if not spec.nullable:
                    raise SchemaMismatch(
                        f"the body has no column {spec.name!r}, which the schema declares (not nullable)",
                        field=spec.name,
                    )
                continue
            self.normalised[spec.name] = _normalise(spec, column)

    def column(self, name: str) -> pa.Array | None:
        return self.normalised[name] if name in self.normalised else super().column(name)

    def fast(self, spec: FeatureSpec) -> tuple[pa.Array, np.ndarray]:
        column = self.column(spec.name)
        if column is None:
            return self.absent(spec)
        return column, np.zeros(self.n, dtype=bool)


def _normalise(spec: FeatureSpec, column: pa.Array) -> pa.Array:
    """A typed column as the declared type's Arrow family, or :class:`SchemaMismatch`."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_null(kind):
        return pa.nulls(len(column), _ARROW[spec.dtype])
    number = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    try:
        if spec.dtype is DType.INTEGER and pa.types.is_integer(kind):
            try:
                return pc.cast(column, pa.int64())
            except pa.ArrowInvalid:  # an unsigned value past int64: judged as a number, out of range
                return pc.cast(column, pa.float64(), safe=False)
        if spec.dtype in (DType.NUMERIC, DType.INTEGER) and number:
            return pc.cast(column, pa.float64(), safe=False)
        if spec.dtype is DType.CATEGORICAL and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return pc.cast(column, pa.string())
        if spec.dtype is DType.BOOLEAN and pa.types.is_boolean(kind):
            return column
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaMismatch(f"column {spec.name!r} ({kind}) cannot be read as {spec.dtype}: {exc}",
                             field=spec.name) from exc  # fmt: skip
    raise SchemaMismatch(f"column {spec.name!r} is {kind}, which cannot be read as {spec.dtype.value}", field=spec.name)
