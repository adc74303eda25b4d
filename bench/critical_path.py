"""Where the time goes between an abrupt change and a better model answering in serving.

Pure functions over what the loop benchmark collected from the services' own records:
the time the change's rows were sent, the monitor's alarm, the trainer's job (queued,
started, finished, and the seconds of each step its worker measured: ``stages``), the
registry's version (registered) and audit (promoted), and the first prediction the
version answered. Each step is the gap between two of those moments, so the steps add
up to the total; a step whose records are missing is shown as unknown, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float | None
    detail: str = ""


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def critical_path(
    *,
    version: int,
    changed_at: float,
    alarm_at: float | None,
    jobs: list[dict[str, Any]],
    versions: list[dict[str, Any]],
    promoted_at: float | None,
    served_at: float | None,
) -> list[Step]:
    """The steps from the change (epoch ``changed_at``) to ``version`` answering (epoch ``served_at``).

    ``jobs`` are the trainer's job records, ``versions`` the registry's version records
    (each naming the job that trained it, ``run.job_id``).
    """
    record = next((v for v in versions if v["version"] == version), None)
    job_id = (record or {}).get("run", {}).get("job_id")
    job = next((j for j in jobs if job_id is not None and j.get("id") == job_id), None) or {}
    queued, started, finished = (_epoch(job.get(k)) for k in ("created_at", "started_at", "finished_at"))
    registered = _epoch((record or {}).get("created_at"))
    trigger = job.get("trigger", "?")
    steps = [
        Step("change → alarm", _gap(changed_at, alarm_at), "monitor: window fills with labelled rows"),
        Step(
            "alarm → job queued", _gap(alarm_at, queued), f"trainer policy: post-drift rows, job ahead ({trigger} job)"
        ),
        Step("queued → running", _gap(queued, started), "claim"),
    ]
    stages: list[dict[str, Any]] = job.get("stages") or []
    steps.extend(Step(f"  job: {stage['stage']}", stage["seconds"]) for stage in stages)
    ran = _gap(started, finished)
    if ran is not None and stages:
        steps.append(Step("  job: other", round(ran - sum(s["seconds"] for s in stages), 3),
                          "worker hand-over, result, re-judgement, commit"))  # fmt: skip
    elif ran is not None:
        steps.append(Step("  job (no stage record)", ran))
    steps += [
        Step("job done → registered", _gap(finished, registered), "outbox relay, broker, registry consumer"),
        Step("registered → promoted", _gap(registered, promoted_at), "promotion policy"),
        Step(
            "promoted → first prediction",
            _gap(promoted_at, served_at),
            "model.promoted to serving, load, swap, next request",
        ),
    ]
    steps.append(Step(f"total: change → v{version} answers", _gap(changed_at, served_at)))
    return steps


def render(steps: list[Step]) -> str:
    width = max(len(s.name) for s in steps)
    lines = []
    for s in steps:
        shown = "      ?" if s.seconds is None else f"{s.seconds:7.2f}"
        lines.append(f"  {s.name:<{width}} {shown} s  {s.detail}".rstrip())
    return "\n".join(lines)
