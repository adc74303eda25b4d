"""The loop benchmark's stream generators and its prequential scoring (pure, no services)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from bench import prequential as pq
from bench.loop import Driver, Options, summarise
from bench.streams import GENERATORS, Stream, layouts, make
from libs.common.schema import DatasetSchema
from libs.common.validation import validate_row


@pytest.fixture(scope="module")
def streams() -> dict[str, Stream]:
    return {name: make(name, seed=3, quick=True) for name in GENERATORS}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_a_stream_is_the_table_its_schema_declares(streams: dict[str, Stream], name: str) -> None:
    stream = streams[name]
    schema = DatasetSchema.model_validate(stream.schema)
    assert len(stream.features) == len(stream.target) == stream.layout.length == layouts(quick=True)[name].length
    assert list(stream.features.columns) == [f.name for f in schema.features]
    for record in stream.records(0, 50) + stream.records(stream.layout.length - 50, stream.layout.length):
        _, problems = validate_row(schema, record, from_text=False)  # what ingest will say about it
        assert problems == [], (record, problems)
    if schema.task.value == "classification":
        assert set(stream.target) <= set(schema.target.categories or [])
        assert len(set(stream.target)) >= 2


@pytest.mark.parametrize("name", list(GENERATORS))
def test_a_seed_makes_the_same_stream_and_another_seed_another(name: str) -> None:
    a, b, c = make(name, seed=5, quick=True), make(name, seed=5, quick=True), make(name, seed=6, quick=True)
    assert a.features.equals(b.features)
    assert np.array_equal(a.target, b.target)
    assert not (a.features.equals(c.features) and np.array_equal(a.target, c.target))


@pytest.mark.parametrize("name", [n for n in GENERATORS if n != "stationary"])
def test_the_change_point_changes_the_concept(streams: dict[str, Stream], name: str) -> None:
    """A model fit just before the first change scores far worse on the tail than one fit after the last."""
    stream = streams[name]
    first, settled = stream.layout.changes[0], stream.layout.settled
    assert settled is not None
    old = fit_score(stream, first - 5_000)
    if name == "recurring":  # A, B, A: the tail is concept A again, so fit on B to be wrong about it
        old = fit_score(stream, first)
    new = fit_score(stream, settled)
    if stream.task == "regression":
        assert old > 2.5 * new, (old, new)
    else:
        assert new > 0.65, new
        # SEA's change is moderate by design (about 10 points under its 10 % label noise)
        assert old < new - (0.06 if name == "sea" else 0.3), (old, new)


def test_the_stationary_stream_keeps_its_concept(streams: dict[str, Stream]) -> None:
    stream = streams["stationary"]
    assert stream.layout.changes == ()
    assert abs(fit_score(stream, 0) - fit_score(stream, 10_000)) < 0.03


def test_the_oracle_is_hist_gradient_boosting_on_post_change_rows(streams: dict[str, Stream]) -> None:
    stream = streams["abrupt"]
    settled = stream.layout.settled
    assert settled is not None
    assert pq.oracle(stream.features, stream.target, settled, regression=False, seed=0) > 0.97
    assert pq.oracle(stream.features, stream.target, settled - 5_000, regression=False, seed=0) < 0.6


def test_categorical_rows_repeat_as_in_real_low_cardinality_data(streams: dict[str, Stream]) -> None:
    features = streams["categorical"].features
    assert len(features.drop_duplicates()) == 27
    assert features.duplicated().mean() > 0.99


def test_gradual_drift_mixes_the_two_concepts_during_its_transition(streams: dict[str, Stream]) -> None:
    from sklearn.linear_model import LogisticRegression

    stream = streams["gradual"]
    start, settled = stream.layout.changes[0], stream.layout.settled
    assert settled is not None
    assert settled - start == stream.layout.transition > 0
    x, y = stream.features.to_numpy(), stream.target.astype(str)
    old = LogisticRegression().fit(x[start - 5_000 : start], y[start - 5_000 : start])  # the concept is a hyperplane

    def accuracy(a: int, b: int) -> float:
        return float(np.mean(old.predict(x[a:b]) == y[a:b]))

    middle = (start + settled) // 2
    before, during, after = (
        accuracy(start - 6_000, start - 5_000),
        accuracy(middle - 500, middle + 500),
        accuracy(settled, settled + 2_000),
    )
    assert before > 0.9, before
    assert after < 0.6, after
    assert after + 0.1 < during < before - 0.1, (before, during, after)


def test_generating_every_full_stream_takes_seconds() -> None:
    started = time.monotonic()
    total = sum(make(name).layout.length for name in GENERATORS)
    assert total >= 300_000
    assert time.monotonic() - started < 10


def fit_score(stream: Stream, train_from: int, rows: int = 5_000) -> float:
    """A depth-limited tree (fast, one thread) fit on ``rows`` rows from ``train_from``, scored on the last
    ``rows``: accuracy, or RMSE for regression."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    x = pd.get_dummies(stream.features).to_numpy(dtype=float)
    fit, test = slice(train_from, train_from + rows), slice(len(x) - rows, len(x))
    if stream.task == "regression":
        y = stream.target.astype(float)
        reg = DecisionTreeRegressor(max_depth=10, min_samples_leaf=5, random_state=0).fit(x[fit], y[fit])
        return float(np.sqrt(np.mean((reg.predict(x[test]) - y[test]) ** 2)))
    labels = stream.target.astype(str)
    clf = DecisionTreeClassifier(max_depth=10, min_samples_leaf=5, random_state=0).fit(x[fit], labels[fit])
    return float(np.mean(clf.predict(x[test]) == labels[test]))


