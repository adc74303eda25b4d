"""The whole loop, as `driftloop demo` runs it: five service processes on the
embedded stack, synthetic traffic, injected drift, no human step.

The demo runs twice against the same stack, as a newcomer would run it: each
run declares its own dataset and model and closes the loop. The second run's
drift changes only the concept (no feature distribution moves), so only the
performance alarm, from the labels, can see it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.demo import Demo, DemoConfig
from cli.main import DEMO_ENV
from cli.supervisor import Supervisor, UpState
from cli.tokens import read_token
from tests.otlp import Receiver, Span, start_receiver

#: Two demo runs on one stack take minutes on a shared machine; the default per-test limit is 300 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def otlp() -> Iterator[tuple[str, Receiver]]:
    endpoint, receiver, server = start_receiver()
    yield endpoint, receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def runs(otlp: tuple[str, Receiver]) -> Iterator[tuple[UpState, list[dict[str, Any]]]]:
    # Not under pytest's basetemp: every pytest session chmods /tmp/pytest-of-<user> back to 0700, which
    # cuts the stack's non-root PostgreSQL off its data directory while other sessions start (as the
    # session stack in tests/conftest.py says too).
    home = Path(tempfile.mkdtemp(prefix="driftloop-e2e-up-"))
    env = {**DEMO_ENV, "DRIFTLOOP_TELEMETRY_OTLP_ENDPOINT": otlp[0]}
    supervisor = Supervisor(home, ports=Supervisor.free_ports(), env=env, log_to_files=True)
    state = supervisor.start()
    try:
        results = []
        for seed, drift in ((11, "covariate+concept"), (12, "concept")):
            config = DemoConfig(seed=seed, stationary_predictions=2500, recovery_predictions=1000, timeout_s=240,
                                drift=drift)  # type: ignore[arg-type]  # fmt: skip
            demo = Demo(state.services, state.kafka_bootstrap, config, token=read_token(home))
            results.append(asyncio.run(demo.run()))
        yield state, results
    finally:
        supervisor.stop()
        _print_logs_on_failure(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def loop(runs: tuple[UpState, list[dict[str, Any]]]) -> tuple[UpState, dict[str, Any]]:
    """The first run: covariate shift and a changed concept."""
    return runs[0], runs[1][0]


@pytest.fixture(scope="module", params=[0, 1], ids=["covariate+concept", "concept-only, again in the same up"])
def each_run(
    request: pytest.FixtureRequest, runs: tuple[UpState, list[dict[str, Any]]]
) -> tuple[UpState, dict[str, Any]]:
    return runs[0], runs[1][request.param]


def _auth(state: UpState) -> dict[str, str]:
    """The admin token `driftloop up` wrote into its home: nothing answers without one."""
    return {"Authorization": f"Bearer {read_token(Path(state.home))}"}


def _print_logs_on_failure(home: Path) -> None:
    for log in sorted((home / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        errors = [i for i, line in enumerate(lines) if " ERROR " in line or "Traceback" in line]
        if errors:  # the last error with what follows it (a traceback's lines carry no level)
            last = errors[-1]
            print(f"--- {log.name}: {len(errors)} error lines, the last one:\n" + "\n".join(lines[last : last + 25]))


def test_the_loop_closes(each_run: tuple[UpState, dict[str, Any]]) -> None:
    _, result = each_run
    assert result["errors"] == []
    assert result["loop_closed"], result
    assert result["initial_version"] == 1
    assert result["retrained_version"] == 2
    assert result["false_drift_events_before_injection"] == 0
    assert result["drift_detected_after_rows"] is not None
    assert result["accuracy_after_recovery"] > result["accuracy_during_drift"] + 0.15
    assert result["accuracy_before_drift"] > 0.7
    assert result["dlq_messages"] == 0, result["dead_letters"]


def test_every_record_is_accepted_or_rejected_with_a_reason(each_run: tuple[UpState, dict[str, Any]]) -> None:
    state, result = each_run
    records = result["records"]
    assert records["accounted"], records
    assert records["rejected"] > 0  # the demo corrupts 1% on purpose
    rejections = httpx.get(
        f"{state.services['ingest']}/v1/datasets/{result['dataset']}/rejections?limit=1000", headers=_auth(state)
    ).json()
    assert rejections["total"] == records["rejected"]
    assert all(r["reason"] for r in rejections["rejections"])


def test_registry_and_serving_agree_on_the_retrained_champion(each_run: tuple[UpState, dict[str, Any]]) -> None:
    state, result = each_run
    registry, serving, model = state.services["registry"], state.services["serving"], result["dataset"]
    v2 = httpx.get(f"{registry}/v1/models/{model}/versions/2", headers=_auth(state)).json()
    assert v2["version"] == result["retrained_version"] == 2
    assert v2["lineage"]["trigger"] == "drift"
    assert v2["run"]["champion_version"] == 1
    assert v2["metrics"]["accuracy"] > v2["run"]["champion_metrics"]["accuracy"]
    audit = httpx.get(f"{registry}/v1/models/{model}/audit", headers=_auth(state)).json()
    promotions = [(a["from_version"], a["to_version"]) for a in reversed(audit) if a["action"] == "promote"]
    assert promotions[:2] == [(None, 1), (1, 2)]  # later ones: fuller post-drift models, each better on its holdout
    champion = httpx.get(f"{registry}/v1/models/{model}/aliases/champion", headers=_auth(state)).json()
    assert champion["version"] == promotions[-1][1]
    served = httpx.get(f"{serving}/v1/models/{model}", headers=_auth(state)).json()
    assert served["version"] == champion["version"]
    assert served["artifact"]["sha256"] == champion["artifact"]["sha256"]


def test_drift_was_explained_and_the_retrain_used_post_drift_data(each_run: tuple[UpState, dict[str, Any]]) -> None:
    state, result = each_run
    model = result["dataset"]
    drift = httpx.get(f"{state.services['monitor']}/v1/models/{model}/drift", headers=_auth(state)).json()
    assert drift["version"] >= 2  # the monitor moved on to the new champion
    alarm = next(a for a in drift["alarms"] if a["version"] == 1)
    if result["drift"] == "concept":
        assert alarm["kinds"] == ["performance"]  # no feature moved: the labels alone closed the loop
        assert all(kinds == ["performance"] for kinds in result["alarm_kinds"]), result["alarm_kinds"]
    else:
        assert "data_drift" in alarm["kinds"]
    jobs = httpx.get(f"{state.services['trainer']}/v1/training-jobs?model={model}", headers=_auth(state)).json()
    drift_job = next(j for j in reversed(jobs) if j["trigger"] == "drift")
    assert drift_job["status"] == "succeeded"
    # The rows it trained on are exactly those ingested at or after the drift's start, which is no
    # earlier than one window before the injection: none of the old concept's data.
    since = datetime.fromisoformat(drift_job["since"])
    injected = datetime.fromisoformat(result["drift_injected_at"])
    assert since >= injected - timedelta(seconds=10)
    versions = [
        httpx.get(f"{state.services['ingest']}/v1/datasets/{model}/versions/{v}", headers=_auth(state)).json()
        for v in range(1, drift_job["dataset_version"] + 1)
    ]
    after = sum(v["batch_rows"] for v in versions if datetime.fromisoformat(v["created_at"]) >= since)
    assert drift_job["training_rows"] + drift_job["holdout_rows"] == after
    assert after < versions[-1]["total_rows"]  # the older rows were left out


def _wait_for_spans(receiver: Receiver, accept: Any, timeout: float = 30.0) -> list[Span]:
    """Spans are exported in batches every few seconds: poll until the ones wanted arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with receiver.lock:
            found = [s for s in receiver.spans if accept(s)]
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("spans never arrived")


