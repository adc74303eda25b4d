"""The artifact GC against real PostgreSQL and a real store: what no row names goes once it is old
enough, what a row names stays, and so do young files, other kinds and other services' files."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libs.common import retention
from libs.common.artifacts import ArtifactStore
from libs.common.datasets import DatasetManifest
from libs.common.db import COMMON_MIGRATIONS, connect_with_retry, load_migrations, migrate
from libs.common.events import ArtifactRef
from libs.common.retention import RetentionSettings
from services.ingest.adapters import gc as ingest_gc
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.trainer.adapters import gc as trainer_gc
from tests.conftest import Isolation, serve
from tests.helpers import wait_until
from tests.integration.test_ingest import SCHEMA, _row

pytestmark = pytest.mark.integration

TRAINER_MIGRATIONS = Path(__file__).parents[2] / "services" / "trainer" / "migrations"


def _age(store: ArtifactStore, seconds: float = 7200) -> None:
    """Every file of the store's namespace, written ``seconds`` ago."""
    base = Path(urlparse(store.root).path)
    then = time.time() - seconds
    for file in store.files():
        os.utime(base / file.path, (then, then))


def _paths(store: ArtifactStore) -> set[str]:
    return {f.path for f in store.files()}


def _orphan(store: ArtifactStore, suffix: str) -> str:
    """An artifact of ``store`` that no row names (a request that failed after writing it)."""
    ref = store.put(uuid.uuid4().bytes, suffix=suffix)
    return ref.uri.removeprefix(store.root + "/")


def _crashed_write(store: ArtifactStore, suffix: str) -> str:
    """A temporary file left by a process killed between writing and moving it in place."""
    path = f"{store.namespace}/sha256/00/{'0' * 64}{suffix}.tmp-{uuid.uuid4().hex}"
    target = Path(urlparse(store.root).path) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"half")
    return path


async def test_ingest_collects_orphans_and_superseded_batches_and_keeps_every_version_it_lists(
    isolated: Isolation,
) -> None:
    settings = isolated.settings(IngestSettings, compact_interval_s=0.2, compact_small_rows=1000, compact_min_run=4)
    app, rt = create_app(settings)
    store = rt.store
    assert store.namespace == "ingest"
    async with serve(app) as client:
        await client.put("/v1/datasets/customers", json=SCHEMA)
        for n in range(1, 9):
            answer = await client.post("/v1/datasets/customers/records", json=[_row(age=20 + n, visits=n)])
            assert answer.status_code == 200, answer.text

        async def compacted() -> bool:
            return bool(await rt.db.fetchval("SELECT count(*) FROM segments WHERE dataset = 'customers'") < 8)

        await wait_until(compacted, timeout=30, message="the compactor merged the small batches")
        last = (await client.post("/v1/datasets/customers/records", json=[_row(age=99)])).json()["version"]
        shown = (await client.get(f"/v1/datasets/customers/versions/{last}")).json()
    assert (
        DatasetManifest.model_validate_json(store.get(ArtifactRef.model_validate(shown["manifest"]))).total_rows == last
    )
    pool = await connect_with_retry(settings.database, settings.database_schema or "ingest")
    try:
        current = [
            ArtifactRef(uri=r["uri"], sha256=r["sha256"], size=r["size"])
            for r in await pool.fetch("SELECT uri, sha256, size FROM segments ORDER BY first_seq")
        ]
        segments = {ref.uri for ref in current}
        manifests = {r["manifest_uri"] for r in await pool.fetch("SELECT manifest_uri FROM versions")}
        batches = {r["batch_uri"] for r in await pool.fetch("SELECT batch_uri FROM versions")}
        replaced = {f"{store.root}/{f.path}" for f in store.files() if f.digest in await _replaced(pool)}
        superseded = (batches | replaced) - segments
        assert batches - segments  # compaction merged some batch files into a segment

        orphans = {_orphan(store, ".parquet"), _orphan(store, ".manifest.json"), _crashed_write(store, ".parquet")}
        other_kind = _orphan(store, ".card.md")  # not a kind ingest writes: never ingest's to collect
        elsewhere = _orphan(ArtifactStore(store.root, namespace="trainer"), ".parquet")
        _age(store)
        young = _orphan(store, ".parquet")  # may be a write whose row is not committed yet
        # versions younger than superseded_batches_days keep their batch files
        first = await retention.collect_artifacts(store, ingest_gc.ARTIFACTS, pool, RetentionSettings())
        # the orphans, and perhaps a merged file the stop interrupted before its swap: no row names it
        assert orphans <= {f.path for f in first}
        assert not {f.digest for f in first} & await _named(pool)
        await pool.execute("UPDATE versions SET created_at = now() - interval '40 days'")
        await pool.execute("UPDATE superseded_segments SET superseded_at = now() - interval '40 days'")
        never = RetentionSettings(superseded_batches_days=None)
        assert await retention.collect_artifacts(store, ingest_gc.ARTIFACTS, pool, never) == []
        gone = await retention.collect_artifacts(store, ingest_gc.ARTIFACTS, pool, RetentionSettings())
    finally:
        await pool.close()

    assert {f"{store.root}/{f.path}" for f in gone} == superseded
    left = {f"{store.root}/{p}" for p in _paths(store)}
    assert segments | manifests <= left
    assert not superseded & left
    assert {young, other_kind} <= _paths(store)
    assert elsewhere in _paths(ArtifactStore(store.root, namespace="trainer"))
    # what the next version will list holds every row (a version as old as the replaced files it
    # lists can no longer be read from its own manifest: the documented trade of the setting)
    assert sum(pq.read_metadata(pa.BufferReader(store.get(ref))).num_rows for ref in current) == last


