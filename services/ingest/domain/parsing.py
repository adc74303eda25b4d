"""Turning a request body into rows: JSON array, NDJSON or CSV.

A body that cannot be read at all is a bad request; a single line that is not
a JSON object is a rejected row (kept with its reason), so one bad line in an
NDJSON upload does not cost the others.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

from libs.common import jsonbody
from libs.common.errors import BadRequest, DriftloopError


class UnsupportedMediaType(DriftloopError):
    status_code = 415
    code = "unsupported_media_type"


@dataclass(frozen=True)
class ParsedBody:
    rows: list[dict[str, Any] | None]
    """One entry per record; None where the record itself was unreadable."""
    unreadable: dict[int, str]
    """Row index → why it could not be read."""
    from_text: bool
    """Values arrived as text (CSV) and may be parsed into numbers."""


JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-lines")
CSV_TYPES = ("text/csv", "application/csv")


def parse_body(body: bytes, content_type: str) -> ParsedBody:
    """Rows of ``body`` according to its media type."""
    if not body.strip():
        raise BadRequest("request body is empty: send a JSON array, NDJSON or CSV")
    media = content_type.split(";")[0].strip().lower() or "application/json"
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8: {exc}") from exc
    if "\x00" in text:  # PostgreSQL stores no NUL, not even in a quarantined row
        raise BadRequest("request body holds a NUL character")
    if media in JSON_TYPES:
        return _json(text)
    if media in NDJSON_TYPES:
        return _ndjson(text)
    if media in CSV_TYPES:
        return _csv(text)
    raise UnsupportedMediaType(
        f"unsupported content type {media!r}: use application/json, application/x-ndjson or text/csv"
    )


def _json(text: str) -> ParsedBody:
    doc = jsonbody.loads(text, allow_nan=True)  # NaN is judged per value: the row is rejected, not the body
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        doc = doc["records"]
    if not isinstance(doc, list):
        raise BadRequest('body must be a JSON array of records (or {"records": [...]})')
    if not doc:
        raise BadRequest("body holds no records")
    rows: list[dict[str, Any] | None] = []
    unreadable: dict[int, str] = {}
    for i, item in enumerate(doc):
        if isinstance(item, dict):
            rows.append(item)
        else:
            rows.append(None)
            unreadable[i] = f"record is a {type(item).__name__}, not a JSON object"
    return ParsedBody(rows, unreadable, from_text=False)


def _ndjson(text: str) -> ParsedBody:
    rows: list[dict[str, Any] | None] = []
    unreadable: dict[int, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        index = len(rows)
        try:
            item = jsonbody.loads(line, allow_nan=True)
        except jsonbody.InvalidJSON as exc:  # kept as an unreadable row: its reason, not its bytes
            rows.append(None)
            unreadable[index] = f"line is not valid JSON: {exc.message}"
            continue
        if isinstance(item, dict):
            rows.append(item)
        else:
            rows.append(None)
            unreadable[index] = f"line is a {type(item).__name__}, not a JSON object"
    if not rows:
        raise BadRequest("body holds no records")
    return ParsedBody(rows, unreadable, from_text=False)


def _csv(text: str) -> ParsedBody:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise BadRequest("CSV body needs a header line naming the columns")
    repeated = sorted({n for n, c in Counter(reader.fieldnames).items() if c > 1})
    if repeated:  # DictReader would keep the last cell of each silently
        raise BadRequest(f"CSV header repeats column(s) {repeated}", columns=repeated)
    rows: list[dict[str, Any] | None] = []
    unreadable: dict[int, str] = {}
    for i, record in enumerate(reader):
        if None in record:  # more cells than header columns
            rows.append(None)
            unreadable[i] = f"CSV line {reader.line_num} has more cells than the header"
        else:
            rows.append(dict(record))
    if not rows:
        raise BadRequest("CSV body has a header but no records")
    return ParsedBody(rows, unreadable, from_text=True)
