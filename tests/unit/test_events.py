"""Events: envelope, serialisation round trip, registry, parsing errors, upcasting."""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar, Literal

import pytest
from pydantic import ValidationError

from libs.common import events, topics
from libs.common.errors import InvalidEvent
from libs.common.events import (
    EVENT_CLASSES,
    ArtifactRef,
    DataArrived,
    Event,
    TrainingRequested,
    parse_event,
    register_upcaster,
)
from libs.common.schema import DatasetSchema, DType, FeatureSpec, Task

SCHEMA = DatasetSchema(
    features=[FeatureSpec(name="age", dtype=DType.NUMERIC, min=0, max=120)],
    target=FeatureSpec(name="churned", dtype=DType.CATEGORICAL, categories=["no", "yes"]),
    task=Task.CLASSIFICATION,
)
REF = ArtifactRef(uri="file:///a/sha256/00/" + "0" * 64, sha256="0" * 64, size=3)


def test_every_topic_with_a_producer_has_an_event_class() -> None:
    assert {cls.topic for cls in EVENT_CLASSES.values()} == {t.name for t in topics.TOPICS}
    for event_type, cls in EVENT_CLASSES.items():
        assert cls.topic == event_type  # one event type per topic, named alike


def test_envelope_is_filled_and_round_trips() -> None:
    event = DataArrived(
        producer="ingest", correlation_id="c-1", dataset="customers", version=3, batch=REF, manifest=REF,
        rows_accepted=10, rows_rejected=2, total_rows=30, dataset_schema=SCHEMA,
    )  # fmt: skip
    assert isinstance(event.event_id, uuid.UUID)
    assert event.event_type == "data.arrived"
    assert event.schema_version == 1
    assert event.occurred_at.tzinfo is not None
    assert parse_event(event.to_bytes()) == event
    assert event.key() == b"customers"


def test_events_are_frozen() -> None:
    event = TrainingRequested(producer="cli", model="m", dataset="d")
    with pytest.raises(ValidationError):
        event.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{oops", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"event_type": "model.exploded"}', "unknown event_type"),
        (b'{"producer": "x"}', "unknown event_type"),
        (b'{"event_type": "training.requested", "producer": "x"}', "model: Field required"),
        (b'{"event_type": "training.requested", "producer": "x", "model": "m", "dataset": "d", '
         b'"schema_version": 7}', "newer than this consumer"),
        (b'{"event_type": "training.requested", "producer": "x", "model": "m", "dataset": "d", '
         b'"schema_version": 0}', "positive integer"),
    ],
)  # fmt: skip
def test_invalid_messages_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_event(raw)


def test_expected_classes_reject_events_from_elsewhere() -> None:
    raw = TrainingRequested(producer="x", model="m", dataset="d").to_bytes()
    with pytest.raises(InvalidEvent, match="does not belong here"):
        parse_event(raw, expected=(DataArrived,))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = json.loads(TrainingRequested(producer="x", model="m", dataset="d").to_bytes())
    payload["added_in_a_later_minor_version"] = 42
    assert isinstance(parse_event(json.dumps(payload).encode()), TrainingRequested)


def test_upcasters_bring_old_payloads_to_the_current_version(monkeypatch: pytest.MonkeyPatch) -> None:
    class RetrainAsked(Event):
        """A v2 event whose v1 called the model field 'name'."""

        topic: ClassVar[str] = "retrain.asked"
        current_version: ClassVar[int] = 2
        event_type: Literal["retrain.asked"] = "retrain.asked"
        schema_version: int = 2
        model: str

    monkeypatch.setitem(EVENT_CLASSES, "retrain.asked", RetrainAsked)
    monkeypatch.setattr(events, "_UPCASTERS", {})

    v1: dict[str, Any] = {"event_type": "retrain.asked", "schema_version": 1, "producer": "old", "name": "churn"}
    with pytest.raises(InvalidEvent, match="no upcaster"):
        parse_event(json.dumps(v1))

    @register_upcaster("retrain.asked", 1)
    def upcast_v1_v2(payload: dict[str, Any]) -> dict[str, Any]:
        payload = dict(payload)
        payload["model"] = payload.pop("name")
        return payload

    upgraded = parse_event(json.dumps(v1))
    assert isinstance(upgraded, RetrainAsked)
    assert upgraded.model == "churn"
    assert upgraded.schema_version == 2
