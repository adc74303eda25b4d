"""Transactional outbox and idempotent consumers: at-least-once delivery,
exactly-once effects.

A service never publishes an event directly after changing its database: a
crash between the two would lose the event or announce a change that never
committed. It calls :func:`add` inside the transaction that makes the change;
the :class:`OutboxRelay` publishes committed rows in order and marks them
sent. A crash after publishing but before marking means the row is published
again, so every consumer dedupes with :func:`first_delivery`, recorded in the
same transaction as its own effects; :func:`once` is that pattern in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import propagate

from libs.common import topics
from libs.common.events import Event
from libs.common.tasks import cancel_and_wait
from libs.common.telemetry import inject_context

log = logging.getLogger(__name__)


class RawPublisher(Protocol):
    """Sends bytes to a topic; returns an awaitable completing when the broker acked."""

    async def send(
        self, topic: str, payload: bytes, *, key: bytes | None, headers: dict[str, str]
    ) -> Awaitable[object]: ...


def notify_channel(schema: str) -> str:
    return f"driftloop_outbox_{schema}"


async def add(conn: asyncpg.Connection, event: Event, *, topic: str | None = None) -> None:
    """Queue ``event`` for publishing, inside the caller's open transaction.

    The current trace context is stored with the row, so the relay's publish
    continues the trace of the request that caused the event. ``pg_notify``
    inside the transaction wakes the relay on commit (and never on rollback).
    """
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.add must run inside the transaction that makes the change")
    headers = {
        **inject_context(),
        topics.HEADER_EVENT_TYPE: event.event_type,
        topics.HEADER_EVENT_ID: str(event.event_id),
    }
    # One statement (one round trip): the row, then the notification on the schema's channel.
    await conn.execute(
        "WITH queued AS (INSERT INTO outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb) RETURNING 1) "
        "SELECT pg_notify($5 || current_schema(), '') FROM queued",
        topic or event.topic,
        event.key(),
        event.to_bytes(),
        json.dumps(headers),
        notify_channel(""),
    )


async def first_delivery(conn: asyncpg.Connection, consumer: str, event_id: uuid.UUID) -> bool:
    """Record that ``consumer`` processed ``event_id``; False if it already had.

    Call it first in the transaction holding the consumer's effects: when it
    returns False, skip the effects; the transaction then commits nothing new.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("first_delivery must run inside the consumer's transaction")
    inserted = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return bool(inserted)


T = TypeVar("T")


class Delivered(Protocol):
    """What :func:`once` needs of an event: its id (an :class:`Event`, or a columnar read of one)."""

    @property
    def event_id(self) -> uuid.UUID: ...


