"""Publishing through a started broker."""

from __future__ import annotations

from collections.abc import Awaitable

from faststream.kafka import KafkaBroker

from libs.common import topics
from libs.common.events import Event


class BrokerPublisher:
    """Publishes through a started faststream broker (the outbox relay's sink).

    Topic names are given without the installation's prefix; it is added here.
    """

    def __init__(self, broker: KafkaBroker, topic_prefix: str = "") -> None:
        self.broker = broker
        self.topic_prefix = topic_prefix

    async def send(
        self, topic: str, payload: bytes, *, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]:
        return await self.broker.publish(payload, self.topic_prefix + topic, key=key, headers=headers, no_confirm=True)

    async def publish_event(self, event: Event, *, topic: str | None = None) -> None:
        """Publish one event and wait for the broker (for producers without a database)."""
        headers = {topics.HEADER_EVENT_TYPE: event.event_type, topics.HEADER_EVENT_ID: str(event.event_id)}
        target = self.topic_prefix + (topic or event.topic)
        await self.broker.publish(event.to_bytes(), target, key=event.key(), headers=headers)