async def _named(pool: asyncpg.Pool) -> set[str]:
    """Every digest an ingest row names."""
    rows = await pool.fetch(
        "SELECT sha256 AS d FROM segments UNION SELECT batch_sha256 FROM versions "
        "UNION SELECT manifest_sha256 FROM versions UNION SELECT sha256 FROM superseded_segments"
    )
    return {r["d"] for r in rows}


async def _replaced(pool: asyncpg.Pool) -> set[str]:
    """Segments compaction replaced (batches, or compacted segments merged again)."""
    return {r["sha256"] for r in await pool.fetch("SELECT sha256 FROM superseded_segments")}


async def test_the_trainer_keeps_what_a_job_result_or_a_champion_names_and_collects_the_rest(
    pool: asyncpg.Pool, schema: str, tmp_path: Path
) -> None:
    await migrate(pool, schema, load_migrations(COMMON_MIGRATIONS, TRAINER_MIGRATIONS))
    store = ArtifactStore((tmp_path / "artifacts").as_uri(), namespace=trainer_gc.NAMESPACE)
    model, profile, holdout, onnx, champion = (
        store.put(uuid.uuid4().bytes, suffix=s)
        for s in (".skops", ".profile.json", ".holdout.parquet", ".onnx", ".skops")
    )
    result = {
        "artifact": model.model_dump(), "profile": profile.model_dump(), "holdout": holdout.model_dump(),
        "onnx": {"artifact": onnx.model_dump(), "parity": True},  # nested: recorded after the export
    }  # fmt: skip
    job = ("INSERT INTO jobs (id, model, dataset, dataset_version, manifest, trigger, reason, status, result) "
           "VALUES ($1, 'm', 'd', 1, '{}', 'request', 'test', $2, $3)")  # fmt: skip
    await pool.execute(job, uuid.uuid4(), "succeeded", json.dumps(result))
    await pool.execute(job, uuid.uuid4(), "failed", None)
    await pool.execute("INSERT INTO models (name, dataset, champion_artifact) VALUES ('m', 'd', $1)",
                       champion.model_dump_json())  # fmt: skip
    # what a failed or cancelled job wrote before it ended: no result names it
    failed = {_orphan(store, s) for s in (".skops", ".profile.json", ".holdout.parquet", ".onnx")}
    failed.add(_crashed_write(store, ".skops"))
    card = _orphan(store, ".card.md")  # another kind (model cards): not collected by this GC
    _age(store)
    in_flight = _orphan(store, ".skops")  # a job finishing now: its result is not recorded yet

    gone = await retention.collect_artifacts(store, trainer_gc.ARTIFACTS, pool, RetentionSettings())

    assert {f.path for f in gone} == failed
    named = {r.uri.removeprefix(store.root + "/") for r in (model, profile, holdout, onnx, champion)}
    assert _paths(store) == named | {card, in_flight}
    assert await retention.collect_artifacts(store, trainer_gc.ARTIFACTS, pool, RetentionSettings(
        artifacts_grace_s=None)) == []  # fmt: skip
