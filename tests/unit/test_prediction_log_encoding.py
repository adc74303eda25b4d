"""The prediction log encodes its events with orjson: consumers must read them as any PredictionsLogged."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from cli.churn_stream import FEATURES, ChurnStream
from libs.common.events import PredictionsLogged, parse_event
from services.serving.adapters.prediction_log import encode
from services.serving.domain.features import CompiledSchema
from services.serving.domain.models import Inference
from services.serving.domain.predictions import Served
from tests.factories import CHURN


def test_an_encoded_batch_parses_as_the_event_with_every_record() -> None:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=5).batch(2)]
    columns = CompiledSchema(CHURN).from_instances(rows)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    served = Served(["a" * 32, "b" * 32], columns, Inference(np.array(["no", "yes"]), np.array([[0.8, 0.2],
                    [0.1, 0.9]])), ["no", "yes"], list(CHURN.features), at)  # fmt: skip
    encoded = encode("churn", 3, served.records())
    event = parse_event(encoded.payload)
    assert isinstance(event, PredictionsLogged)
    assert (str(event.event_id), event.model, event.version, encoded.rows) == (encoded.event_id, "churn", 3, 2)
    assert [r.request_id for r in event.records] == ["a" * 32, "b" * 32]
    assert [r.prediction for r in event.records] == ["no", "yes"]
    assert event.records[1].probabilities == {"no": 0.1, "yes": 0.9}
    assert event.records[0].at == at
    assert event.records[0].features == {name: rows[0].get(name) for name in event.records[0].features}
