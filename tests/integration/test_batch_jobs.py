"""Batch predictions on the real stack: a registry resolving the alias, a dataset version of
100,000 rows, a worker killed mid-job, the Parquet output compared with the model's own predictions."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from cli.churn_stream import ChurnStream
from cli.main import app as cli_app
from libs.common import retention, topics
from libs.common.artifacts import ArtifactStore
from libs.common.events import ArtifactRef, BatchCompleted, ModelTrained, parse_event
from libs.common.frames import features_frame
from libs.common.retention import RetentionSettings
from libs.common.signing import Verifier
from services.registry.app import create_app as registry_app
from services.registry.settings import RegistrySettings
from services.trainer.adapters import gc as trainer_gc
from services.trainer.app import create_app, spec
from services.trainer.settings import TrainerSettings
from tests.conftest import Isolation, serve
from tests.factories import CHURN, TrainedModel, data_arrived, trained_model
from tests.helpers import read_topic, wait_until
from tests.integration.test_artifact_gc import _age
from tests.integration.test_serving_runtime import listening
from tests.integration.test_trainer import _known_rows, publish
from tests.integration.test_trainer import settings as trainer_settings
from tests.keys import SIGNER

pytestmark = pytest.mark.integration


def settings(isolated: Isolation, **overrides: Any) -> TrainerSettings:
    """No training workers (these tests train nothing), and batch workers at the trainer's own priority:
    the tests already run niced on the shared machine, and a worker niced further would starve there."""
    return trainer_settings(isolated, workers=0, batch_nice=0, **overrides)


@contextlib.asynccontextmanager
async def registered(isolated: Isolation, model: TrainedModel) -> AsyncIterator[str]:
    """A registry over real HTTP with ``model`` registered as churn v1, the champion; yields its URL."""
    app, _ = registry_app(isolated.settings(RegistrySettings, min_metric=0.5))
    trained = ModelTrained(
        producer="test", model="churn", dataset="churn", dataset_version=1, job_id=str(uuid.uuid4()),
        trigger="new_data", metrics=model.metrics, primary_metric="accuracy", seed=7, code_version="t",
        training_rows=2000, artifact=model.artifact, profile=model.profile, dataset_schema=CHURN,
    )  # fmt: skip
    async with serve(app) as client, listening(app) as address:
        await publish(isolated, trained)
        await wait_until(lambda: _champion(client), message="v1 registered as champion")
        yield f"http://{address}"


async def test_a_batch_job_over_100k_rows_survives_its_worker_being_killed(isolated: Isolation) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    stream = ChurnStream(seed=21)
    arrived = data_arrived(store, "churn", [stream.batch(25_000) for _ in range(4)])
    async with registered(isolated, model) as registry:
        config = settings(isolated, min_rows_first_model=10**6, registry_url=registry, batch_chunk_rows=5_000)
        app, _ = create_app(config)
        async with serve(app) as client:
            await publish(isolated, arrived[-1])
            await wait_until(lambda: _known_rows(client, 100_000), message="the trainer to see 100k rows")
            submitted = await client.post("/v1/batch-jobs", json={"model": "churn", "dataset": "churn"})
            assert submitted.status_code == 202, submitted.text
            job = submitted.json()
            assert (job["version"], job["total_rows"], job["chunks"], job["status"]) == (1, 100_000, 20, "queued")
            assert job["input"] == {"kind": "dataset", "dataset": "churn", "dataset_version": 4}

            running = await wait_until(lambda: _progressed(client, job["id"], 3), timeout=240, message="3 chunks")
            os.killpg(running["worker_pid"], signal.SIGKILL)  # the worker dies mid-job
            done = await wait_until(lambda: _finished(client, job["id"]), timeout=240, message="the job to end")

    assert done["status"] == "succeeded", done["error"]
    assert (done["rows_done"], done["chunks_done"], done["progress"]) == (100_000, 20, 1.0)
    assert done["attempts"] == 2
    first, resumed = done["resumed_at_chunk"]
    assert first == 0
    assert 3 <= resumed < 20  # the second attempt started after the chunks already done, not from zero

    output = ArtifactRef.model_validate(done["output"])
    Verifier([SIGNER.private.public_key()]).verify(output)  # signed like every artifact the trainer stores
    predicted = pq.read_table(io.BytesIO(store.get(output))).to_pandas()
    rows = pd.concat([pq.read_table(io.BytesIO(store.get(e.batch))).to_pandas() for e in arrived])
    frame = features_frame(CHURN, rows.reset_index(drop=True))
    assert list(predicted.columns) == ["row_id", "prediction", "proba_no", "proba_yes"]
    assert predicted["row_id"].tolist() == list(range(100_000))
    with threadpool_limits(1, user_api="openmp"):  # as the worker predicts (and fast on a busy machine)
        labels, probabilities = model.pipeline.predict(frame), model.pipeline.predict_proba(frame)
    assert (predicted["prediction"].to_numpy() == labels).all()
    np.testing.assert_allclose(predicted[["proba_no", "proba_yes"]].to_numpy(), probabilities)

    records = await read_topic(isolated.kafka.bootstrap, isolated.kafka.topic(topics.BATCH_COMPLETED), expect=1)
    event = parse_event(records[0].value)
    assert isinstance(event, BatchCompleted)
    assert (event.job_id, event.status, event.rows, event.version) == (job["id"], "succeeded", 100_000, 1)
    assert (event.dataset, event.dataset_version, event.output) == ("churn", 4, output)


async def test_an_uploaded_parquet_file_through_the_cli_and_bad_input(isolated: Isolation, tmp_path: Path) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=2000)
    rows = pd.DataFrame(ChurnStream(seed=5).batch(3000)).drop(columns=["churned"])
    rows.insert(0, "customer_id", [f"c{i:05d}" for i in range(3000)])
    upload = tmp_path / "rows.parquet"
    upload.write_bytes(_parquet(rows))
    async with registered(isolated, model) as registry:
        app, _ = create_app(settings(isolated, registry_url=registry, batch_chunk_rows=1000))
        async with serve(app) as client, listening(app) as address:
            cli = ["--url", f"http://{address}", "--home", str(tmp_path), "--json"]
            env = {"DRIFTLOOP_TOKEN": client.headers["Authorization"].removeprefix("Bearer ")}
            submitted = await _driftloop(["batch", "submit", "churn", "--file", str(upload), "--version", "1",
                                          "--id-column", "customer_id", "--wait", *cli], env)  # fmt: skip
            assert submitted["status"] == "succeeded", submitted["error"]
            assert submitted["input"]["kind"] == "upload"
            shown = await _driftloop(["batch", "status", submitted["id"], *cli], env)
            assert (shown["id"], shown["rows_done"], shown["output"]) == (submitted["id"], 3000, submitted["output"])
            refused = await asyncio.to_thread(CliRunner().invoke, cli_app, ["batch", "submit", "nope", "--dataset",
                                              "churn", *cli], env=env)  # fmt: skip
            assert refused.exit_code == 1
            assert "404 model: the registry has no model 'nope'" in refused.stderr
            await _refused(client)
    predicted = pq.read_table(io.BytesIO(store.get(ArtifactRef.model_validate(submitted["output"])))).to_pandas()
    assert predicted["row_id"].tolist() == rows["customer_id"].tolist()
    with threadpool_limits(1, user_api="openmp"):
        assert (predicted["prediction"].to_numpy() == model.pipeline.predict(features_frame(CHURN, rows))).all()


async def _driftloop(args: list[str], env: dict[str, str]) -> Any:
    """Run the ``driftloop`` command (in a thread: the services answer on this event loop); its JSON output."""
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def _refused(client: Any) -> None:
    """Bad input: a 4xx in the error shape, naming the field at fault; no job queued."""
    before = len((await client.get("/v1/batch-jobs")).json())
    parquet = {"content-type": "application/vnd.apache.parquet"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"json": {"model": "nope", "dataset": "churn"}}, 404, "model: the registry has no model 'nope'"),
        ({"json": {"model": "churn", "version": 7, "dataset": "churn"}}, 404, "version: model 'churn' has no version"),
        ({"json": {"model": "churn", "alias": "canary", "dataset": "churn"}}, 404, "alias: model 'churn' has no"),
        ({"json": {"model": "churn", "dataset": "ghost"}}, 404, "dataset: the trainer knows no dataset 'ghost'"),
        ({"json": {"model": "churn", "version": 1, "alias": "champion", "dataset": "churn"}}, 422, "not both"),
        ({"json": {"model": "churn"}}, 422, "dataset: Field required"),
        ({"content": b"age,plan\n1,basic\n", "headers": parquet, "params": {"model": "churn"}}, 422,
         "body: not a Parquet file"),
        ({"content": _parquet(pd.DataFrame({"age": [40.0]})), "headers": parquet, "params": {"model": "churn"}}, 422,
         "body: the Parquet file lacks the model's features ['tenure_months'"),
        ({"content": b"age,plan\n1,basic\n", "headers": {"content-type": "text/csv"}, "params": {"model": "churn"}},
         415, "content-type: 'text/csv' is not accepted"),
    ]  # fmt: skip
    for request, status, says in cases:
        answer = await client.post("/v1/batch-jobs", **request)
        assert answer.status_code == status, (request, answer.text)
        assert set(answer.json()) >= {"error", "message"}
        assert says in answer.json()["message"], answer.json()
    assert len((await client.get("/v1/batch-jobs")).json()) == before


def _parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


async def _champion(client: Any) -> bool:
    answer = await client.get("/v1/models/churn/aliases/champion")
    return bool(answer.status_code == 200 and answer.json()["version"] == 1)


async def _progressed(client: Any, job_id: str, chunks: int) -> dict[str, Any] | None:
    job: dict[str, Any] = (await client.get(f"/v1/batch-jobs/{job_id}")).json()
    assert job["status"] != "succeeded", "the job ended before its worker could be killed"
    return job if job["chunks_done"] >= chunks and job["worker_pid"] else None


async def _finished(client: Any, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = (await client.get(f"/v1/batch-jobs/{job_id}")).json()
    return job if job["status"] in ("succeeded", "failed") else None


async def test_batch_jobs_are_cancelled_queued_or_running_and_the_gc_collects_batch_files(
    isolated: Isolation, tmp_path: Path
) -> None:
    store = ArtifactStore(isolated.artifacts_root)
    model = trained_model(store, rows=600)
    files: dict[str, Path] = {}
    for name, seed, rows in (("small", 5, 1000), ("large", 6, 40_000), ("waiting", 7, 500)):
        files[name] = tmp_path / f"{name}.parquet"
        files[name].write_bytes(_parquet(pd.DataFrame(ChurnStream(seed=seed).batch(rows)).drop(columns=["churned"])))
    async with registered(isolated, model) as registry:
        config = settings(isolated, registry_url=registry, batch_chunk_rows=500)
        app, rt = create_app(config)
        trainer = spec(config)  # what the service's own retention pass prunes and collects
        assert trainer.artifacts is not None
        async with serve(app) as client, listening(app) as address:
            cli = ["--url", f"http://{address}", "--home", str(tmp_path), "--json"]
            env = {"DRIFTLOOP_TOKEN": client.headers["Authorization"].removeprefix("Bearer ")}
            kept = await _driftloop(["batch", "submit", "churn", "--file", str(files["small"]), "--wait", *cli], env)
            assert kept["status"] == "succeeded", kept["error"]
            job = await _driftloop(["batch", "submit", "churn", "--file", str(files["large"]), *cli], env)
            running = await wait_until(lambda: _progressed(client, job["id"], 2), timeout=120, message="2 chunks")

            # A job behind it (the only batch worker is busy) is cancelled while queued, twice: the same answer.
            parquet = {"content-type": "application/vnd.apache.parquet"}
            waiting = files["waiting"].read_bytes()
            queued = (await client.post("/v1/batch-jobs", params={"model": "churn"}, content=waiting,
                                        headers=parquet)).json()  # fmt: skip
            first = await client.delete(f"/v1/batch-jobs/{queued['id']}", params={"reason": "not needed"})
            assert first.status_code == 200, first.text
            again = await client.post(f"/v1/batch-jobs/{queued['id']}/cancel", params={"reason": "other"})
            assert again.status_code == 200, again.text
            for answer in (first.json(), again.json()):
                assert (answer["status"], answer["cancel_reason"], answer["attempts"], answer["started_at"]) == (
                    "cancelled", "cancelled by test-admin: not needed", 0, None)  # fmt: skip

            cancelled = await _driftloop(["batch", "cancel", job["id"], "--reason", "wrong file", *cli], env)
            assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "cancelled by test-admin: "
                                                                                      "wrong file")  # fmt: skip
            await wait_until(lambda: _dead(running["worker_pid"]), timeout=10, message="its worker stopped")
            stopped = (await client.get(f"/v1/batch-jobs/{job['id']}")).json()
            assert (stopped["status"], stopped["attempts"], stopped["output"]) == ("cancelled", 1, None)
            assert 2 <= stopped["chunks_done"] < stopped["chunks"] == 80
            listed = (await client.get("/v1/batch-jobs", params={"status": "cancelled"})).json()
            assert {j["id"] for j in listed} == {job["id"], queued["id"]}
            for job_id, status, says in (
                (kept["id"], 409, "already ended: it is succeeded"), (str(uuid.uuid4()), 404, "job_id: no batch job"),
                ("not-a-job", 422, "job_id"),
            ):  # fmt: skip
                for answer in (await client.post(f"/v1/batch-jobs/{job_id}/cancel"),
                               await client.delete(f"/v1/batch-jobs/{job_id}")):  # fmt: skip
                    assert answer.status_code == status, answer.text
                    assert set(answer.json()) >= {"error", "message"}
                    assert says in answer.json()["message"], answer.json()
            refused = await asyncio.to_thread(CliRunner().invoke, cli_app, ["batch", "cancel", kept["id"], *cli],
                                              env=env)  # fmt: skip
            assert refused.exit_code == 1
            assert "409" in refused.stderr
            assert "already ended: it is succeeded" in " ".join(refused.stderr.split())  # rich wraps lines
            assert (await client.get(f"/v1/batch-jobs/{queued['id']}")).json()["status"] == "cancelled"  # never run

            # The GC (a grace period later): a succeeded job's output and upload stay, its chunks go (the
            # output holds their rows); every file of the cancelled jobs goes.
            chunks: dict[str, set[str]] = {kept["id"]: set(), job["id"]: set()}
            for row in await rt.db.fetch("SELECT job_id, artifact FROM batch_chunks"):
                chunks[str(row["job_id"])].add(json.loads(row["artifact"])["uri"])
            trainer_store = ArtifactStore(isolated.artifacts_root, namespace=trainer_gc.NAMESPACE)
            _age(trainer_store)
            gone = await retention.collect_artifacts(trainer_store, trainer.artifacts, rt.db, RetentionSettings())
            collected = {f"{trainer_store.root}/{f.path}" for f in gone}
            uploads = {j["input"]["upload"]["uri"] for j in (job, queued)}
            assert chunks[kept["id"]] | chunks[job["id"]] | uploads <= collected
            assert _batch_files(trainer_store) == {kept["output"]["uri"], kept["input"]["upload"]["uri"]}

            # Finished jobs are pruned DRIFTLOOP_RETENTION_BATCH_JOBS_DAYS after they ended, and their files follow.
            short = RetentionSettings(batch_jobs_days=1e-9)
            assert await retention.prune(rt.db, trainer.retention, short) == {"batch_jobs": 3}
            await retention.collect_artifacts(trainer_store, trainer.artifacts, rt.db, short)
            assert _batch_files(trainer_store) == set()
            assert (await client.get(f"/v1/batch-jobs/{kept['id']}")).status_code == 404

    events = [parse_event(r.value) for r in await read_topic(
        isolated.kafka.bootstrap, isolated.kafka.topic(topics.BATCH_COMPLETED), expect=3)]  # fmt: skip
    ended = sorted((e.job_id, e.status, e.error) for e in events if isinstance(e, BatchCompleted))
    assert ended == sorted([
        (kept["id"], "succeeded", None),
        (job["id"], "cancelled", "cancelled by test-admin: wrong file"),
        (queued["id"], "cancelled", "cancelled by test-admin: not needed"),
    ])  # fmt: skip


def _batch_files(store: ArtifactStore) -> set[str]:
    """The URIs of the batch files in ``store``'s namespace."""
    return {f"{store.root}/{f.path}" for f in store.files() if f.suffix in (".predictions.parquet",
                                                                            ".batch-input.parquet")}  # fmt: skip


def _dead(pid: int) -> bool:
    """The process is gone (or a zombie: killed, not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