def record_of(versions: list[int], hits: list[float], chunk: int = 100) -> pq.Record:
    """A record whose chunk k (of ``chunk`` rows) was sent at time k and served by ``versions[k]``."""
    record = pq.Record(len(versions) * chunk, regression=False)
    for k, (version, hit) in enumerate(zip(versions, hits, strict=True)):
        start = k * chunk
        record.sent(start, float(k))
        truth = np.array(["yes"] * chunk, dtype=object)
        predictions = ["yes" if i < hit * chunk else "no" for i in range(chunk)]
        record.scored(start, version, predictions, truth)
    return record


def test_recovery_counts_rows_until_a_better_version_promoted_after_the_change_serves() -> None:
    # v1 serves well, the concept changes at row 300, v2 (promoted at t=4) serves from chunk 5 and is better.
    record = record_of([1, 1, 1, 1, 1, 2, 2, 2], [1.0, 1.0, 1.0, 0.5, 0.5, 0.9, 0.9, 0.9])
    recovered = pq.recovery(record, change=300, end=800, alarms=[1.5, 3.2], promotions={1: -5.0, 2: 4.0})
    assert recovered.first_alarm_rows == 0  # the alarm at t=3.2 is the first after the change (sent at t=3)
    assert (recovered.better_rows, recovered.better_version, recovered.old_version) == (200, 2, 1)
    assert recovered.old_metric == pytest.approx(0.5)
    assert recovered.new_metric == pytest.approx(0.9)
    assert pq.phases(record, 0, [recovered], [300]) == pytest.approx({"before": 1.0, "during": 0.5, "after": 0.9})


def test_a_stream_without_change_is_all_before() -> None:
    record = record_of([1, 1, 1, 1], [1.0, 0.5, 1.0, 0.5])
    assert pq.phases(record, 100, [], []) == {"before": pytest.approx(2 / 3), "during": None, "after": None}


def test_a_worse_or_earlier_version_is_not_a_recovery() -> None:
    record = record_of([1, 1, 1, 2, 2, 3, 3], [1.0, 1.0, 0.5, 0.4, 0.4, 0.45, 0.45])
    not_better = pq.recovery(record, change=200, end=700, alarms=[], promotions={2: 3.0, 3: 5.0})
    assert not_better.better_rows is None
    assert not_better.first_alarm_rows is None
    promoted_before = pq.recovery(record, change=200, end=700, alarms=[], promotions={2: 1.0, 3: 1.5})
    assert promoted_before.better_rows is None


