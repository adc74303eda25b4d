"""Dataset versions as deltas: manifests stay short as history grows, compaction changes no version."""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa
import pytest

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import INGESTED_AT, DatasetManifest, read_batches, read_rows
from libs.common.events import ArtifactRef
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.conftest import Isolation, serve
from tests.helpers import wait_until
from tests.integration.test_ingest import SCHEMA, _row

pytestmark = pytest.mark.integration


def _manifest(store: ArtifactStore, shown: dict[str, Any]) -> tuple[DatasetManifest, ArtifactRef]:
    ref = ArtifactRef.model_validate(shown["manifest"])
    return DatasetManifest.model_validate_json(store.get(ref)), ref


async def test_versions_are_deltas_and_compaction_changes_no_version(isolated: Isolation) -> None:
    settings = isolated.settings(IngestSettings, compact_interval_s=0.2, compact_small_rows=1000, compact_min_run=4)
    app, runtime = create_app(settings)
    store = ArtifactStore(isolated.artifacts_root)
    submissions = 30
    async with serve(app) as client:
        await client.put("/v1/datasets/customers", json=SCHEMA)
        before: dict[int, pa.Table] = {}
        for n in range(1, submissions + 1):
            rows = [_row(age=18 + n, visits=i) for i in range(n)]  # version n adds n rows
            assert (await client.post("/v1/datasets/customers/records", json=rows)).json()["version"] == n
            manifest, _ = _manifest(store, (await client.get(f"/v1/datasets/customers/versions/{n}")).json())
            before[n] = read_batches(store, manifest.batches)

        async def compacted() -> bool:
            count = await runtime.db.fetchval("SELECT count(*) FROM segments WHERE dataset = 'customers'")
            return bool(count < 8)

        await wait_until(compacted, timeout=30, message="the compactor merged the small segments")
        # a version written after compaction lists few segments, and its parent is the previous version
        last = (await client.post("/v1/datasets/customers/records", json=[_row(age=99)])).json()
        shown = (await client.get(f"/v1/datasets/customers/versions/{last['version']}")).json()
        manifest, _ = _manifest(store, shown)
        assert len(manifest.batches) < 9, [(b.first_seq, b.seq) for b in manifest.batches]
        assert any(b.compacted for b in manifest.batches)
        assert manifest.total_rows == submissions * (submissions + 1) // 2 + 1
        previous = (await client.get(f"/v1/datasets/customers/versions/{last['version'] - 1}")).json()
        assert manifest.parent == ArtifactRef.model_validate(previous["manifest"])
        # every version reads the same rows as before compaction, and the new one is the old plus its batch
        for n, table in before.items():
            again, _ = _manifest(store, (await client.get(f"/v1/datasets/customers/versions/{n}")).json())
            assert read_batches(store, again.batches).equals(table), n
        everything = read_batches(store, manifest.batches)
        assert everything.slice(0, before[submissions].num_rows).equals(before[submissions])
        assert everything.column("age").to_pylist()[-1] == 99.0
        # reading from a moment inside a compacted segment gives exactly the rows accepted since
        stamps = everything.column(INGESTED_AT).to_pylist()
        moment = stamps[before[20].num_rows]  # the first row of version 21
        table, counts = read_rows(store, manifest.batches, since=moment)
        assert table.num_rows == everything.num_rows - before[20].num_rows
        assert sum(n for _, n in counts) == table.num_rows
        tail, _ = read_rows(store, manifest.batches, max_rows=50)
        assert tail.equals(everything.slice(everything.num_rows - 50))


@pytest.mark.parametrize(("max_deferred", "compacted"), [(6, True), (100, False)])
async def test_compaction_waits_for_a_quiet_moment_but_not_past_max_deferred_submissions(
    isolated: Isolation, max_deferred: int, compacted: bool
) -> None:
    """A burst of submissions is not slowed by merges beside it: the compactor waits for a pause
    (here 30 s, never reached), unless ``max_deferred`` submissions came in a row."""
    settings = isolated.settings(IngestSettings, compact_interval_s=0.2, compact_small_rows=1000, compact_min_run=4,
                                 compact_quiet_s=30.0, compact_max_deferred=max_deferred)  # fmt: skip
    app, runtime = create_app(settings)
    async with serve(app) as client:
        await client.put("/v1/datasets/customers", json=SCHEMA)
        for n in range(12):
            assert (await client.post("/v1/datasets/customers/records", json=[_row(age=20 + n)])).status_code == 200

        async def segments() -> int:
            return int(await runtime.db.fetchval("SELECT count(*) FROM segments WHERE dataset = 'customers'"))

        if compacted:
            await wait_until(lambda: _fewer(segments, 12), timeout=30, message="a merge after 6 deferred submissions")
        else:
            await asyncio.sleep(3.0)  # 15 compaction intervals: none ran, the burst has not paused for 30 s
            assert await segments() == 12


async def _fewer(count: Any, than: int) -> bool:
    return bool(await count() < than)
