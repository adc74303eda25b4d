"""records.submitted: records pushed by upstream systems, stored in micro-batches."""

from __future__ import annotations

from collections import defaultdict

from libs.common import outbox, topics
from libs.common.errors import DriftloopError, NotFound
from libs.common.events import RecordsSubmitted
from libs.common.jsonbody import off_loop
from libs.common.kafka import Delivery, MicroBatchConsumer
from libs.common.service import Runtime
from services.ingest.adapters import repository
from services.ingest.adapters.compaction import Submissions
from services.ingest.domain.validation import validate_records
from services.ingest.settings import IngestSettings

CONSUMER = "ingest.records-submitted"
#: The principal of records.submitted events that do not name their sender.
UPSTREAM = "kafka:records.submitted"


def consumer(
    rt: Runtime, settings: IngestSettings, stored: Submissions | None = None
) -> MicroBatchConsumer[RecordsSubmitted]:
    async def handle(items: list[tuple[RecordsSubmitted, Delivery]]) -> dict[int, DriftloopError]:
        """Validate and store the buffered records, one dataset version per dataset.

        Events for a dataset that is not declared are refused (dead-lettered)
        without holding back the others.
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
                fresh = [e for _, e in entries if await outbox.first_delivery(conn, CONSUMER, e.event_id)]
                if not fresh:
                    continue
                records = [r for e in fresh for r in e.records]
                result = await off_loop(len(records) * 256, validate_records, schema, list(records))
                # Only the upstream system's own Kafka user may write this topic (ACLs): its rows are trusted.
                principals = sorted({e.principal or UPSTREAM for e in fresh})
                async with repository.discard_on_error(rt.store) as written:
                    await repository.store_submission(
                        conn, rt.store, dataset=dataset, result=result, source="kafka",
                        correlation_id=fresh[0].correlation_id, principal=",".join(principals), trusted=True,
                        written=written,
                    )  # fmt: skip
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
