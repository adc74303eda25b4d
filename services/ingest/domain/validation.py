"""Validation rules for incoming records, as pure functions over plain data.

The per-value rules are shared with serving (``libs.common.validation``);
ingest adds what only a batch has: unreadable records and, when the schema
declares a record ``key``, records whose key is missing or repeats an
earlier row's, each kept with its reason. Identical rows are never refused
for being identical: repeated observations and low-cardinality features make
them normal data, and dropping them would distort the class balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from libs.common.schema import DatasetSchema
from libs.common.validation import validate_row


@dataclass(frozen=True)
class Rejection:
    row: int
    field: str | None
    reason: str
    record: Any = None


@dataclass
class ValidationResult:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    keys: list[tuple[int, str, Any]] = field(default_factory=list)
    """(row, key, record) of each accepted row when the schema has a key: checked against stored keys."""


def record_key(schema: DatasetSchema, record: dict[str, Any]) -> str | None:
    """The record's key as text (None: the schema has no key, or the record lacks it)."""
    if schema.key is None:
        return None
    value = record.get(schema.key)
    if value is None or value == "" or isinstance(value, (dict, list, bool)):
        return None
    return str(value)


def validate_records(
    schema: DatasetSchema,
    records: list[dict[str, Any] | None],
    *,
    from_text: bool = False,
    unreadable: dict[int, str] | None = None,
) -> ValidationResult:
    """Split ``records`` into accepted rows (coerced) and rejections with reasons."""
    result = ValidationResult()
    unreadable = unreadable or {}
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record is None:
            result.rejected.append(Rejection(index, None, unreadable.get(index, "unreadable record")))
            continue
        row, problems = validate_row(schema, record, from_text=from_text)
        if problems:
            reason = "; ".join(f"{col}: {msg}" for col, msg in problems)
            result.rejected.append(Rejection(index, problems[0][0], reason, record))
            continue
        if schema.key is not None:
            key = record_key(schema, record)
            if key is None:
                result.rejected.append(Rejection(index, schema.key, f"{schema.key}: missing record key", record))
                continue
            if key in seen:
                result.rejected.append(
                    Rejection(index, schema.key, f"duplicate key {key!r} of row {seen[key]}", record)
                )
                continue
            seen[key] = index
            result.keys.append((index, key, record))
        result.accepted.append(row)
    return result
