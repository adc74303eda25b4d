"""What a consumer hands a handler: the event and where its message came from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from libs.common.errors import DriftloopError
from libs.common.events import Event


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a message came from, for handlers that need it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Any) -> Delivery:
        """The delivery of an aiokafka ``ConsumerRecord`` (header values decoded as UTF-8)."""
        headers = {k: bytes(v).decode(errors="replace") for k, v in (record.headers or ())}
        return cls(record.topic, record.partition, record.offset, record.key, headers)


Handler = Callable[[Event, Delivery], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """What a consumer does with one topic: the handler and the events it accepts there."""

    handler: Handler
    accepts: tuple[type[Event], ...]


BatchHandler = Callable[[list[tuple[Event, Delivery]]], Awaitable[dict[int, DriftloopError] | None]]
"""Handles a batch; returns the positions of items it refuses for good (they are
dead-lettered with the error) while the rest of the batch stands."""
