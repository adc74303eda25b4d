"""``driftloop batch``: batch predictions on the trainer — submit, status, wait, cancel (each with ``--json``).

The token is the CLI's (``$DRIFTLOOP_TOKEN``, else the one ``driftloop up`` wrote); the trainer's
address is ``--url``, ``$DRIFTLOOP_TRAINER_URL``, else the one ``driftloop up`` started.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cli import service_http

app = typer.Typer(help="Batch predictions: run a model over a dataset version or a Parquet file.",
                  no_args_is_help=True)  # fmt: skip
console = Console(stderr=True)

HomeOption = Annotated[Path, typer.Option("--home", envvar="DRIFTLOOP_HOME", help="State directory.")]
UrlOption = Annotated[str | None, typer.Option("--url", envvar="DRIFTLOOP_TRAINER_URL", help="The trainer's URL.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
PARQUET = "application/vnd.apache.parquet"
ENDED = ("succeeded", "failed", "cancelled")


def _show(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(job))
        return
    source = job["input"]
    what = f"{source['dataset']} v{source['dataset_version']}" if source["kind"] == "dataset" else "uploaded file"
    console.print(f"batch job {job['id']}: {job['model']} v{job['version']} over {what}")
    console.print(f"  {job['status']}: {job['rows_done']:,}/{job['total_rows']:,} rows, "
                  f"chunk {job['chunks_done']}/{job['chunks']}, attempts {job['attempts']}")  # fmt: skip
    if job["output"]:
        console.print(f"  output: {job['output']['uri']} (sha256 {job['output']['sha256'][:12]}…)")
    if job.get("cancel_reason"):
        console.print(f"  [yellow]{job['cancel_reason']}[/]")
    elif job["error"]:
        console.print(f"  [red]error:[/] {job['error']}")


def _wait(client: httpx.Client, job_id: str, timeout: float, as_json: bool) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = service_http.answer(client.get(f"/v1/batch-jobs/{job_id}"))
        if job["status"] in ENDED:
            return job
        if time.monotonic() > deadline:
            _show(job, as_json)
            console.print(f"[yellow]still {job['status']} after {timeout:.0f}s[/]")
            raise typer.Exit(2)
        if not as_json:
            console.print(f"  {job['status']}: {job['progress']:.0%}", end="\r")
        time.sleep(0.5)


@app.command()
def submit(
    model: Annotated[str, typer.Argument(help="The model.")],
    dataset: Annotated[str | None, typer.Option(help="Predict every row of this dataset …")] = None,
    dataset_version: Annotated[int | None, typer.Option(help="… at this version (latest when unset).")] = None,
    file: Annotated[Path | None, typer.Option(help="Or predict the rows of this Parquet file.", exists=True)] = None,
    id_column: Annotated[str | None, typer.Option(help="With --file: the column copied to row_id.")] = None,
    version: Annotated[int | None, typer.Option(help="The version that predicts …")] = None,
    alias: Annotated[str | None, typer.Option(help="… or the alias (champion when neither is given).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a batch job; with --wait, follow it to its end (exit code 1 if it failed)."""
    if (dataset is None) == (file is None):
        console.print("[red]give --dataset or --file (one of them)[/]")
        raise typer.Exit(2)
    with service_http.client("trainer", home, url) as client:
        if file is not None:
            params = {k: v for k, v in {"model": model, "version": version, "alias": alias,
                                        "id_column": id_column}.items() if v is not None}  # fmt: skip
            response = client.post("/v1/batch-jobs", params=params, content=file.read_bytes(),
                                   headers={"content-type": PARQUET})  # fmt: skip
        else:
            body = {"model": model, "version": version, "alias": alias, "dataset": dataset,
                    "dataset_version": dataset_version}  # fmt: skip
            response = client.post("/v1/batch-jobs", json={k: v for k, v in body.items() if v is not None})
        job: dict[str, Any] = service_http.answer(response)
        if wait:
            job = _wait(client, job["id"], timeout, as_json)
    _show(job, as_json)
    if job["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="A job; the newest jobs when omitted.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's jobs (without JOB_ID).")] = None,
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """A batch job's progress and output, or the newest jobs."""
    with service_http.client("trainer", home, url) as client:
        if job_id is not None:
            _show(service_http.answer(client.get(f"/v1/batch-jobs/{job_id}")), as_json)
            return
        listed = client.get("/v1/batch-jobs", params={"model": model} if model else {})
        jobs: list[dict[str, Any]] = service_http.answer(listed)
    if as_json:
        print(json.dumps(jobs))
        return
    table = Table("id", "model", "version", "status", "rows", "progress", "created", title="batch jobs")
    for job in jobs:
        table.add_row(job["id"], job["model"], str(job["version"]), job["status"], f"{job['total_rows']:,}",
                      f"{job['progress']:.0%}", job["created_at"][:19])  # fmt: skip
    console.print(table)


@app.command("wait")
def wait_for(
    job_id: Annotated[str, typer.Argument(help="The job.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most (exit code 2 after).")] = 3600.0,
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Wait until a batch job ends; exit code 1 if it failed."""
    with service_http.client("trainer", home, url) as client:
        job = _wait(client, job_id, timeout, as_json)
    _show(job, as_json)
    if job["status"] in ("failed", "cancelled"):
        raise typer.Exit(1)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job.")],
    reason: Annotated[str | None, typer.Option(help="Why; kept with the job.")] = None,
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued or running batch job (its worker stops at once). Cancelling a cancelled job again
    shows it as it is; exit code 1 if the job had already succeeded or failed (409) or does not exist (404)."""
    with service_http.client("trainer", home, url) as client:
        params = {"reason": reason} if reason else {}
        _show(service_http.answer(client.post(f"/v1/batch-jobs/{job_id}/cancel", params=params)), as_json)