def test_the_tail_ratio_reads_the_same_way_for_accuracy_and_rmse() -> None:
    assert pq.tail_ratio(0.9, 1.0, regression=False) == pytest.approx(0.9)
    assert pq.tail_ratio(2.0, 1.0, regression=True) == pytest.approx(0.5)
    assert pq.tail_ratio(None, 1.0, regression=True) is None


@pytest.fixture
def perfect_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle is tested above; here it only costs seconds, so it scores 1.0 (or RMSE 0.5)."""
    monkeypatch.setattr(pq, "oracle", lambda features, target, start, regression, seed: 0.5 if regression else 1.0)


def replay(stream: Stream, served: list[tuple[int, int, bool]], audit: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark's summary of a run in which row ranges (from row, version, right?) were served as given."""
    options = Options(streams=[stream.name], quick=True)
    driver = Driver(stream, {}, httpx.AsyncClient(), options)
    bounds = [*(start for start, _, _ in served[1:]), stream.layout.length]
    for (start, version, right), stop in zip(served, bounds, strict=True):
        for chunk in range(start, stop, 250):
            end = min(chunk + 250, stop)
            truth = stream.target[chunk:end]
            predictions = list(truth) if right else ["yes" if y == "no" else "no" for y in truth]
            driver.record.sent(chunk, 1_000.0 + chunk / 1_000)  # 1,000 rows/s from t=1,005
            driver.record.scored(chunk, version, predictions, truth)
    driver.streamed_s = (stream.layout.length - options.initial) / 1_000
    versions = [{"version": a["to_version"], "primary_metric": "accuracy", "metrics": {"accuracy": 0.99},
                 "run": {"champion_version": a["from_version"], "champion_metrics": {"accuracy": 0.5}}}
                for a in audit]  # fmt: skip
    return summarise(stream, driver, {"audit": audit, "jobs": [], "versions": versions, "ingest": None}, options)


def promoted(row: int, to: int, previous: int | None) -> dict[str, Any]:
    at = datetime.fromtimestamp(1_000.0 + row / 1_000, UTC).isoformat()
    return {"id": to, "action": "promote", "alias": "champion", "from_version": previous, "to_version": to, "at": at,
            "actor": "policy", "reason": "test"}  # fmt: skip


@pytest.mark.usefixtures("perfect_oracle")
def test_the_summary_of_a_loop_that_recovers_meets_the_abrupt_targets(streams: dict[str, Stream]) -> None:
    stream = streams["abrupt"]  # change at row 8,000; v2 promoted 1,500 rows later serves from row 10,000
    audit = [promoted(0, 1, None), promoted(9_500, 2, 1)]
    result = replay(stream, [(5_000, 1, True), (8_000, 1, False), (10_000, 2, True)], audit)
    assert result["recoveries"][0]["better_rows"] == 2_000
    assert (result["before"], result["during"], result["after"]) == (1.0, 0.0, 1.0)
    assert result["tail"] == 1.0
    assert all(check["pass"] for check in result["targets"].values()), result["targets"]


@pytest.mark.usefixtures("perfect_oracle")
def test_the_summary_of_a_loop_that_never_recovers_fails_them(streams: dict[str, Stream]) -> None:
    stream = streams["abrupt"]
    result = replay(stream, [(5_000, 1, True), (8_000, 1, False)], [promoted(0, 1, None)])
    assert result["recoveries"][0]["better_rows"] is None
    assert not result["targets"]["better model ≤ 5,000 rows after the change"]["pass"]
    assert not result["targets"]["tail ≥ 98 % of the oracle"]["pass"]


@pytest.mark.usefixtures("perfect_oracle")
def test_the_summary_of_the_stationary_stream_checks_for_false_alarms(streams: dict[str, Stream]) -> None:
    result = replay(streams["stationary"], [(5_000, 1, True)], [promoted(0, 1, None)])
    assert result["before"] == 1.0
    assert result["during"] is None
    assert set(result["targets"]) == {"0 alarms", "0 drift retrains", "0 promotions of a worse model"}
    assert all(check["pass"] for check in result["targets"].values())