def test_one_trace_follows_a_batch_from_ingest_to_the_model_serving_it(
    loop: tuple[UpState, dict[str, Any]], otlp: tuple[str, Receiver]
) -> None:
    _, receiver = otlp
    swaps = _wait_for_spans(receiver, lambda s: s.name == "model swap" and s.attributes.get("driftloop.version") == 1)
    chain = receiver.ancestors(swaps[0])
    services = [s.service for i, s in enumerate(chain) if i == 0 or s.service != chain[i - 1].service]
    assert services == ["serving", "registry", "trainer", "ingest"], [(s.service, s.name) for s in chain]
    root = chain[-1]
    assert root.name == "POST /v1/datasets/{dataset}/records"  # the HTTP request that brought the batch
    assert len({s.trace_id for s in chain}) == 1
    job = next(s for s in chain if s.name == "training job")
    # The worker process continued the job's trace.
    worker = _wait_for_spans(receiver, lambda s: s.service == "trainer-worker" and s.parent_id == job.span_id)
    assert worker[0].name == "train"


def test_predictions_and_drift_link_back_to_their_causes(
    loop: tuple[UpState, dict[str, Any]], otlp: tuple[str, Receiver]
) -> None:
    _, receiver = otlp
    predicts = _wait_for_spans(receiver, lambda s: s.name == "POST /v1/models/{model}/predict")
    # v1, the drift model v2, and the fuller post-drift models that may follow it within a run.
    assert all(s.attributes["driftloop.model.version"] >= 1 for s in predicts)
    assert all(len(s.attributes["driftloop.request_ids"]) == 50 for s in predicts)
    flushes = _wait_for_spans(receiver, lambda s: s.name == "predictions.logged flush" and bool(s.links))
    predict_ids = {s.span_id for s in predicts}
    assert any(span_id in predict_ids for f in flushes for _, span_id in f.links)
    drift = _wait_for_spans(receiver, lambda s: s.name == "drift detected")[0]
    assert drift.service == "monitor"
    assert drift.links  # many causes: the predictions.logged messages of the window
    spans = receiver.by_id()
    caused = [spans[span_id] for _, span_id in drift.links if span_id in spans]
    assert caused
    assert any(a.name == "predictions.logged flush" for c in caused for a in receiver.ancestors(c))
    # …and the retrain it caused links back to it (the data that completed the job is its parent).
    jobs = _wait_for_spans(
        receiver, lambda s: s.name == "training job" and s.attributes.get("driftloop.trigger") == "drift"
    )
    linked = [spans[span_id] for _, span_id in jobs[0].links if span_id in spans]
    assert any(drift in receiver.ancestors(span) for span in linked)


