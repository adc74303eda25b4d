"""The monitor reads predictions.logged as columns (libs/common/logged.py): the same predictions, and the
same refusals, as the event parsed record by record; and binning columns fills the same windows."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from cli.churn_stream import FEATURES, ChurnStream
from libs.common.errors import InvalidEvent
from libs.common.events import PredictionRecord, PredictionsLogged, parse_event
from libs.common.logged import LoggedPredictions, decode_logged
from libs.common.profile import CategoricalProfile, build_profile
from libs.common.schema import DatasetSchema
from services.monitor.domain.decision import DriftConfig
from services.monitor.domain.monitor import ModelMonitor
from services.monitor.domain.windows import CategoricalWindow, NumericWindow, Reservoir, Window, floats
from services.serving.adapters.prediction_log import encode
from services.serving.domain.predictions import log_columns
from tests.factories import CHURN
from tests.unit.test_prediction_log_encoding import MIXED, served


def parsed(payload: bytes) -> LoggedPredictions:
    """The reference: the event parsed by parse_event, record by record, as columns."""
    event = parse_event(payload, (PredictionsLogged,))
    assert isinstance(event, PredictionsLogged)
    return LoggedPredictions.of(event)


def test_serving_batches_decode_as_the_records_parse_do() -> None:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=5).batch(12)]
    first, second = (datetime(2026, 1, 2, 3, 4, s, tzinfo=UTC) for s in (5, 6))
    parts = [served(CHURN, rows[:9], 0, first), served(CHURN, rows[9:], 9, second)]
    payload = encode("churn", 3, log_columns(parts), 12).payload
    batch = decode_logged(payload)
    assert batch == parsed(payload)
    assert batch.at == [first] * 9 + [second] * 3
    assert batch.features["plan"] == [r["plan"] for r in rows]


def test_missing_and_mixed_values_decode_as_the_records_parse_do() -> None:
    rows: list[dict[str, Any]] = [
        {"x": 1.5, "n": 7, "b": True, "c": "p"}, {"x": None, "n": None, "b": None}, {"n": 2**60, "b": False},
    ]  # fmt: skip
    payload = encode("mixed", 1, log_columns([served(MIXED, rows, 0, datetime(2026, 1, 2, tzinfo=UTC))]), 3).payload
    batch = decode_logged(payload)
    assert batch == parsed(payload)
    assert batch.features["n"] == [7, None, 2**60]


def test_a_batch_in_the_records_form_is_read_too() -> None:
    event = PredictionsLogged(producer="t", model="churn", version=2, shadow=True, records=[
        PredictionRecord(request_id="a", features={"x": 1.0}, prediction="no"),
        PredictionRecord(request_id="b", features={"y": "q"}, prediction="yes")])  # fmt: skip
    batch = decode_logged(event.to_bytes())
    assert (batch.event_id, batch.model, batch.version, batch.shadow) == (event.event_id, "churn", 2, True)
    assert batch.request_ids == ["a", "b"]
    assert batch.features == {"x": [1.0, None], "y": [None, "q"]}


def _payload(**changes: Any) -> bytes:
    rows = [{k: r[k] for k in FEATURES} for r in ChurnStream(seed=5).batch(3)]
    envelope = orjson.loads(encode("churn", 1, log_columns([served(CHURN, rows, 0, datetime.now(UTC))]), 3).payload)
    columns = envelope["columns"]
    for where, value in changes.items():
        target, _, name = where.partition("__")
        if target == "envelope":
            envelope[name] = value
        elif name:
            columns[target][name] = value
        else:
            columns[target] = value
    return orjson.dumps(envelope)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"features__plan": ["a", "b"]}, "columns.features.plan: expected a list of 3 values"),
        ({"request_ids": ["a", 2, "c"]}, "request_id"),
        ({"request_ids": []}, "expected a list of 0 values"),
        ({"at": ["2026-01-02T00:00:00Z", "yesterday", "2026-01-02T00:00:00Z"]}, "at"),
        ({"probabilities__yes": [0.1, "much", 0.3]}, "probabilities"),
        ({"probabilities__yes": [0.1, None, 0.3]}, "probabilities"),
        ({"envelope__version": 0}, "version"),
        ({"envelope__producer": None}, "producer"),
        ({"envelope__event_type": "labels.arrived"}, "does not belong here"),
        ({"envelope__schema_version": 3}, "newer than this consumer"),
    ],
)
def test_what_parse_event_refuses_is_refused_with_its_reason(changes: dict[str, Any], reason: str) -> None:
    payload = _payload(**changes)
    with pytest.raises(InvalidEvent, match=reason) as parse_refusal:
        parse_event(payload, (PredictionsLogged,))
    with pytest.raises(InvalidEvent) as refusal:
        decode_logged(payload)
    assert str(refusal.value) == str(parse_refusal.value)


def test_bytes_that_are_not_json_are_refused() -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        decode_logged(b"{nope")


def test_a_numeric_column_converts_as_value_by_value_did() -> None:
    assert np.array_equal(floats([1, None, 2.5, True, "3"]), [1.0, np.nan, 2.5, 1.0, 3.0], equal_nan=True)
    assert np.array_equal(floats(np.array([1, 2])), [1.0, 2.0])
    with pytest.raises(TypeError):
        floats([[1.0, 2.0], [3.0, 4.0]])  # a list a value is no number: refused as float() refuses it
    with pytest.raises(ValueError, match="could not convert"):
        floats(["many"])


def test_categories_are_counted_as_strings_even_when_values_compare_equal() -> None:
    window = CategoricalWindow(CategoricalProfile(counts={"1": 5, "True": 5, "a": 5}, count=15, missing=0))
    window.add(["a", "a", None, "zzz", float("nan")])
    assert (window.counts, window.missing) == ({"a": 2, "__unseen__": 1}, 2)
    window.add([1, True, 1.0, "a"])  # equal keys to a Counter, three categories here
    assert window.counts == {"a": 3, "__unseen__": 2, "1": 1, "True": 1}
    window.add([["unhashable"]])
    assert window.counts["__unseen__"] == 3


def test_columns_fill_the_same_windows_as_rows() -> None:
    rng = np.random.default_rng(1)
    reference = build_profile(
        {"a": rng.normal(0, 1, 3000), "b": rng.normal(5, 2, 3000), "c": rng.choice(["x", "y", "z"], 3000),
         "d": rng.exponential(1, 3000)},
        {"a": "numeric", "b": "numeric", "c": "categorical", "d": "numeric"}, rng.choice(["no", "yes"], 3000),
        prediction_kind="categorical",
    )  # fmt: skip
    features = [{"name": n, "dtype": "numeric"} for n in ("a", "b", "d")] + [{"name": "c", "dtype": "categorical"}]
    schema = DatasetSchema.model_validate(
        {"features": features, "target": {"name": "y", "dtype": "categorical"}, "task": "classification"}
    )
    rows = [{"a": float(rng.normal()), "b": float(rng.normal(5)), "c": str(rng.choice(["x", "y"])), "d": None}
            for _ in range(1_300)]  # fmt: skip
    predictions = [str(p) for p in rng.choice(["no", "yes"], 1_300)]
    by_rows, by_columns = (ModelMonitor("m", 1, reference, schema, None, DriftConfig(), 500, 100, 200) for _ in "ab")
    judged_rows = [
        w for i in range(0, 1_300, 130) for w in by_rows.observe(rows[i : i + 130], predictions[i : i + 130])
    ]
    columns = {name: [r.get(name) for r in rows] for name in ("a", "b", "c")}  # "d" has no column: all missing
    judged_columns = [
        w for i in range(0, 1_300, 130)
        for w in by_columns.observe_columns({k: v[i : i + 130] for k, v in columns.items()}, predictions[i : i + 130])
    ]  # fmt: skip
    assert len(judged_rows) == len(judged_columns) == 2
    for left, right in [*zip(judged_rows, judged_columns, strict=True), (by_rows.window, by_columns.window)]:
        assert left.records == right.records
        for name, window in left.features.items():
            other = right.features[name]
            assert (window.counts == other.counts) if isinstance(window, CategoricalWindow) else True
            if isinstance(window, NumericWindow):
                assert isinstance(other, NumericWindow)
                assert np.array_equal(window.counts, other.counts)
                assert (window.missing, window.out_of_range) == (other.missing, other.out_of_range)
                assert np.array_equal(window.reservoir.sample(), other.reservoir.sample())


def _std(envelope: dict[str, Any], changes: dict[str, Any]) -> bytes:
    for where, value in changes.items():
        target, _, name = where.partition("__")
        if target == "envelope":
            envelope[name] = value
        elif name:
            envelope["columns"][target][name] = value
        else:
            envelope["columns"][target] = value
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    "payload",
    [
        _payload(envelope__schema_version=2.0),
        _payload(envelope__schema_version=True),
        _payload(envelope__occurred_at=None),
        _payload(probabilities__yes=[[0.5], [0.5], [0.5]]),
        _payload(probabilities__yes=[True, False, True]),
        _payload(at="2026-W01-1"),
        _payload(at="20260101T000000"),
        _payload(at="2026-01-01T00:00:00+05"),
        _payload(at=1_700_000_000),
        _std(orjson.loads(_payload()), {"features__tenure_months": [float("nan"), 1.0, 2.0]}),
        _std(orjson.loads(_payload()), {"probabilities__yes": [float("inf"), 0.5, 0.5]}),
        _std(orjson.loads(_payload()), {"request_ids": ["\ud800", "b", "c"]}),
    ],
)
def test_a_message_is_read_or_refused_exactly_as_parse_event_reads_or_refuses_it(payload: bytes) -> None:
    """The fast path takes only what it is sure of; anything else is parse_event's to judge."""
    try:
        expected: LoggedPredictions | str = parsed(payload)
    except InvalidEvent as exc:
        expected = str(exc)
    try:
        got: LoggedPredictions | str = decode_logged(payload)
    except InvalidEvent as exc:
        got = str(exc)
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
    else:
        assert (got.request_ids, got.at, got.predictions, got.shadow) == (
            expected.request_ids, expected.at, expected.predictions, expected.shadow
        )  # fmt: skip
        assert got.features.keys() == expected.features.keys()


