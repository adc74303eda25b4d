"""``driftloop datasets``: ingest's HTTP API from the command line — declare a schema, post a file of
any size, and read datasets, versions and rejected rows (each with ``--json``).

The token is the CLI's (``$DRIFTLOOP_TOKEN``, else the one ``driftloop up`` wrote); ingest's
address is ``--url``, ``$DRIFTLOOP_INGEST_URL``, else the one ``driftloop up`` started. A refusal
is ingest's own message on stderr, and the exit code is 1.
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli import service_http, upload
from cli.posting import Summary, post_file
from libs.common.arrow_records import DEFAULT_MAX_ROWS

app = typer.Typer(help="Datasets on ingest: declare a schema, post Parquet/Arrow/CSV/JSON files, read versions "
                  "and rejected rows.", no_args_is_help=True)  # fmt: skip
console = Console(stderr=True)

HomeOption = Annotated[Path, typer.Option("--home", envvar="DRIFTLOOP_HOME", help="State directory.")]
UrlOption = Annotated[str | None, typer.Option("--url", envvar="DRIFTLOOP_INGEST_URL", help="Ingest's URL.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(help="The dataset.")]


class Mode(StrEnum):
    partial = "partial"
    strict = "strict"


class Format(StrEnum):
    parquet = "parquet"
    arrow = "arrow"
    csv = "csv"
    json = "json"
    ndjson = "ndjson"


FileArgument = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Parquet, Arrow, CSV, JSON or NDJSON.")]
ModeOption = Annotated[
    Mode,
    typer.Option(
        help="partial: store valid rows, keep the rest as rejections; strict: a "
        "request with any rejected row stores nothing, and the post stops."
    ),
]
FormatOption = Annotated[Format | None, typer.Option("--format", help="The file's format (default: by its suffix).")]
RowsOption = Annotated[
    int, typer.Option(min=1, help="Rows per request at most (ingest's max_rows_per_request is the ceiling).")
]
BytesOption = Annotated[int, typer.Option(min=1024, help="Bytes per request body at most (ingest's max_body_bytes).")]
KeyOption = Annotated[
    str | None,
    typer.Option(
        help="Prefix of the requests' Idempotency-Keys (default: from the "
        "file's digest and the dataset; another one stores the file again)."
    ),
]


def _get(home: Path, url: str | None, path: str, **params: Any) -> Any:
    with service_http.client("ingest", home, url) as http:
        return service_http.call(http, "GET", path, params=params)


def _emit(doc: Any, as_json: bool) -> bool:
    """Print ``doc`` as JSON when asked; whether it was."""
    if as_json:
        print(json.dumps(doc))
    return as_json


@app.command()
def declare(
    dataset: Name,
    schema: Annotated[str, typer.Argument(help="A JSON file with the schema (features, target, task); - reads stdin.")],
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Declare a dataset's schema (or confirm it; replace it while the dataset holds no data). Needs admin."""
    try:
        body = sys.stdin.buffer.read() if schema == "-" else Path(schema).read_bytes()
    except OSError as exc:
        console.print(f"[red]cannot read the schema:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    with service_http.client("ingest", home, url) as http:
        declared = service_http.call(http, "PUT", f"/v1/datasets/{dataset}", content=body,
                                     headers={"content-type": "application/json"})  # fmt: skip
    if _emit(declared, as_json):
        return
    spec = declared["schema"]
    what = "declared" if declared["created"] else "already declared: confirmed (or replaced, as it held no data)"
    console.print(f"{dataset}: {what}; {len(spec['features'])} features, target {spec['target']['name']} "
                  f"({spec['task']})")  # fmt: skip


@app.command("list")
def list_datasets(home: HomeOption = Path(".driftloop"), url: UrlOption = None, as_json: JsonOption = False) -> None:
    """The declared datasets with their latest version and rows."""
    listed = _get(home, url, "/v1/datasets")
    if _emit(listed, as_json):
        return
    table = Table("dataset", "version", "rows", title="datasets")
    for entry in listed:
        table.add_row(entry["dataset"], str(entry["version"]), f"{entry['total_rows']:,}")
    console.print(table)


@app.command()
def show(dataset: Name, home: HomeOption = Path(".driftloop"), url: UrlOption = None, as_json: JsonOption = False
         ) -> None:  # fmt: skip
    """A dataset's schema, latest version and the rows received, accepted and rejected so far."""
    summary = _get(home, url, f"/v1/datasets/{dataset}")
    if _emit(summary, as_json):
        return
    counts, spec = summary["records"], summary["schema"]
    title = (f"{dataset}: version {summary['version']}, {summary['total_rows']:,} rows ({counts['received']:,} "
             f"received, {counts['accepted']:,} accepted, {counts['rejected']:,} rejected); "
             f"{spec['task']}")  # fmt: skip
    table = Table("column", "role", "type", "nullable", "accepts", title=title)
    roles = [("feature", f) for f in spec["features"]] + [("attribute", f) for f in spec.get("attributes", [])]
    for role, column in [*roles, ("target", spec["target"])]:
        nullable = "yes" if column.get("nullable") else "no"
        table.add_row(column["name"], role, column["dtype"], nullable, _accepts(column))
    if spec.get("key"):
        table.add_row(spec["key"], "key", "", "no", "each value once")
    console.print(table)


def _accepts(column: dict[str, Any]) -> str:
    """A column's bounds or categories, as a reader of the schema would say them."""
    if column.get("categories") is not None:
        listed = ", ".join(column["categories"])
        return listed if column.get("closed", True) else f"{listed} (open)"
    bounds = [f">= {column['min']:g}" if column.get("min") is not None else "",
              f"<= {column['max']:g}" if column.get("max") is not None else ""]  # fmt: skip
    return " and ".join(b for b in bounds if b)


@app.command()
def version(
    dataset: Name,
    number: Annotated[int, typer.Argument(help="The version.", min=0)],
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """One dataset version: the rows it added, the dataset's rows up to it, and its manifest."""
    found = _get(home, url, f"/v1/datasets/{dataset}/versions/{number}")
    if _emit(found, as_json):
        return
    console.print(f"{dataset} v{found['version']}: {found['batch_rows']:,} rows added, {found['total_rows']:,} "
                  f"in all, stored {found['created_at']}")  # fmt: skip
    manifest = found["manifest"]
    console.print(f"  manifest {manifest['uri']} ({manifest['size']:,} bytes, sha256 {manifest['sha256'][:12]}…)")


@app.command()
def rejections(
    dataset: Name,
    limit: Annotated[int, typer.Option(min=1, help="Rejected rows to show at most (newest first).")] = 20,
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rejected rows, newest first: the row in its submission, the field, the reason and the record."""
    rows: list[dict[str, Any]] = []
    before: int | None = None
    with service_http.client("ingest", home, url) as http:
        while len(rows) < limit:
            params: dict[str, Any] = {"limit": min(1000, limit - len(rows))}
            if before is not None:
                params["before_id"] = before
            page = service_http.call(http, "GET", f"/v1/datasets/{dataset}/rejections", params=params)
            rows += page["rejections"]
            if not page["rejections"]:
                break
            before = page["rejections"][-1]["id"]
    if _emit({"dataset": dataset, "total": page["total"], "rejections": rows}, as_json):
        return
    table = Table("id", "row", "field", "reason", "record", "at",
                  title=f"{dataset}: {len(rows):,} of {page['total']:,} rejected rows, newest first")  # fmt: skip
    for r in rows:
        record = json.dumps(r["record"], ensure_ascii=False)
        table.add_row(str(r["id"]), str(r["row"]), r["field"] or "", escape(r["reason"]),
                      escape(record if len(record) <= 80 else record[:79] + "…"), r["at"][:19])  # fmt: skip
    console.print(table)


@app.command()
def post(
    dataset: Name,
    file: FileArgument,
    mode: ModeOption = Mode.partial,
    fmt: FormatOption = None,
    rows_per_request: RowsOption = DEFAULT_MAX_ROWS,
    max_bytes: BytesOption = upload.DEFAULT_MAX_BYTES,
    key: KeyOption = None,
    home: HomeOption = Path(".driftloop"),
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Post a file's rows to a dataset, in as many requests as ingest's limits need.

    Parquet and Arrow files are read in batches and sent as Arrow IPC streams (zstd); CSV and NDJSON go as they are.

    Every request has an Idempotency-Key from the file's digest: posting the file again stores no row twice.

    A 429 is waited out (Retry-After); a refused request stops the post and says which rows it held.
    """
    try:
        found = upload.detect(file, fmt.value if fmt else None)
    except upload.Unreadable as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from exc
    if key is not None and not re.fullmatch(r"[\x21-\x7e]{1,180}", key):  # what an Idempotency-Key may hold
        raise typer.BadParameter("1 to 180 visible ASCII characters, no spaces", param_hint="--key")
    with service_http.client("ingest", home, url, timeout=300) as http:
        summary = post_file(http, dataset, file, found, mode=mode.value, max_rows=rows_per_request,
                            max_bytes=max_bytes, key=key, progress=not as_json and console.is_terminal)  # fmt: skip
    _report(summary, as_json)
    if summary.error:
        raise typer.Exit(1)


def _report(summary: Summary, as_json: bool) -> None:
    if _emit(summary.to_dict(), as_json):
        return
    if summary.error:
        console.print(f"[red]{escape(summary.error['message'])}[/]")
        if hint := summary.error.get("hint"):
            console.print(escape(hint))
    table = Table("", "", title=f"{summary.file} → {summary.dataset}", show_header=False)
    for name, value in summary.lines():
        table.add_row(name, value)
    console.print(table)
    listed = summary.rejections[:10]
    if listed:
        shown = Table("file row", "field", "reason", title="rejected rows (first of them)")
        for r in listed:
            shown.add_row(f"{r['row']:,}", r["field"] or "", escape(r["reason"]))
        console.print(shown)
    if summary.rejected + summary.replayed["rejected"] > len(listed):
        console.print(f"all rejected rows with their records: driftloop datasets rejections {summary.dataset} "
                      "--limit N")  # fmt: skip
