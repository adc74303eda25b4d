"""When to retrain: a pure policy over the trainer's view of a model.

Three things start a job: enough new rows since the last model, drift, or an
explicit request. Drift is special in two ways. First, the data before the
drift describes a world that no longer exists, so a drift-triggered job
trains only on batches that arrived after the drift began, and waits until
enough of them exist. Second, drift keeps being reported while the old model
still serves during retraining, so drift reports inside a cool-down after a
drift job are ignored; otherwise one shift would cause a retrain storm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Trigger(StrEnum):
    NEW_DATA = "new_data"
    DRIFT = "drift"
    REQUEST = "request"


@dataclass(frozen=True)
class PolicyConfig:
    min_rows_first_model: int = 1000
    """Rows needed before the first model is trained."""
    min_new_rows: int = 20_000
    """New rows since the last training that justify a routine retrain."""
    drift_min_rows: int = 1000
    """Rows that must have arrived after a drift began before retraining on them."""
    cooldown: timedelta = timedelta(minutes=2)
    """Quiet time after a drift-triggered job during which new drift reports are ignored."""


@dataclass(frozen=True)
class ModelView:
    """What the trainer knows about one model when it decides."""

    total_rows: int
    """Rows in the latest dataset version."""
    last_trained_rows: int
    """Rows in the dataset version the last job trained on (0: never trained)."""
    active_job: bool
    """A job is queued or running."""
    drift_since: datetime | None
    """Start of a drift not yet answered by a retrain."""
    rows_since_drift: int
    """Rows accepted at or after ``drift_since``."""
    last_drift_job_at: datetime | None
    """When the last drift-triggered job was queued."""


@dataclass(frozen=True)
class Decision:
    train: bool
    reason: str
    trigger: Trigger | None = None
    since: datetime | None = None
    """Train only on data accepted at or after this moment (drift jobs)."""


def decide_on_data(view: ModelView, config: PolicyConfig) -> Decision:
    """Whether newly arrived data (or a pending drift) should start a job."""
    if view.active_job:
        return Decision(False, "a job for this model is already queued or running")
    if view.drift_since is not None:
        if view.rows_since_drift >= config.drift_min_rows:
            return Decision(
                True,
                f"drift since {view.drift_since.isoformat()}: {view.rows_since_drift} rows arrived after it",
                Trigger.DRIFT,
                since=view.drift_since,
            )
        return Decision(False, f"drift pending: {view.rows_since_drift}/{config.drift_min_rows} rows since it began")
    if view.last_trained_rows == 0:
        if view.total_rows >= config.min_rows_first_model:
            return Decision(True, f"first model: {view.total_rows} rows available", Trigger.NEW_DATA)
        return Decision(False, f"waiting for data: {view.total_rows}/{config.min_rows_first_model} rows")
    new_rows = view.total_rows - view.last_trained_rows
    if new_rows >= config.min_new_rows:
        return Decision(True, f"{new_rows} new rows since the last model", Trigger.NEW_DATA)
    return Decision(False, f"{new_rows}/{config.min_new_rows} new rows since the last model")


def accept_drift(view: ModelView, now: datetime, config: PolicyConfig) -> tuple[bool, str]:
    """Whether a drift report should be acted on, or ignored as an echo."""
    if view.last_trained_rows == 0:
        return False, "no model has been trained yet"
    if view.drift_since is not None:
        return False, "a drift is already pending"
    if view.last_drift_job_at is not None and now - view.last_drift_job_at < config.cooldown:
        remaining = config.cooldown - (now - view.last_drift_job_at)
        return False, f"cool-down after the last drift retrain ({remaining.total_seconds():.0f}s left)"
    return True, "drift accepted"


def decide_on_request(view: ModelView) -> Decision:
    """An explicit request trains unless a job is already queued or running."""
    if view.active_job:
        return Decision(False, "a job for this model is already queued or running")
    if view.total_rows == 0:
        return Decision(False, "the dataset has no rows yet")
    return Decision(True, "requested", Trigger.REQUEST)
