"""records.submitted benchmark: rows per second through the real ingest consumer, JSON records
against Arrow IPC payloads, the same rows either way.

1. Start an embedded PostgreSQL and broker and ``python -m services.ingest`` (bench/ingest.py's
   ``Service``: a real process with its default settings, except the micro-batch wait, see 3).
2. Per case, declare a fresh dataset (bench/ingest.py's 9-feature schema) and encode seeded rows
   (1 % invalid, each kept with its reason) as ``records.submitted`` events before the clock
   starts: JSON events of ``--event-rows`` rows; Arrow events of the same size (zstd buffers);
   and Arrow events cut only by the message size (``libs/common/arrow_records.py``, under 1 MB).
3. Also, in this process: the cost per row of parsing the envelope (``parse_event``: JSON and
   pydantic; for Arrow, base64 included) of each case's events, what the consumer pays before
   validation, and what base64 adds to the bytes on the wire.
4. Clock: from the first send until ``GET /v1/datasets/{name}`` counts every row received
   (polled every 20 ms). Producing raw bytes costs the clock little; the consumer decodes,
   validates and stores. ``DRIFTLOOP_INGEST_MICRO_BATCH_WAIT_S`` is 0.2 s (default 2 s) so the
   last micro-batch's wait does not dominate a few seconds of work; it is in the figure (``--wait-s``).
5. Memory: the ingest process's peak resident set (``VmHWM``) during the measured run, reset just
   before it (``/proc/PID/clear_refs``), so each case reports its own peak, warm-up excluded. And
   the ingest process's CPU time per row received (``/proc/PID/stat``; PostgreSQL's not included),
   which other load on a shared machine moves less than the wall clock.

    .venv/bin/python -m bench.records_submitted                  # about a minute
    .venv/bin/python -m bench.records_submitted --rows 100000 --json out.json
    .venv/bin/python -m bench.records_submitted --cases arrow-max --rows 2000000 --wait-s 2   # memory
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.credit import SCHEMA
from bench.ingest import Service, rows_table
from libs.common.arrow_records import arrow_events
from libs.common.events import RecordsSubmitted, parse_event

CASES = ("json", "arrow", "arrow-max")


def events(table: pa.Table, case: str, dataset: str, event_rows: int) -> list[bytes]:
    """``table``'s rows as serialised events of ``case``."""
    if case == "arrow-max":
        return [e.to_bytes() for e in arrow_events(table, dataset=dataset, producer="bench")]
    out: list[bytes] = []
    for start in range(0, table.num_rows, event_rows):
        piece = table.slice(start, event_rows)
        if case == "json":
            out.append(RecordsSubmitted(producer="bench", dataset=dataset, records=piece.to_pylist()).to_bytes())
        else:
            out.extend(e.to_bytes() for e in arrow_events(piece, dataset=dataset, producer="bench"))
    return out


async def _topic(bootstrap: str) -> str:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return str(next(t for t in await consumer.topics() if t.endswith("records.submitted")))
    finally:
        await consumer.stop()


async def _send(bootstrap: str, topic: str, messages: list[bytes], key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 << 20)
    await producer.start()
    try:
        sent = [await producer.send(topic, m, key=key) for m in messages]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def reset_peak(pid: int) -> None:
    """Start counting the process's peak resident set (VmHWM) from its current size (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The process's peak resident set since it started or since :func:`reset_peak` (``VmHWM``), or its
    current one (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):  # "VmHWM:   123456 kB"
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used (user and system, all its threads): less moved by other load on a
    shared machine than the wall clock."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def one_case(service: Service, client: httpx.Client, topic: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    dataset = f"{case}-{uuid.uuid4().hex[:6]}"
    client.put(f"{service.url}/v1/datasets/{dataset}", json=SCHEMA).raise_for_status()
    table = rows_table(args.rows, 11, args.rejected)
    messages = events(table, case, dataset, args.event_rows)
    parse_started = time.perf_counter()
    for message in messages:
        parse_event(message)
    parse_us = (time.perf_counter() - parse_started) / args.rows * 1e6
    assert service.process is not None
    reset_peak(service.process.pid)
    rss_before = rss_mib(service.process.pid, "VmRSS")
    cpu_before = cpu_s(service.process.pid)
    started = time.perf_counter()
    asyncio.run(_send(service.kafka.bootstrap, topic, messages, dataset.encode()))
    sent = time.perf_counter() - started
    deadline = started + 600
    while True:
        counts = client.get(f"{service.url}/v1/datasets/{dataset}").json()["records"]
        if counts["received"] >= args.rows or time.perf_counter() > deadline:
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    peak = rss_mib(service.process.pid)
    cpu = cpu_s(service.process.pid) - cpu_before
    versions = client.get(f"{service.url}/v1/datasets/{dataset}").json()["version"]
    return {
        "case": case, "rows": args.rows, "events": len(messages), "mib_on_the_wire": sum(map(len, messages)) / 2**20,
        "send_s": sent, "seconds": seconds, "rows_per_s": counts["received"] / seconds,
        "envelope_parse_us_per_row": parse_us, "received": counts["received"], "accepted": counts["accepted"],
        "rejected": counts["rejected"], "versions": versions, "rss_before_mib": rss_before,
        "ingest_cpu_us_per_row": cpu / counts["received"] * 1e6,
        "peak_rss_mib": peak,
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "python": platform.python_version()}
    os.environ["DRIFTLOOP_INGEST_MICRO_BATCH_WAIT_S"] = str(args.wait_s)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-records-submitted-") as tmp:
        service = Service(Path(tmp))
        service.start()
        try:
            topic = asyncio.run(_topic(service.kafka.bootstrap))
            with httpx.Client(headers=service.headers, timeout=60) as client:
                for case in args.cases:
                    one_case(service, client, topic, case, argparse.Namespace(**{**vars(args), "rows": 2000}))  # warm
                    result = one_case(service, client, topic, case, args)
                    results.append(result)
                    print(f"{case:10} {result['rows_per_s']:>9,.0f} rows/s  ({result['events']} events, envelope "
                          f"{result['envelope_parse_us_per_row']:.2f} µs/row, "
                          f"{result['mib_on_the_wire']:.1f} MiB, sent in {result['send_s']:.2f} s, "
                          f"{result['versions']} versions, {result['rejected']} rejected, "
                          f"ingest's CPU {result['ingest_cpu_us_per_row']:.2f} µs/row, "
                          f"RSS {result['rss_before_mib']:,.0f} MiB, peak {result['peak_rss_mib']:,.0f} MiB)",
                          flush=True)  # fmt: skip
        finally:
            service.stop()
    machine["load_average_after"] = os.getloadavg()
    return {"machine": machine, "event_rows": args.event_rows, "wait_s": args.wait_s, "results": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=lambda s: s.split(","), default=list(CASES))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--event-rows", type=int, default=1000, help="rows per JSON (and sized Arrow) event")
    parser.add_argument("--rejected", type=float, default=0.01)
    parser.add_argument("--wait-s", type=float, default=0.2, help="DRIFTLOOP_INGEST_MICRO_BATCH_WAIT_S")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"load average before {result['machine']['load_average_before']}, "
          f"after {result['machine']['load_average_after']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