def test_nothing_is_open_without_the_token_up_wrote(loop: tuple[UpState, dict[str, Any]]) -> None:
    state, _ = loop
    token_file = Path(state.home) / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    reads = {"ingest": "/v1/datasets", "trainer": "/v1/training-jobs", "registry": "/v1/models",
             "serving": "/v1/models", "monitor": "/v1/models"}  # fmt: skip
    for name, url in state.services.items():
        assert httpx.get(f"{url}/healthz").status_code == 200, name
        assert httpx.get(f"{url}{reads[name]}").status_code == 401, name
        assert httpx.get(f"{url}{reads[name]}", headers=_auth(state)).status_code == 200, name


def test_the_console_started_by_up_shows_the_loop(loop: tuple[UpState, dict[str, Any]]) -> None:
    """`up` starts the web console beside the services: signed in with up's token, it shows the
    retrained champion, the audit of the promotion and the monitor's drift report."""
    state, result = loop
    model = result["dataset"]
    assert state.console
    with httpx.Client(base_url=state.console, timeout=30) as console:
        signed = console.post("/login", data={"token": read_token(Path(state.home)), "next": f"/models/{model}"},
                              headers={"Origin": state.console})  # fmt: skip
        assert signed.status_code == 303, signed.text
        assert "HttpOnly" in signed.headers["set-cookie"]
        page = console.get(f"/models/{model}")
        assert page.status_code == 200
        assert 'data-action="promote"' in page.text
        assert '<span class="badge champion">champion</span>' in page.text
        report = console.get(f"/models/{model}/drift")
        assert report.status_code == 200
        assert '<section class="feature' in report.text
        assert '<tr class="alarm">' in report.text  # the drift alarm that started the retrain
