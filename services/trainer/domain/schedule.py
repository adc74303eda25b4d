"""Scheduled retraining: cron expressions, and what a schedule does when it comes due.

A schedule is one more trigger of the retrain policy, the routine kind: it
queues a job like enough new data would, and drift outranks it (a drift job
cancels a queued or running schedule job, see :mod:`services.trainer.domain.policy`).

Expressions are the five cron fields (minute hour day-of-month month
day-of-week) evaluated in UTC by ``cronsim`` (the parser healthchecks.io runs),
plus the usual shorthands (``@hourly``, ``@daily`` …), which cronsim does not
read. A schedule that comes due while the trainer is down fires once when it
is back, not once per missed time: a retrain on the newest data answers all
of them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

from services.trainer.domain.policy import Decision, ModelView, Trigger

SHORTHANDS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class InvalidCron(ValueError):
    """A cron expression that does not parse, or never comes due; the message says why."""


def normalise(expression: str) -> str:
    """The five-field form of ``expression`` (shorthands expanded, spaces collapsed); raise InvalidCron."""
    text = " ".join(expression.split())
    fields = SHORTHANDS.get(text.lower(), text)
    if not fields:
        raise InvalidCron("empty cron expression")
    next_run(fields, datetime(2000, 1, 1, tzinfo=UTC))  # parses it, and checks it ever comes due
    return fields


def next_run(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that the five-field ``expression`` matches (UTC)."""
    fields = SHORTHANDS.get(expression.strip().lower(), expression)
    if len(fields.split()) != 5:
        count = len(fields.split())
        raise InvalidCron(f"{expression!r} has {count} fields; cron takes 5: minute hour day month weekday")
    try:
        return next(CronSim(fields, after.astimezone(UTC).replace(microsecond=0)))
    except CronSimError as exc:
        raise InvalidCron(f"{expression!r}: {exc}") from exc
    except StopIteration as exc:
        raise InvalidCron(f"{expression!r} never comes due") from exc


def decide_on_schedule(view: ModelView, expression: str, due: datetime) -> Decision:
    """Whether a schedule that came due at ``due`` queues a retrain of the model.

    It does unless a job is already queued or running (that job answers the
    schedule too), the dataset has no rows, or a drift alarm is kept: the drift
    job outranks a routine one and will train on the rows that matter. Like every
    job after a drift, it trains from the data horizon.
    """
    fired = f"schedule {expression!r} due at {due.isoformat()}"
    if view.active_job:
        return Decision(False, f"{fired}: a job is already queued or running")
    if view.total_rows == 0:
        return Decision(False, f"{fired}: the dataset has no rows yet")
    if view.drift_since is not None and not _answered(view):
        return Decision(False, f"{fired}: a drift alarm is kept, and drift outranks a schedule")
    return Decision(True, fired, Trigger.SCHEDULE, since=view.horizon)


def _answered(view: ModelView) -> bool:
    """A kept alarm about a version older than the champion was answered by a newer model."""
    return (
        view.drift_version is not None
        and view.champion_version is not None
        and (view.drift_version < view.champion_version)
    )
