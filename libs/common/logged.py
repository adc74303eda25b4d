"""``predictions.logged`` read column by column: the monitor's hot path, with no object per row.

:func:`libs.common.events.parse_event` builds a :class:`~libs.common.events.PredictionsLogged` with a
pydantic record per prediction (a dict of features inside a model per row). On the monitor's hot path
that cost about 50 µs a prediction, ten times what binning it into a window costs, and capped the
service near 10,000 predictions/s. :func:`decode_logged` reads the columnar form serving sends
(:func:`libs.common.events.records_from_columns`) as it is: one orjson call, the envelope validated
once a batch, each column checked as a whole. A batch in the records form (schema version 1, or a
producer that sends records) goes through :func:`parse_event` and is turned into columns, so the
monitor reads one shape whatever the producer sent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from libs.common.events import PredictionsLogged, parse_event

EVENT_TYPE: str = PredictionsLogged.model_fields["event_type"].default
_NUMBERS = frozenset({int, float})
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


@dataclass(frozen=True, slots=True)
class LoggedPredictions:
    """One ``predictions.logged`` batch as columns: every list holds one value per prediction, in order."""

    event_id: uuid.UUID
    model: str
    version: int
    shadow: bool
    request_ids: list[str]
    at: list[datetime]
    predictions: list[Any]
    features: dict[str, list[Any]]
    """Feature name → its values (None or NaN where missing), as serving logged them."""
    absent: dict[str, frozenset[int]] = field(default_factory=dict)
    """Feature name → the rows whose record did not carry it at all (None above): only the records form
    can say so. A value logged as null is missing (the group ``(missing)``); a sensitive input never
    logged is unknown (the group ``(unknown)``), as for a column the columnar form leaves out."""

    def __len__(self) -> int:
        return len(self.request_ids)

    @classmethod
    def of(cls, event: PredictionsLogged) -> LoggedPredictions:
        """The columns of an event in its records form (each record's features may differ: a feature
        absent from a record is None there, and its row is in ``absent``)."""
        names = list(dict.fromkeys(name for r in event.records for name in r.features))
        absent = {name: frozenset(i for i, r in enumerate(event.records) if name not in r.features) for name in names}
        return cls(
            event.event_id, event.model, event.version, event.shadow,
            request_ids=[r.request_id for r in event.records], at=[r.at for r in event.records],
            predictions=[r.prediction for r in event.records],
            features={name: [r.features.get(name) for r in event.records] for name in names},
            absent={name: rows for name, rows in absent.items() if rows},
        )  # fmt: skip

    def logged(self, names: list[str]) -> list[dict[str, Any]]:
        """Each row's values of the features ``names``, one dict a row, leaving out a feature the row's record
        did not carry (and one with no column at all)."""
        names = [name for name in names if name in self.features]
        if not names:
            return [{} for _ in range(len(self))]
        columns = [self.features[n] for n in names]
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        for name in names:
            for i in self.absent.get(name, ()):
                del rows[i][name]
        return rows


class _Envelope(BaseModel):
    """The envelope, validated once a batch as :class:`~libs.common.events.Event` validates it."""

    model_config = ConfigDict(extra="ignore")

    event_id: uuid.UUID
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))  # as Event: absent is now, null is wrong
    producer: str
    correlation_id: str | None = None
    model: str
    version: int = Field(ge=1)
    shadow: bool = False


def decode_logged(body: bytes | bytearray | str) -> LoggedPredictions:
    """A ``predictions.logged`` message as columns; :class:`InvalidEvent` (with the cause) when it is not one.

    The fast path takes the current schema's columnar form when every column passes its check (lists
    of the request ids' length, request ids that are strings, ISO 8601 times, numeric probabilities).
    Anything else is read by :func:`parse_event`, so a message is refused exactly when, and with the
    reason, any other consumer would refuse it; and the odd valid message the fast path does not
    take (a time given as a number, say) is still read.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:  # NaN or Infinity literals, 1e400, a lone surrogate: the standard library decides
        return LoggedPredictions.of(_parsed(body))
    if (
        not isinstance(payload, dict) or "records" in payload or payload.get("event_type") != EVENT_TYPE
        or type(payload.get("schema_version")) is not int
        or payload["schema_version"] != PredictionsLogged.current_version
    ):  # fmt: skip
        return LoggedPredictions.of(_parsed(body))
    try:
        envelope = _Envelope.model_validate(payload)
        request_ids, at, predictions, features = _columns(payload.get("columns"))
    except (ValidationError, ValueError, TypeError):
        return LoggedPredictions.of(_parsed(body))  # refused with parse_event's reason (or read, if it can)
    return LoggedPredictions(envelope.event_id, envelope.model, envelope.version, envelope.shadow, request_ids, at,
                             predictions, features)  # fmt: skip


def _parsed(body: bytes | bytearray | str) -> PredictionsLogged:
    event = parse_event(bytes(body) if isinstance(body, bytearray) else body, (PredictionsLogged,))
    assert isinstance(event, PredictionsLogged)  # parse_event returns one of ``expected`` or raises
    return event


def _columns(columns: Any) -> tuple[list[str], list[datetime], list[Any], dict[str, list[Any]]]:
    """The checked columns of the columnar form (ValueError naming the column that is wrong)."""
    if not isinstance(columns, dict) or not isinstance(columns.get("request_ids"), list):
        raise ValueError("columns: expected an object with a list of request_ids")
    request_ids: list[Any] = columns["request_ids"]
    rows = len(request_ids)
    if rows == 0:
        raise ValueError("columns.request_ids: at least one prediction expected")
    if not all(type(r) is str for r in request_ids):
        raise ValueError("columns.request_ids: every request id must be a string")
    features, probabilities = columns.get("features"), columns.get("probabilities")
    if not isinstance(features, dict) or not (probabilities is None or isinstance(probabilities, dict)):
        raise ValueError("columns: features (and probabilities, unless null) must be objects of lists")
    lists = {"predictions": columns.get("predictions")}
    lists |= {f"features.{name}": values for name, values in features.items()}
    lists |= {f"probabilities.{name}": values for name, values in (probabilities or {}).items()}
    at = columns.get("at")
    if isinstance(at, list):
        lists["at"] = at
    for where, values in lists.items():
        if not isinstance(values, list) or len(values) != rows:
            raise ValueError(f"columns.{where}: expected a list of {rows} values, one per request id")
    for name, values in (probabilities or {}).items():
        if not set(map(type, values)) <= _NUMBERS:  # a JSON number each (no null, no list, no bool): one C pass
            raise ValueError(f"columns.probabilities.{name}: expected numbers")
    return request_ids, _times(at, rows), columns["predictions"], features


def _times(at: Any, rows: int) -> list[datetime]:
    """One time per row from ``at`` (a list, or one time for every row), each distinct string parsed once
    (the rows of one request share their time)."""
    values = at if isinstance(at, list) else [at] * rows
    parsed: dict[Any, datetime] = {}
    for value in dict.fromkeys(values):
        if not isinstance(value, str):
            raise ValueError(f"columns.at: expected ISO 8601 times, got {value!r}")
        try:  # pydantic's own datetime rule, as the records form's ``at`` (fromisoformat takes more)
            parsed[value] = _DATETIME.validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"columns.at: {exc}") from exc
    return [parsed[v] for v in values]
