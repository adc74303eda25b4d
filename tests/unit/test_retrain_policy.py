"""The trainer's retrain policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.trainer.domain.policy import (
    ModelView,
    PolicyConfig,
    Trigger,
    accept_drift,
    decide_on_data,
    decide_on_request,
)

CONFIG = PolicyConfig(min_rows_first_model=1000, min_new_rows=5000, drift_min_rows=500, cooldown=timedelta(minutes=2))
NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)


def view(**overrides: object) -> ModelView:
    values: dict[str, object] = {
        "total_rows": 0, "last_trained_rows": 0, "active_job": False, "drift_since": None,
        "rows_since_drift": 0, "last_drift_job_at": None,
    }  # fmt: skip
    values.update(overrides)
    return ModelView(**values)  # type: ignore[arg-type]


def test_first_model_waits_for_enough_rows() -> None:
    assert not decide_on_data(view(total_rows=999), CONFIG).train
    decision = decide_on_data(view(total_rows=1000), CONFIG)
    assert decision.train
    assert decision.trigger is Trigger.NEW_DATA
    assert decision.since is None


def test_routine_retrain_needs_enough_new_rows() -> None:
    assert not decide_on_data(view(total_rows=5999, last_trained_rows=1000), CONFIG).train
    assert decide_on_data(view(total_rows=6000, last_trained_rows=1000), CONFIG).train


def test_an_active_job_blocks_every_trigger() -> None:
    busy = view(total_rows=10**6, last_trained_rows=1, active_job=True, drift_since=NOW, rows_since_drift=10**5)
    assert not decide_on_data(busy, CONFIG).train
    assert not decide_on_request(busy).train


def test_drift_trains_only_on_data_after_it_once_there_is_enough() -> None:
    since = NOW - timedelta(minutes=5)
    waiting = decide_on_data(
        view(total_rows=9000, last_trained_rows=8000, drift_since=since, rows_since_drift=499), CONFIG
    )
    assert not waiting.train
    assert "499/500" in waiting.reason
    ready = decide_on_data(
        view(total_rows=9000, last_trained_rows=8000, drift_since=since, rows_since_drift=500), CONFIG
    )
    assert ready.train
    assert ready.trigger is Trigger.DRIFT
    assert ready.since == since


def test_drift_reports_are_ignored_in_cool_down_or_when_pending_or_untrained() -> None:
    trained = view(total_rows=9000, last_trained_rows=8000)
    assert accept_drift(trained, NOW, CONFIG)[0]
    assert not accept_drift(view(), NOW, CONFIG)[0]
    assert not accept_drift(view(last_trained_rows=1, drift_since=NOW), NOW, CONFIG)[0]
    recent = view(last_trained_rows=1, last_drift_job_at=NOW - timedelta(seconds=30))
    accepted, why = accept_drift(recent, NOW, CONFIG)
    assert not accepted
    assert "cool-down" in why
    assert accept_drift(view(last_trained_rows=1, last_drift_job_at=NOW - timedelta(minutes=3)), NOW, CONFIG)[0]


def test_requests_train_whenever_possible() -> None:
    assert decide_on_request(view(total_rows=10)).trigger is Trigger.REQUEST
    assert not decide_on_request(view(total_rows=0)).train
