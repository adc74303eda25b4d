"""records.submitted: records pushed by upstream systems, stored in micro-batches.

An event's rows are JSON records or an Arrow IPC stream (see
services/ingest/domain/submitted.py); one dataset's events of a micro-batch
become one submission, whatever mix of the two they are, unless their rows
exceed one submission's cap (``micro_batch_submission_rows`` / ``_bytes``, by
default what one HTTP request may hold): then each run of events under the cap
is its own submission, in event order. The events are read one run at a time
and each run is stored before the next is read, so memory holds about one run
and one event, not the micro-batch (thousands of events, each up to the
per-event limits once its compressed buffers are expanded). The micro-batch's
messages themselves are bounded as received (``micro_batch_message_bytes``).

Each submission is its own transaction, holding ``outbox.first_delivery`` of each
of its events, so an event's rows are stored exactly once: the Kafka offsets
are committed only once the whole micro-batch is handled (at least once), and
when a later run fails, the micro-batch is retried (then split, see
:class:`MicroBatchConsumer`) and the events of runs already committed are
skipped as delivered. One transaction for the whole micro-batch would be as
correct, but it would hold the dataset's row lock across every run (HTTP
submissions to the dataset wait that long), throw away every run stored so far
when one fails, and leave behind the Parquet files of the runs it rolled back
(a submission deletes its files only when its own block fails).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import asyncpg

from libs.common import outbox, topics
from libs.common.errors import DriftloopError, NotFound
from libs.common.events import RecordsSubmitted
from libs.common.jsonbody import off_loop
from libs.common.kafka import Delivery, MicroBatchConsumer
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from services.ingest.adapters import repository
from services.ingest.adapters.compaction import Submissions
from services.ingest.domain.submitted import Cap, Part, Run, combine, runs, size
from services.ingest.settings import IngestSettings

CONSUMER = "ingest.records-submitted"
#: The principal of records.submitted events that do not name their sender.
UPSTREAM = "kafka:records.submitted"


def consumer(
    rt: Runtime, settings: IngestSettings, stored: Submissions | None = None
) -> MicroBatchConsumer[RecordsSubmitted]:
    async def handle(items: list[tuple[RecordsSubmitted, Delivery]]) -> dict[int, DriftloopError]:
        """Validate and store the buffered records: per dataset, a dataset version per run of events under the cap.

        Events for a dataset that is not declared, and Arrow events that cannot
        be read or do not match the schema, are refused (dead-lettered) without
        holding back the others.
        """
        by_dataset: dict[str, list[tuple[int, RecordsSubmitted]]] = defaultdict(list)
        for position, (event, _) in enumerate(items):
            by_dataset[event.dataset].append((position, event))
        refused: dict[int, DriftloopError] = {}
        async with rt.db.acquire() as conn:
            for dataset, entries in by_dataset.items():
                try:
                    schema = await repository.get_schema(conn, dataset)
                except NotFound as exc:
                    refused.update((position, exc) for position, _ in entries)
                    continue
                await _store_runs(rt, conn, settings, dataset, schema, entries, refused, stored)
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
        max_bytes=settings.micro_batch_message_bytes,
    )


async def _store_runs(
    rt: Runtime, conn: asyncpg.Connection, settings: IngestSettings, dataset: str, schema: DatasetSchema,
    entries: list[tuple[int, RecordsSubmitted]], refused: dict[int, DriftloopError], stored: Submissions | None,
) -> None:  # fmt: skip
    """Store one dataset's events, one submission per run under the settings' cap, each run read only once
    the one before is stored; the positions of events refused go to ``refused``."""
    events = [event for _, event in entries]
    cap = Cap(settings.micro_batch_submission_rows or settings.max_rows_per_request,
              settings.micro_batch_submission_bytes or settings.max_decoded_bytes)  # fmt: skip
    read = runs(schema, events, max_decoded=settings.max_decoded_bytes, max_rows=settings.max_rows_per_request,
                cap=cap)  # fmt: skip
    arrow = sum(len(e.arrow) for e in events if e.arrow is not None)  # none: nothing to decode, no thread
    while (run := await off_loop(arrow, _next, read)) is not None:
        refused.update((entries[index][0], exc) for index, exc in run.refused)
        if await _store(rt, conn, dataset, schema, [(events[i], part) for i, part in run.parts]) and stored:
            stored.set()
        del run  # before the next run is read: one run in memory at a time


def _next(read: Iterator[Run]) -> Run | None:
    return next(read, None)


async def _store(
    rt: Runtime, conn: asyncpg.Connection, dataset: str, schema: DatasetSchema,
    read: list[tuple[RecordsSubmitted, Part]],
) -> bool:  # fmt: skip
    """Store one run's events as one submission, in its own transaction; False if every one of them
    had been delivered before (nothing is stored).

    The run's Arrow streams were read and checked before, so a refused event is never recorded as
    delivered (a replay from the dead-letter topic is then processed, not skipped).
    """
    async with conn.transaction():
        parts: list[Part] = []
        principals: set[str] = set()
        first = None
        for event, part in read:
            if await outbox.first_delivery(conn, CONSUMER, event.event_id):
                parts.append(part)
                principals.add(event.principal or UPSTREAM)
                first = first or event
        if first is None:
            return False
        result = await off_loop(sum(map(size, parts)), combine, schema, parts)
        # Only the upstream system's own Kafka user may write this topic (ACLs): its rows are trusted.
        async with repository.discard_on_error(rt.store) as written:
            await repository.store_submission(
                conn, rt.store, dataset=dataset, result=result, source="kafka", correlation_id=first.correlation_id,
                principal=",".join(sorted(principals)), trusted=True, written=written,
            )  # fmt: skip
    return True