async def once(
    pool: asyncpg.Pool, consumer: str, event: Delivered, effects: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T | None:
    """Apply ``consumer``'s ``effects`` of ``event`` exactly once: in one transaction
    that also records the delivery; a redelivered event runs nothing and gives None.

    The way to write an idempotent handler: the event's effects (SQL through the
    service's repository, events through :func:`add`) take the connection, and
    whatever they return comes back for the work after the commit; effects whose
    caller must tell a redelivery apart return something other than None.
    """
    async with pool.acquire() as conn, conn.transaction():
        if not await first_delivery(conn, consumer, event.event_id):
            return None
        return await effects(conn)


D = TypeVar("D", bound=Delivered)


async def once_each(
    pool: asyncpg.Pool,
    consumer: str,
    events: Sequence[D],
    effects: Callable[[asyncpg.Connection, list[D]], Awaitable[T]],
) -> T:
    """:func:`once` for a batch: one transaction records every delivery and applies ``effects`` to the
    events ``consumer`` sees for the first time (in order; an event twice in the batch counts once;
    an empty list when all are redeliveries). One statement records them all, so a batch costs the
    round trips of one event."""
    async with pool.acquire() as conn, conn.transaction():
        ids = [event.event_id for event in events]
        fresh = {
            r["event_id"]
            for r in await conn.fetch(
                "INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[]) "
                "ON CONFLICT DO NOTHING RETURNING event_id",
                consumer, ids,
            )
        }  # fmt: skip
        first = []
        for event in events:
            if event.event_id in fresh:
                fresh.discard(event.event_id)  # the same event again later in the batch is a redelivery
                first.append(event)
        return await effects(conn, first)


async def pending_count(pool: asyncpg.Pool) -> int:
    """Rows not yet published: the outbox backlog."""
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


DRAIN_S = 5.0
"""How long a stopping relay may spend publishing the rows already committed."""


class OutboxRelay:
    """Publishes committed outbox rows in id order and marks them sent.

    Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several replicas may
    relay one schema without publishing a row twice at once. A batch is sent
    without waiting per message, then awaited as a whole before it is marked.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: RawPublisher,
        *,
        schema: str,
        batch_size: int = 200,
        poll_interval_s: float = 1.0,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.schema = schema
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.on_published = on_published
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; return how many were published."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, topic, key, payload, headers FROM outbox WHERE sent_at IS NULL "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            acks = [await self._send(row) for row in rows]
            await asyncio.gather(*acks)
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        if self.on_published:
            self.on_published(len(rows))
        return len(rows)

    async def _send(self, row: asyncpg.Record) -> Awaitable[object]:
        headers: dict[str, str] = json.loads(row["headers"])
        # Publish inside the stored context: the producer span becomes a child
        # of the span that wrote the row, even though this runs later.
        token = otel_context.attach(propagate.extract(headers))
        try:
            return await self.publisher.send(row["topic"], bytes(row["payload"]), key=row["key"], headers=headers)
        finally:
            otel_context.detach(token)

    async def run(self) -> None:
        """Relay until cancelled: on NOTIFY, and every ``poll_interval_s`` as a fallback.

        A database outage never ends the relay: the listening connection is
        opened again once the database is back (polling goes on meanwhile)."""
        while True:
            try:
                await self._listen_and_relay()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay lost its listening connection, reconnecting", extra={"error": repr(exc)})
                await asyncio.sleep(self.poll_interval_s)

    async def _listen_and_relay(self) -> None:
        channel = notify_channel(self.schema)
        listener: asyncpg.Connection = await self.pool.acquire()
        try:  # from here on: a stop while the listener is being added must release it too
            await listener.add_listener(channel, self._on_notify)
            while not listener.is_closed():
                # Clear before relaying, never after: a NOTIFY that arrives while
                # a batch is in flight must trigger another pass, not be lost.
                self._wake.clear()
                await self._relay_pending("will retry")
                with contextlib.suppress(TimeoutError):  # not wait_for: see libs.common.tasks
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(channel, self._on_notify)
            await self.pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Ask for an immediate pass (used after a commit in this process)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self.schema}")

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop relaying, after publishing the rows already committed (for up to ``drain_s`` seconds).

        A graceful stop (a rolling update, a scale-down) so leaves no event behind for as long as the
        service stays down: a row committed just before the stop used to wait for the next start of
        some replica of the service, however long that took. Whatever cannot be published now (the
        broker or the database gone, the time up) stays pending, as before."""
        await cancel_and_wait(self._task)
        self._task = None
        try:
            async with asyncio.timeout(drain_s):
                await self._relay_pending("rows left pending at stop")
        except TimeoutError:
            log.warning("outbox relay: rows left pending at stop, after %.0f s", drain_s)

    async def _relay_pending(self, then: str) -> None:
        """Publish batches until one comes back short. A failure is logged (with ``then``: what happens
        to the rows now) and the rows stay pending."""
        try:
            while await self.relay_once() == self.batch_size:
                pass
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("outbox relay failed, %s", then, extra={"error": repr(exc)})
        except Exception as exc:  # a broker error
            log.warning("outbox publish failed, %s", then, extra={"error": repr(exc)})
