"""The loop benchmark's breakdown of the time from an abrupt change to a better model answering."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bench.critical_path import critical_path, render

T0 = 1_800_000_000.0


def iso(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset, UTC).isoformat()


JOBS: list[dict[str, Any]] = [
    {"id": "j1", "trigger": "new_data", "created_at": iso(-60), "started_at": iso(-59), "finished_at": iso(-50)},
    {"id": "j2", "trigger": "drift", "created_at": iso(1.5), "started_at": iso(1.6), "finished_at": iso(3.6),
     "stages": [{"stage": "worker_wait", "seconds": 0.1}, {"stage": "read", "seconds": 0.2},
                {"stage": "search and evaluate", "seconds": 1.2}, {"stage": "store", "seconds": 0.2}]},
]  # fmt: skip
VERSIONS: list[dict[str, Any]] = [
    {"version": 1, "created_at": iso(-49), "run": {"job_id": "j1"}},
    {"version": 2, "created_at": iso(3.8), "run": {"job_id": "j2"}},
]


def test_the_steps_add_up_to_the_total_and_name_the_job_that_trained_the_version() -> None:
    steps = critical_path(version=2, changed_at=T0, alarm_at=T0 + 0.75, jobs=JOBS, versions=VERSIONS,
                          promoted_at=T0 + 3.9, served_at=T0 + 4.5)  # fmt: skip
    by_name = {s.name: s.seconds for s in steps}
    assert by_name["change → alarm"] == 0.75
    assert by_name["alarm → job queued"] == 0.75
    assert by_name["  job: search and evaluate"] == 1.2
    assert by_name["  job: other"] == 0.3  # 2.0 s of job, 1.7 s of it measured by the worker
    assert by_name["promoted → first prediction"] == 0.6
    total = by_name.pop("total: change → v2 answers")
    assert total == 4.5
    assert round(sum(s for s in by_name.values() if s is not None), 3) == total
    assert "drift job" in render(steps)


def test_missing_records_are_unknown_not_guessed() -> None:
    steps = critical_path(version=3, changed_at=T0, alarm_at=None, jobs=JOBS, versions=VERSIONS,
                          promoted_at=None, served_at=T0 + 9)  # fmt: skip
    unknown = {s.name for s in steps if s.seconds is None}
    assert {"change → alarm", "queued → running", "registered → promoted"} <= unknown
    assert "?" in render(steps)
