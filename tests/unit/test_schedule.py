"""Scheduled retraining: cron expressions and the schedule's place in the retrain policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.trainer.domain.policy import Trigger, decide_on_data
from services.trainer.domain.schedule import InvalidCron, decide_on_schedule, next_run, normalise
from tests.unit.test_retrain_policy import CONFIG, NOW, view

AT = datetime(2026, 11, 23, 2, 59, 30, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * *", datetime(2026, 11, 23, 3, 0, tzinfo=UTC)),
        ("*/15 * * * *", datetime(2026, 11, 23, 3, 0, tzinfo=UTC)),
        ("0 3 * * tue", datetime(2026, 11, 24, 3, 0, tzinfo=UTC)),
        ("30 2 1 * *", datetime(2026, 12, 1, 2, 30, tzinfo=UTC)),
        ("@daily", datetime(2026, 11, 24, 0, 0, tzinfo=UTC)),
        ("@hourly", datetime(2026, 11, 23, 3, 0, tzinfo=UTC)),
    ],
)
def test_next_run_is_the_first_match_after(cron: str, expected: datetime) -> None:
    assert next_run(cron, AT) == expected


def test_next_run_is_strictly_after_a_due_time() -> None:
    due = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    assert next_run("0 3 * * *", due) == due + timedelta(days=1)
    assert next_run("0 3 * * *", due + timedelta(microseconds=500)) == due + timedelta(days=1)


def test_other_time_zones_are_read_as_the_same_instant() -> None:
    paris = AT.astimezone(datetime.fromisoformat("2026-11-23T00:00:00+01:00").tzinfo)
    assert next_run("0 3 * * *", paris) == datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


def test_shorthands_and_spacing_are_normalised() -> None:
    assert normalise("  0   3 * *  * ") == "0 3 * * *"
    assert normalise("@Weekly") == "0 0 * * 0"


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("", "empty"),
        ("0 3 * *", "4 fields"),
        ("61 * * * *", "minute"),
        ("0 25 * * *", "hour"),
        ("0 0 30 2 *", "day-of-month"),
        ("0 0 * 13 *", "month"),
        ("0 0 * * funday", "day-of-week"),
        ("every day", "2 fields"),
        ("@fortnightly", "1 fields"),
    ],
)
def test_invalid_expressions_say_what_is_wrong(cron: str, says: str) -> None:
    with pytest.raises(InvalidCron, match=says):
        normalise(cron)


def test_a_due_schedule_queues_a_schedule_job_from_the_horizon() -> None:
    horizon = NOW - timedelta(hours=1)
    decision = decide_on_schedule(view(total_rows=5000, last_trained_rows=5000, horizon=horizon), "0 3 * * *", NOW)
    assert decision.train
    assert decision.trigger is Trigger.SCHEDULE
    assert decision.since == horizon
    assert decision.reason == f"schedule '0 3 * * *' due at {NOW.isoformat()}"


def test_a_schedule_waits_for_data_and_never_doubles_a_job() -> None:
    assert not decide_on_schedule(view(total_rows=0), "@daily", NOW).train
    busy = decide_on_schedule(view(total_rows=5000, active_job=True, active_trigger="new_data"), "@daily", NOW)
    assert not busy.train
    assert "already queued or running" in busy.reason


def test_drift_outranks_a_schedule() -> None:
    drifting = view(total_rows=9000, last_trained_rows=8000, champion_version=2, drift_since=NOW, drift_version=2,
                    rows_since_drift=1000)  # fmt: skip
    held = decide_on_schedule(drifting, "@daily", NOW)
    assert not held.train
    assert "drift outranks" in held.reason
    # An alarm a newer champion already answered does not hold the schedule.
    assert decide_on_schedule(view(total_rows=9000, drift_since=NOW, drift_version=1, champion_version=2),
                              "@daily", NOW).train  # fmt: skip
    # And a drift alarm cancels a queued or running schedule job, like a new_data one.
    running = view(total_rows=30_000, last_trained_rows=8000, active_job=True, active_trigger=Trigger.SCHEDULE.value,
                   drift_since=NOW - timedelta(minutes=5), rows_since_drift=600)  # fmt: skip
    decision = decide_on_data(running, CONFIG, NOW)
    assert decision.cancel_routine
    assert decision.trigger is Trigger.DRIFT