def _old_numeric(values: list[Any]) -> np.ndarray:
    """The per-value conversion the monitor used before its columnar path (4570e62^)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _old_categorical(window: CategoricalWindow, values: list[Any]) -> None:
    """The per-value counting the monitor used before its columnar path (4570e62^)."""
    present = [str(v) for v in values if not (v is None or (isinstance(v, float) and np.isnan(v)))]
    window.missing += len(values) - len(present)
    for key, count in Counter(present).items():
        bucket = key if key in window.reference.counts else "__unseen__"
        window.counts[bucket] = window.counts.get(bucket, 0) + count


def test_a_window_bins_a_batch_as_the_per_value_rules_it_replaced_did() -> None:
    """Not the new code against itself: the batch path against the old rules, written out above."""
    rng = np.random.default_rng(7)
    reference = build_profile(
        {"x": rng.normal(0, 1, 2000), "c": rng.choice(["1", "True", "a", "b"], 2000)},
        {"x": "numeric", "c": "categorical"}, rng.choice(["no", "yes"], 2000), prediction_kind="categorical",
    )  # fmt: skip
    numbers: list[Any] = [0.5, None, float("nan"), 3, True, -7.25, 1e300, -1e300, 2**70, "2.5", 0, False]
    categories: list[Any] = ["a", 1, True, 1.0, None, float("nan"), "zzz", "b", "True", "1", 0, ""]
    pick = np.random.default_rng(3).integers(0, len(numbers), 600).tolist()
    x, c = [numbers[i] for i in pick], [categories[i] for i in pick]
    predictions = [str(p) for p in rng.choice(["no", "yes"], 600)]
    window = Window(reference, sample_size=50, seed=1)
    for start in range(0, 600, 70):  # batches of uneven size, as messages arrive
        window.add_columns({"x": x[start : start + 70], "c": c[start : start + 70]}, predictions[start : start + 70])
    numeric = NumericWindow(reference.features["x"], Reservoir(50, np.random.default_rng(1)))  # type: ignore[arg-type]
    categorical = CategoricalWindow(reference.features["c"])  # type: ignore[arg-type]
    for start in range(0, 600, 70):
        numeric.add(_old_numeric(x[start : start + 70]))
        _old_categorical(categorical, c[start : start + 70])
    got = window.features["x"]
    assert isinstance(got, NumericWindow)
    assert np.array_equal(got.counts, numeric.counts)
    assert (got.missing, got.out_of_range) == (numeric.missing, numeric.out_of_range)
    assert np.array_equal(got.reservoir.sample(), numeric.reservoir.sample())
    assert window.features["c"] == categorical
