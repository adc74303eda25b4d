"""The trainer's retrain policy."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.trainer.domain.policy import (
    DriftVerdict,
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


def test_drift_reports_are_kept_unless_moot() -> None:
    trained = view(total_rows=9000, last_trained_rows=8000, champion_version=2)
    assert accept_drift(trained, 2)[0] is DriftVerdict.KEEP
    assert accept_drift(view(), 1)[0] is DriftVerdict.IGNORE  # nothing trained yet
    assert accept_drift(view(last_trained_rows=1, drift_since=NOW), 1)[0] is DriftVerdict.IGNORE  # already kept
    verdict, why = accept_drift(trained, 1)
    assert verdict is DriftVerdict.IGNORE
    assert "champion is already v2" in why
    # A cool-down or a busy trainer no longer drops the report: it is kept.
    busy = view(last_trained_rows=1, champion_version=2, active_job=True, last_drift_job_at=NOW)
    assert accept_drift(busy, 2)[0] is DriftVerdict.KEEP


def test_drift_cancels_a_routine_job_and_starts_at_once() -> None:
    since = NOW - timedelta(minutes=1)
    routine = view(total_rows=30_000, last_trained_rows=8000, active_job=True, active_trigger="new_data",
                   drift_since=since, rows_since_drift=800, drift_version=1, champion_version=1)  # fmt: skip
    decision = decide_on_data(routine, CONFIG, NOW)
    assert decision.cancel_routine
    assert decision.train
    assert decision.trigger is Trigger.DRIFT
    assert decision.since == since
    # Too few post-drift rows yet: the drift job waits, and the routine job runs on until it can start (if
    # rows stopped arriving, its work would be lost for a drift job that never comes).
    early = decide_on_data(replace(routine, rows_since_drift=100), CONFIG, NOW)
    assert not early.cancel_routine
    assert not early.train
    assert "drift pending" in early.reason
    # A request or another drift job is not routine: the alarm waits for it, kept.
    for trigger in ("request", "drift"):
        kept = decide_on_data(replace(routine, active_trigger=trigger), CONFIG, NOW)
        assert not kept.cancel_routine
        assert not kept.train


def test_an_alarm_kept_through_a_job_acts_when_the_job_ends() -> None:
    since = NOW - timedelta(minutes=1)
    during = view(total_rows=9000, last_trained_rows=8000, active_job=True, active_trigger="request",
                  drift_since=since, rows_since_drift=600, drift_version=1, champion_version=1)  # fmt: skip
    assert not decide_on_data(during, CONFIG, NOW).train
    after = replace(during, active_job=False, active_trigger=None)
    decision = decide_on_data(after, CONFIG, NOW)
    assert decision.train
    assert decision.trigger is Trigger.DRIFT
    # …unless the job's model became champion meanwhile: the alarm about v1 is answered.
    answered = decide_on_data(replace(after, champion_version=2), CONFIG, NOW)
    assert not answered.train or answered.trigger is not Trigger.DRIFT
    assert answered.clear_drift


def test_an_alarm_kept_through_a_cool_down_acts_when_it_ends() -> None:
    since = NOW - timedelta(seconds=20)
    kept = view(total_rows=9000, last_trained_rows=8000, drift_since=since, rows_since_drift=600,
                drift_version=1, last_drift_version=1, champion_version=1,
                last_drift_job_at=NOW - timedelta(seconds=30))  # fmt: skip
    waiting = decide_on_data(kept, CONFIG, NOW)
    assert not waiting.train
    assert "cool-down" in waiting.reason
    assert not waiting.clear_drift  # kept, not dropped
    later = decide_on_data(kept, CONFIG, NOW + timedelta(seconds=91))
    assert later.train
    assert later.trigger is Trigger.DRIFT


def test_a_new_champion_below_its_holdout_retrains_cool_down_or_not() -> None:
    bad_new = view(total_rows=9000, last_trained_rows=8000, drift_since=NOW, rows_since_drift=600,
                   drift_version=2, last_drift_version=1, champion_version=2,
                   last_drift_job_at=NOW - timedelta(seconds=5))  # fmt: skip
    decision = decide_on_data(bad_new, CONFIG, NOW)
    assert decision.train
    assert decision.trigger is Trigger.DRIFT


def test_after_a_drift_jobs_train_from_its_start_and_refresh_as_post_drift_data_grows() -> None:
    horizon = NOW - timedelta(minutes=3)
    # The drift job trained on 600 post-drift rows; 499 more arrived: fewer than drift_min_rows (500).
    fresh = view(total_rows=9099, last_trained_rows=8600, horizon=horizon, rows_since_horizon=1099)
    assert not decide_on_data(fresh, CONFIG, NOW).train
    doubled = decide_on_data(replace(fresh, total_rows=9100, rows_since_horizon=1100), CONFIG, NOW)
    assert doubled.train
    assert doubled.trigger is Trigger.NEW_DATA
    assert doubled.since == horizon
    assert "post-drift refresh" in doubled.reason
    # Once the post-drift data is large, the routine cadence is back (and still from the horizon).
    large = view(total_rows=40_000, last_trained_rows=35_001, horizon=horizon, rows_since_horizon=12_000)
    assert not decide_on_data(large, CONFIG, NOW).train  # 4,999 new rows: below the routine 5,000
    routine = decide_on_data(replace(large, last_trained_rows=35_000), CONFIG, NOW)
    assert routine.train
    assert routine.since == horizon
    assert decide_on_request(large).since == horizon


def test_a_refresh_is_due_once_the_post_drift_rows_grew_by_half_not_only_once_they_doubled() -> None:
    """After a gradual drift the newest rows count most: a model that saw half of the rows since the drift
    could serve until the stream had moved on (the loop benchmark's gradual stream: its last refresh before
    the tail trained on 8,000 of 16,000 rows and landed after the stream ended)."""
    horizon = NOW - timedelta(minutes=3)
    # The last refresh saw 4,000 post-drift rows (of 4,000 total: horizon at row 0 of this dataset version).
    saw = view(total_rows=40_000, last_trained_rows=39_000, horizon=horizon, rows_since_horizon=4_000 + 1_000)
    assert not decide_on_data(saw, CONFIG, NOW).train  # 1,000 new rows: 1.25 times as many
    grown = replace(saw, total_rows=40_999, rows_since_horizon=5_999)
    assert not decide_on_data(grown, CONFIG, NOW).train  # 1,999: just short of half again
    due = decide_on_data(replace(grown, total_rows=41_000, rows_since_horizon=6_000), CONFIG, NOW)
    assert due.train
    assert due.since == horizon
    assert "the last model saw 4000" in due.reason
    doubling = replace(CONFIG, refresh_growth=2.0)  # the old rule, as a setting
    assert not decide_on_data(replace(grown, total_rows=41_000, rows_since_horizon=6_000), doubling, NOW).train
    assert decide_on_data(replace(grown, total_rows=43_000, rows_since_horizon=8_000), doubling, NOW).train


def test_requests_train_whenever_possible() -> None:
    assert decide_on_request(view(total_rows=10)).trigger is Trigger.REQUEST
    assert not decide_on_request(view(total_rows=0)).train


def test_jobs_answering_a_drift_search_briefly_and_later_ones_at_the_routine_budget() -> None:
    horizon = NOW - timedelta(minutes=3)
    drifted = view(total_rows=9000, last_trained_rows=8000, drift_since=horizon, rows_since_drift=600)
    first = decide_on_data(drifted, CONFIG, NOW)
    assert first.trigger is Trigger.DRIFT
    assert first.quick
    refresh = view(total_rows=9200, last_trained_rows=8600, horizon=horizon, rows_since_horizon=1200)
    assert decide_on_data(refresh, CONFIG, NOW).quick
    # Once the post-drift rows reach the routine cadence, and without any drift, jobs search at length.
    large = view(total_rows=40_000, last_trained_rows=35_000, horizon=horizon, rows_since_horizon=12_000)
    assert not decide_on_data(large, CONFIG, NOW).quick
    assert not decide_on_data(view(total_rows=20_000, last_trained_rows=10_000), CONFIG, NOW).quick
    assert not decide_on_data(view(total_rows=2000), CONFIG, NOW).quick  # the first model
    assert not decide_on_request(large).quick
