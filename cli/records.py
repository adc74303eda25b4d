"""``driftloop records send``: a file's rows onto ``records.submitted`` as Arrow IPC events.

For an upstream system (or an operator) that reaches Kafka but not ingest's HTTP API.
Parquet and Arrow files keep their column types; a CSV file's types are inferred by
pyarrow (a column of digits becomes integers: declare it numeric or integer, or send
Parquet). Ingest judges the rows as it judges an Arrow body on the records route.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console

from cli.supervisor import UpState
from libs.common import topics
from libs.common.arrow_records import DEFAULT_MAX_ROWS, DEFAULT_MESSAGE_BYTES, arrow_events
from libs.common.kafka_security import client_options
from libs.common.settings import KafkaSettings

app = typer.Typer(help="Records onto records.submitted, for upstream systems that use Kafka.", no_args_is_help=True)
console = Console(stderr=True)

HomeOption = Annotated[Path, typer.Option("--home", envvar="DRIFTLOOP_HOME", help="State directory.")]
Format = Literal["auto", "parquet", "arrow", "csv"]


def read_table(path: Path, fmt: Format = "auto") -> pa.Table:
    """The rows of a Parquet, Arrow (IPC file or stream) or CSV file; ``auto`` goes by the suffix."""
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = "parquet" if suffix in (".parquet", ".pq") else "csv" if suffix == ".csv" else "arrow"
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "csv":
        return pcsv.read_csv(path)
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:  # not the file format: the stream format
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()


async def send(
    table: pa.Table, *, dataset: str, kafka: KafkaSettings, producer: str = "driftloop-cli",
    principal: str | None = None, max_message_bytes: int = DEFAULT_MESSAGE_BYTES, max_rows: int = DEFAULT_MAX_ROWS,
) -> dict[str, Any]:  # fmt: skip
    """Publish ``table``'s rows as records.submitted events (keyed by dataset: one partition, in order)."""
    topic = kafka.topic(topics.RECORDS_SUBMITTED)
    client = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", max_request_size=max_message_bytes + 4096,
                              **client_options(kafka))  # fmt: skip
    await client.start()
    events = wire = 0
    try:
        pending = []
        for event in arrow_events(table, dataset=dataset, producer=producer, principal=principal,
                                  max_message_bytes=max_message_bytes, max_rows=max_rows):  # fmt: skip
            value = event.to_bytes()
            pending.append(await client.send(topic, value, key=event.key()))
            events, wire = events + 1, wire + len(value)
        await asyncio.gather(*pending)
    finally:
        await client.stop()
    return {"dataset": dataset, "topic": topic, "rows": table.num_rows, "events": events, "bytes": wire}


@app.command("send")
def send_command(
    dataset: Annotated[str, typer.Argument(help="Declared dataset the rows belong to.")],
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Parquet, Arrow or CSV file.")],
    fmt: Annotated[str, typer.Option("--format", help="auto (by suffix), parquet, arrow or csv.")] = "auto",
    principal: Annotated[str | None, typer.Option(help="The upstream account the rows are attributed to.")] = None,
    max_message_bytes: Annotated[int, typer.Option(help="Largest event (the broker's message.max.bytes).")] = (
        DEFAULT_MESSAGE_BYTES
    ),
    max_rows: Annotated[
        int, typer.Option(min=1, help="Most rows in one event (at most ingest's max rows per request).")
    ] = (DEFAULT_MAX_ROWS),
    home: HomeOption = Path(".driftloop"),
) -> None:
    """Send a file's rows to records.submitted as Arrow IPC events; ingest stores them in micro-batches.

    Rejected rows are kept with their reasons (GET /v1/datasets/DATASET/rejections); an event
    ingest cannot read goes to records.submitted.dlq (`driftloop dlq list`).
    """
    if fmt not in ("auto", "parquet", "arrow", "csv"):
        raise typer.BadParameter(f"unknown format {fmt!r}: use auto, parquet, arrow or csv", param_hint="--format")
    state = UpState.read(home)
    bootstrap = os.environ.get("DRIFTLOOP_KAFKA_BOOTSTRAP") or (state.kafka_bootstrap if state else None)
    if not bootstrap:
        console.print("[red]no Kafka to send to:[/] set DRIFTLOOP_KAFKA_BOOTSTRAP or start `driftloop up`")
        raise typer.Exit(2)
    try:
        table = read_table(path, fmt)  # type: ignore[arg-type]  # checked above
    except (pa.ArrowException, OSError) as exc:
        console.print(f"[red]{path} could not be read as {fmt}:[/] {exc}")
        raise typer.Exit(1) from exc
    kafka = KafkaSettings(bootstrap=bootstrap)
    try:
        summary = asyncio.run(send(table, dataset=dataset, kafka=kafka, principal=principal,
                                   max_message_bytes=max_message_bytes, max_rows=max_rows))  # fmt: skip
    except ValueError as exc:  # a row larger than a message
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    print(json.dumps(summary))
