"""records.submitted: records pushed by upstream systems, stored in micro-batches.

An event's rows are JSON records or an Arrow IPC stream (see
services/ingest/domain/submitted.py); one dataset's events of a micro-batch
become one submission, whatever mix of the two they are.
"""

from __future__ import annotations

from collections import defaultdict

import asyncpg
import pyarrow as pa

from libs.common import outbox, topics
from libs.common.errors import DriftloopError, NotFound
from libs.common.events import RecordsSubmitted
from libs.common.jsonbody import off_loop
from libs.common.kafka import Delivery, MicroBatchConsumer
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from services.ingest.adapters import repository
from services.ingest.adapters.compaction import Submissions
from services.ingest.domain.submitted import Part, combine, read_arrow
from services.ingest.settings import IngestSettings

CONSUMER = "ingest.records-submitted"
#: The principal of records.submitted events that do not name their sender.
UPSTREAM = "kafka:records.submitted"
#: Bytes a JSON record is counted as when deciding whether validation leaves the event loop.
_JSON_RECORD_BYTES = 256


def consumer(
    rt: Runtime, settings: IngestSettings, stored: Submissions | None = None
) -> MicroBatchConsumer[RecordsSubmitted]:
    async def handle(items: list[tuple[RecordsSubmitted, Delivery]]) -> dict[int, DriftloopError]:
        """Validate and store the buffered records, one dataset version per dataset.

        Events for a dataset that is not declared, and Arrow events that cannot
        be read or do not match the schema, are refused (dead-lettered) without
        holding back the others.
        """
        by_dataset: dict[str, list[tuple[int, RecordsSubmitted]]] = defaultdict(list)
        for position, (event, _) in enumerate(items):
            by_dataset[event.dataset].append((position, event))
        refused: dict[int, DriftloopError] = {}
        async with rt.db.acquire() as conn, conn.transaction():
            for dataset, entries in by_dataset.items():
                try:
                    schema = await repository.get_schema(conn, dataset)
                except NotFound as exc:
                    refused.update((position, exc) for position, _ in entries)
                    continue
                await _store(rt, conn, settings, dataset, schema, entries, refused)
        if stored is not None and by_dataset:
            stored.set()
        return refused

    return MicroBatchConsumer(
        topic=topics.RECORDS_SUBMITTED,
        group="ingest",
        handler=handle,
        accepts=(RecordsSubmitted,),
        settings=settings.kafka,
        telemetry=rt.telemetry,
        broker=rt.broker,
        max_records=settings.micro_batch_records,
        max_wait_s=settings.micro_batch_wait_s,
    )


async def _store(
    rt: Runtime, conn: asyncpg.Connection, settings: IngestSettings, dataset: str, schema: DatasetSchema,
    entries: list[tuple[int, RecordsSubmitted]], refused: dict[int, DriftloopError],
) -> None:  # fmt: skip
    """Store one dataset's events as one submission; the positions of events refused go to ``refused``.

    Arrow streams are read and checked first, so a refused event is never recorded as
    delivered (a replay from the dead-letter topic is then processed, not skipped).
    """
    arrow = [e.arrow for _, e in entries if e.arrow is not None]
    read = await off_loop(sum(map(len, arrow)), _read_all, schema, [e for _, e in entries], settings)
    parts: list[Part] = []
    principals: set[str] = set()
    first = None
    for (position, event), outcome in zip(entries, read, strict=True):
        if isinstance(outcome, DriftloopError):
            refused[position] = outcome
        elif await outbox.first_delivery(conn, CONSUMER, event.event_id):
            parts.append(outcome if outcome is not None else event.records or [])
            principals.add(event.principal or UPSTREAM)
            first = first or event
    if first is None:
        return
    size = sum(len(p) * _JSON_RECORD_BYTES if isinstance(p, list) else p.nbytes for p in parts)
    result = await off_loop(size, combine, schema, parts)
    # Only the upstream system's own Kafka user may write this topic (ACLs): its rows are trusted.
    async with repository.discard_on_error(rt.store) as written:
        await repository.store_submission(
            conn, rt.store, dataset=dataset, result=result, source="kafka", correlation_id=first.correlation_id,
            principal=",".join(sorted(principals)), trusted=True, written=written,
        )  # fmt: skip


def _read_all(
    schema: DatasetSchema, events: list[RecordsSubmitted], settings: IngestSettings
) -> list[pa.Table | DriftloopError | None]:
    """Each Arrow event's rows read and checked, or why it is refused; None for a JSON event."""
    outcomes: list[pa.Table | DriftloopError | None] = []
    passed: list[pa.Schema] = []
    for event in events:
        if event.arrow is None:
            outcomes.append(None)
            continue
        try:
            outcomes.append(read_arrow(schema, event.arrow, max_decoded=settings.max_decoded_bytes,
                                       max_rows=settings.max_rows_per_request, seen=passed))  # fmt: skip
        except DriftloopError as exc:
            outcomes.append(exc)
    return outcomes
