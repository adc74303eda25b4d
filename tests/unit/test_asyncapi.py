"""Every service documents, in AsyncAPI, the events it consumes and publishes, with their schemas."""

from __future__ import annotations

import pytest

from cli.main import service_specs
from libs.common import topics
from libs.common.asyncapi import document
from libs.common.service import build

CONSUMES = {
    "ingest": {topics.RECORDS_SUBMITTED},  # read by the micro-batch consumer: ServiceSpec.receives
    "trainer": {
        topics.DATA_ARRIVED,
        topics.DRIFT_DETECTED,
        topics.TRAINING_REQUESTED,
        topics.MODEL_PROMOTED,
        topics.REJUDGEMENT_REQUESTED,
    },
    "registry": {
        topics.MODEL_TRAINED,
        topics.DRIFT_DETECTED,
        topics.MODEL_REJUDGED,
        topics.MODEL_EXPORTED,
        topics.MODEL_COMPARED,
    },
    "serving": {topics.MODEL_PROMOTED},
    "monitor": {topics.MODEL_PROMOTED, topics.PREDICTIONS_LOGGED, topics.LABELS_ARRIVED},
}
PUBLISHES = {
    "ingest": {topics.DATA_ARRIVED}, "trainer": {topics.MODEL_TRAINED, topics.MODEL_REJUDGED, topics.MODEL_EXPORTED,
                                                 topics.BATCH_COMPLETED},
    "registry": {topics.MODEL_PROMOTED, topics.REJUDGEMENT_REQUESTED},
    "serving": {topics.PREDICTIONS_LOGGED, topics.LABELS_ARRIVED},
    "monitor": {topics.DRIFT_DETECTED, topics.MODEL_COMPARED},
}  # fmt: skip


@pytest.mark.parametrize("service", sorted(CONSUMES))
def test_documents_name_topics_and_schemas(service: str) -> None:
    spec, settings = service_specs()[service]
    _, runtime = build(spec, settings)
    doc = document(service, runtime.broker, spec.publishes, spec.description, spec.receives)
    assert doc["asyncapi"] == "3.0.0"
    by_action: dict[str, set[str]] = {"receive": set(), "send": set()}
    for operation in doc["operations"].values():
        channel = doc["channels"][operation["channel"]["$ref"].rsplit("/", 1)[-1]]
        by_action[operation["action"]].add(channel["address"])
    assert by_action["receive"] == CONSUMES[service]
    assert by_action["send"] == PUBLISHES[service]
    schemas = doc["components"]["schemas"]
    for message in doc["components"]["messages"].values():
        name = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert "event_id" in schemas[name]["properties"]
