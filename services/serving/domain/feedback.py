"""Sensitive attributes sent with feedback labels: checked against the model's schema before they travel.

A dataset may declare sensitive attributes that are not model inputs (``attributes`` + ``sensitive`` in
its schema). Their values are not in the prediction log, so a client that wants live group metrics sends
them with the label, where the ground truth usually comes from anyway. Only declared sensitive columns
are accepted, each checked as ingest checks the column: nothing else reaches the topic.
"""

from __future__ import annotations

from typing import Any

from libs.common.errors import ValidationFailed
from libs.common.schema import DatasetSchema
from libs.common.validation import InvalidValue, coerce


def check_attributes(schema: DatasetSchema, index: int, attributes: dict[str, Any] | None) -> None:
    """Raise a 422 naming ``labels.{index}.attributes.{name}`` for a name the schema does not declare
    sensitive, or a value its column would refuse."""
    for name, value in (attributes or {}).items():
        where = f"labels.{index}.attributes.{name}"
        spec = schema.column(name)
        if spec is None or name not in schema.sensitive:
            declared = ", ".join(schema.sensitive) or "none"
            raise ValidationFailed(f"{where}: not a sensitive column of the model's schema (declared: {declared})",
                                   row=index, field=where)  # fmt: skip
        try:
            coerce(spec, value, from_text=False)
        except InvalidValue as exc:
            raise ValidationFailed(f"{where}: {exc}", row=index, field=where) from exc
