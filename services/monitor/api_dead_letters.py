"""HTTP API of the dead letters: the latest messages of every dead-letter topic, with why they failed.

On the monitor because it already watches the plumbing (consumer lag) with Kafka credentials the
console never holds. Readable by a reader, as ingest's rejected rows with their reasons are (docs/security.md:
a reader reads everything). Read-only: no group is joined, nothing is committed or replayed here
(``driftloop dlq replay REF`` does that); bodies are never returned, only their size and a short preview.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Query
from pydantic import BaseModel, Field

from libs.common.auth import Role, require
from libs.common.errors import TransientError
from libs.common.http import errors
from libs.common.kafka.dead_letters import DeadLetterView, latest_dead_letters
from libs.common.settings import KafkaSettings


class KafkaUnavailable(TransientError):
    """The broker did not answer: the dead letters cannot be read now."""

    code = "kafka_unavailable"


class DeadLetter(BaseModel):
    ref: str = Field(description="topic:partition:offset, what `driftloop dlq replay` takes.",
                     examples=["labels.arrived.dlq:0:3"])  # fmt: skip
    source_topic: str | None = Field(description="The topic the message was consumed from.")
    group: str | None = Field(description="The consumer group that gave up on it.")
    error_type: str | None = Field(examples=["InvalidEvent"])
    reason: str | None = Field(description="The x-dlq-reason header: why it could not be processed.")
    failed_at: str | None = Field(description="When it was dead-lettered (ISO 8601).")
    attempts: str | None
    size: int = Field(description="Bytes of the message body (never returned whole).")
    preview: str = Field(description="The body's first characters, non-printable ones escaped.")


class DeadLetterTopic(BaseModel):
    topic: str
    messages: list[DeadLetter] = Field(description="Newest first, at most `per_topic`.")


class DeadLetters(BaseModel):
    read_at: str
    per_topic: int
    topics: list[DeadLetterTopic] = Field(description="Dead-letter topics holding messages (the others are left out).")


def mount(app: FastAPI, kafka: KafkaSettings) -> None:
    router = APIRouter(prefix="/v1", tags=["operations"])

    @router.get("/dead-letters", summary="The latest dead letters of every dead-letter topic, with their reasons",
                dependencies=[require(Role.READER)], responses=errors(503))  # fmt: skip
    async def dead_letters(
        per_topic: Annotated[int, Query(ge=1, le=50, description="Latest messages per topic.")] = 10,
    ) -> DeadLetters:
        try:
            found = await latest_dead_letters(kafka, per_topic)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise KafkaUnavailable(f"the dead-letter topics could not be read: {type(exc).__name__}") from exc
        return DeadLetters(
            read_at=datetime.now(UTC).isoformat(timespec="seconds"), per_topic=per_topic,
            topics=[DeadLetterTopic(topic=t, messages=[_letter(d) for d in letters])
                    for t, letters in sorted(found.items())],
        )  # fmt: skip

    app.include_router(router)


def _letter(d: DeadLetterView) -> DeadLetter:
    return DeadLetter(ref=d.ref, source_topic=d.source_topic, group=d.group, error_type=d.error_type,
                      reason=d.reason, failed_at=d.failed_at, attempts=d.attempts, size=d.size,
                      preview=d.preview)  # fmt: skip
