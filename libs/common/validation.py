"""Validation of one record against a dataset schema, shared by ingest (which
quarantines bad rows) and serving (which refuses bad prediction requests).

Each feature (and, for labelled data, the target) must be present or
nullable, of the declared type, finite, inside the declared range, and of an
allowed category when categories are closed. Values that arrived as text
(CSV) are parsed; values that arrived as JSON must already have the right
type, so ``"42"`` is not silently a number.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from libs.common.schema import DatasetSchema, DType, FeatureSpec

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}
_LARGEST_FLOAT = int(sys.float_info.max)


class InvalidValue(Exception):
    """A value that does not fit its column; the message says why."""


SHOWN_CHARACTERS = 100
"""Longest text a reason quotes: a reason is kept per rejected row, and a 2 MB cell need not be kept twice."""


def _shown(value: Any) -> str:
    """``value``'s repr, a long text cut to its first :data:`SHOWN_CHARACTERS` characters and its length."""
    if isinstance(value, str) and len(value) > SHOWN_CHARACTERS:
        return f"{value[:SHOWN_CHARACTERS]!r}... ({len(value)} characters)"
    return repr(value)


def coerce(spec: FeatureSpec, value: Any, *, from_text: bool) -> Any:
    """The value as the column's type, or raise ``InvalidValue`` saying why not."""
    if value is None or (from_text and value == "") or (isinstance(value, float) and math.isnan(value)):
        if spec.nullable:
            return None
        what = "NaN" if isinstance(value, float) else "missing value"
        raise InvalidValue(f"{what} where the column is not nullable")
    if spec.dtype in (DType.NUMERIC, DType.INTEGER):
        number = _number(spec, value, from_text)
        if spec.min is not None and number < spec.min:
            raise InvalidValue(f"{number} is below the minimum {spec.min}")
        if spec.max is not None and number > spec.max:
            raise InvalidValue(f"{number} is above the maximum {spec.max}")
        return number
    if spec.dtype is DType.BOOLEAN:
        return _boolean(value, from_text)
    if not isinstance(value, str):
        raise InvalidValue(f"expected a category (string), got {type(value).__name__}")
    if spec.closed and spec.categories is not None and value not in spec.categories:
        raise InvalidValue(f"unknown category {_shown(value)} (allowed: {', '.join(spec.categories)})")
    return value


def _number(spec: FeatureSpec, value: Any, from_text: bool) -> float | int:
    if isinstance(value, bool):
        raise InvalidValue("expected a number, got a boolean")
    if isinstance(value, str):
        if not from_text:
            raise InvalidValue("expected a number, got a string")
        try:
            value = float(value.strip())
        except ValueError as exc:
            raise InvalidValue(f"{_shown(value)} is not a number") from exc
    if not isinstance(value, int | float):
        raise InvalidValue(f"expected a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > _LARGEST_FLOAT:
        raise InvalidValue("integer too large to be a number")
    if isinstance(value, float):
        if math.isnan(value):
            if spec.nullable:
                raise InvalidValue("NaN; send null for a missing value")
            raise InvalidValue("NaN where the column is not nullable")
        if math.isinf(value):
            raise InvalidValue("infinite value")
    if spec.dtype is DType.INTEGER:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidValue(f"{value} is not an integer")
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            raise InvalidValue(f"{value} is outside the 64-bit integer range")
        return int(value)
    try:
        return float(value)
    except OverflowError as exc:  # an integer with hundreds of digits
        raise InvalidValue("the number is too large") from exc


def _boolean(value: Any, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidValue(f"expected a boolean, got {_shown(value)}")


def validate_row(
    schema: DatasetSchema, record: dict[str, Any], *, from_text: bool, require_target: bool = True
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The coerced row and the (column, problem) pairs found in it."""
    row: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    columns = [*schema.features, schema.target] if require_target else list(schema.features)
    for spec in columns:
        if spec.name not in record:
            if spec.nullable:
                row[spec.name] = None
            else:
                problems.append((spec.name, "missing column"))
            continue
        try:
            row[spec.name] = coerce(spec, record[spec.name], from_text=from_text)
        except InvalidValue as exc:
            problems.append((spec.name, str(exc)))
    return row, problems
