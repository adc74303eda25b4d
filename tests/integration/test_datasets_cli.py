"""``driftloop datasets`` against the real ingest service over HTTP: declare, post a Parquet file in
several requests with invalid rows, post it again with nothing stored twice, read rejections;
a strict post stopped by one chunk; a rate-limited post that waits out its 429s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from cli.main import app as cli_app
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.conftest import Isolation, serve
from tests.integration.test_ingest import SCHEMA
from tests.integration.test_serving_runtime import listening

pytestmark = pytest.mark.integration

ROWS = 5_000
TOO_YOUNG = {i for i in range(ROWS) if i % 100 == 7}
GOLD = 4_321


def _rows(rows: int = ROWS, bad: bool = True) -> pa.Table:
    """Customers; with ``bad``, 50 too young (rows 7, 107, …) and one on an unknown plan (4,321)."""
    young = TOO_YOUNG if bad else set()
    return pa.table({
        "age": pa.array([12.0 if i in young else 18.0 + i % 80 for i in range(rows)]),
        "plan": pa.array(["gold" if bad and i == GOLD else ("basic" if i % 3 else "pro") for i in range(rows)]),
        "visits": pa.array([None if i % 9 == 0 else i % 40 for i in range(rows)], pa.int32()),
        "churned": pa.array(["yes" if i % 4 == 0 else "no" for i in range(rows)]),
    })  # fmt: skip


@asynccontextmanager
async def _ingest(isolated: Isolation, tmp_path: Path, **settings: Any) -> AsyncIterator[list[str]]:
    """Ingest served on a real port; the CLI options that reach it (its URL, an empty home)."""
    app, _ = create_app(isolated.settings(IngestSettings, **settings))
    async with serve(app) as client, listening(app) as address:
        token = client.headers["Authorization"].removeprefix("Bearer ")
        yield [token, "--url", f"http://{address}", "--home", str(tmp_path / "home")]


async def _run(args: list[str], connection: list[str], stdin: str | None = None) -> Result:
    """``driftloop datasets …`` in a thread (ingest answers on this event loop)."""
    token, *options = connection
    env = {"DRIFTLOOP_TOKEN": token}
    return await asyncio.to_thread(lambda: CliRunner().invoke(cli_app, ["datasets", *args, *options], stdin, env))


def _said(run: Result) -> str:
    """What a command wrote on stderr, its lines joined (rich wraps them at the terminal's width)."""
    return " ".join(run.stderr.split())


async def _json(args: list[str], connection: list[str], stdin: str | None = None, exit_code: int = 0) -> Any:
    run = await _run([*args, "--json"], connection, stdin)
    assert run.exit_code == exit_code, run.output
    return json.loads(run.stdout)


async def test_post_a_parquet_file_in_requests_then_again_and_read_its_rejections(
    isolated: Isolation, tmp_path: Path
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    data = tmp_path / "customers.parquet"
    pq.write_table(_rows(), data, row_group_size=700)  # row groups that do not line up with requests
    async with _ingest(isolated, tmp_path) as ingest:
        declared = await _json(["declare", "customers", str(tmp_path / "schema.json")], ingest)
        assert (declared["dataset"], declared["created"]) == ("customers", True)
        again = await _json(["declare", "customers", "-"], ingest, stdin=json.dumps(SCHEMA))
        assert again["created"] is False

        post = ["post", "customers", str(data), "--rows-per-request", "1000"]
        first = await _json(post, ingest)
        bad = sorted([*TOO_YOUNG, GOLD])
        assert (first["requests"], first["rows"], first["accepted"], first["rejected"]) == (5, ROWS, ROWS - 51, 51)
        assert first["versions"] == [1, 2, 3, 4, 5]
        assert first["replayed"] == {"requests": 0, "accepted": 0, "rejected": 0}
        assert [r["row"] for r in first["rejections"]] == bad  # numbered as in the file
        assert next(r for r in first["rejections"] if r["row"] == GOLD)["field"] == "plan"
        assert first["error"] is None
        assert first["rows_per_s"] > 0

        # The same post again (as after a failure): every request is answered from the first time.
        second = await _json(post, ingest)
        assert (second["requests"], second["accepted"], second["rejected"], second["versions"]) == (5, 0, 0, [])
        assert second["replayed"] == {"requests": 5, "accepted": ROWS - 51, "rejected": 51}
        shown = await _json(["show", "customers"], ingest)
        assert (shown["version"], shown["total_rows"]) == (5, ROWS - 51)
        assert shown["records"] == {"received": ROWS, "accepted": ROWS - 51, "rejected": 51}

        # Cut differently, the same file is refused at its first request, not stored twice.
        other = await _json([*post[:3], "--rows-per-request", "2000"], ingest, exit_code=1)
        assert other["requests"] == 0
        assert other["error"]["message"].startswith("chunk 0 (file rows 0-1,999) refused: 409 ")
        assert "--key" in other["error"]["hint"]
        assert (await _json(["show", "customers"], ingest))["total_rows"] == ROWS - 51

        listed = await _json(["list"], ingest)
        assert {"dataset": "customers", "version": 5, "total_rows": ROWS - 51} in listed
        version = await _json(["version", "customers", "3"], ingest)
        assert (version["batch_rows"], version["total_rows"]) == (1000 - 10, 3 * 990)

        rejected = await _json(["rejections", "customers", "--limit", "60"], ingest)  # one page, then an empty one
        assert rejected["total"] == 51
        assert len(rejected["rejections"]) == 51
        ids = [r["id"] for r in rejected["rejections"]]
        assert ids == sorted(ids, reverse=True)  # newest first
        newest = rejected["rejections"][0]  # the last request's last rejection: file row 4,907
        assert (newest["row"], newest["field"], newest["record"]["age"]) == (907, "age", 12.0)
        assert newest["reason"] == "age: 12.0 is below the minimum 18.0"
        assert len((await _json(["rejections", "customers", "--limit", "3"], ingest))["rejections"]) == 3

        # The tables for people (their cells wrap with the terminal's width: only titles and short cells checked).
        table = await _run(["rejections", "customers", "--limit", "2"], ingest)
        assert table.exit_code == 0
        assert "customers: 2 of 51 rejected rows, newest first" in _said(table)
        assert "│ 907 │" in table.stderr
        human = await _run(["show", "customers"], ingest)
        assert "version 5, 4,949 rows" in _said(human)
        assert "│ plan " in human.stderr


async def test_a_strict_post_stops_at_the_request_with_a_rejected_row(isolated: Isolation, tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    data = tmp_path / "customers.csv"
    rows = _rows(300, bad=False).to_pylist()
    rows[250]["age"] = 150.0
    pcsv.write_csv(pa.Table.from_pylist(rows), data)
    async with _ingest(isolated, tmp_path) as ingest:
        await _json(["declare", "customers", str(tmp_path / "schema.json")], ingest)
        run = await _run(["post", "customers", str(data), "--mode", "strict", "--rows-per-request", "100"], ingest)
        assert run.exit_code == 1
        assert ("chunk 2 (file rows 200-299) refused: 422 row 50: age: 150.0 is above the maximum 100.0 "
                "(row 50 of the chunk is the file's row 250)") in _said(run)  # fmt: skip
        assert (await _json(["show", "customers"], ingest))["total_rows"] == 200  # the chunks before it

        missing = await _run(["post", "nobody", str(data)], ingest)
        assert missing.exit_code == 1
        assert "404 dataset 'nobody' is not declared" in _said(missing)
        assert "driftloop datasets declare" in _said(missing)
        unknown = await _run(["show", "nobody"], ingest)
        assert unknown.exit_code == 1
        assert _said(unknown).startswith("404 dataset 'nobody' is not declared")


async def test_a_rate_limited_post_waits_out_its_429s_and_stores_every_row_once(
    isolated: Isolation, tmp_path: Path
) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    data = tmp_path / "customers.ndjson"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(4_000, bad=False).to_pylist()))
    async with _ingest(isolated, tmp_path, records_rate_per_s=2_000.0, records_burst=2_000.0) as ingest:
        await _json(["declare", "customers", str(tmp_path / "schema.json")], ingest)
        posted = await _json(["post", "customers", str(data), "--rows-per-request", "1000"], ingest)
        assert (posted["requests"], posted["accepted"], posted["versions"]) == (4, 4_000, [1, 2, 3, 4])
        assert posted["throttled_s"] >= 1.0
        shown = await _json(["show", "customers"], ingest)
        assert shown["records"] == {"received": 4_000, "accepted": 4_000, "rejected": 0}
