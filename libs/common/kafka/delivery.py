"""What a consumer hands a handler: the event and where its message came from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

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


E = TypeVar("E", bound=Event)

EventHandler = Callable[[E, Delivery], Awaitable[None]]
"""Handles one event of type ``E`` (``EventHandler[DriftDetected]``): it receives only that type."""

Handler = EventHandler[Event]
"""A handler of any event (what a consumer holds once routes are built)."""


class Route:
    """What a consumer does with one topic: the handler and the events it accepts there.

    The consumer parses a message into one of ``accepts`` or dead-letters it, so a
    handler receives exactly the type it declares: it needs no ``isinstance`` check
    (and no ``assert``, which ``python -O`` removes). mypy checks here that the
    handler takes every type the route accepts.
    """

    __slots__ = ("accepts", "handler")

    def __init__(self, handler: EventHandler[E], accepts: tuple[type[E], ...]) -> None:
        if not accepts:
            raise ValueError("a route accepts at least one event type")
        # The handler only ever sees the types in ``accepts`` (parse_event checks it).
        self.handler = cast(Handler, handler)
        self.accepts: tuple[type[Event], ...] = accepts


BatchHandler = Callable[[list[tuple[E, Delivery]]], Awaitable[dict[int, DriftloopError] | None]]
"""Handles a batch of events of type ``E`` (``BatchHandler[RecordsSubmitted]``); returns the positions of
items it refuses for good (they are dead-lettered with the error) while the rest of the batch stands."""
