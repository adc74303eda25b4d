"""Validation rules for incoming records, as pure functions over plain data.

The per-value rules are shared with serving (``libs.common.validation``);
ingest adds what only a batch has: unreadable records and exact duplicates
of an earlier row in the same request, each kept with its reason.
"""

from __future__ import annotations

import json
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
        fingerprint = json.dumps(row, sort_keys=True, default=str)
        if fingerprint in seen:
            result.rejected.append(Rejection(index, None, f"duplicate of row {seen[fingerprint]}", record))
            continue
        seen[fingerprint] = index
        result.accepted.append(row)
    return result
