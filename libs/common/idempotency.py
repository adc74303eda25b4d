"""Idempotent HTTP edges: the ``Idempotency-Key`` header.

A client that retries a mutating request (the answer was lost, the service was
killed) sends the same key again. The first request stores the key with a
fingerprint of the request and the answer, in the same transaction as its
effect; a retry finds the key and gets the original answer back with nothing
stored again; the same key with a different request is a 409. Two requests
racing with one key serialise on the key's row: the second waits for the
first to commit, then replays its answer (or, if the first rolled back, does
the work itself). A request that fails stores nothing, key included, so its
retry runs again.

Each service keeps its keys in its own schema (``idempotency_keys``, a shared
migration); old keys are pruned by the retention pass.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Header
from fastapi.responses import Response

from libs.common.errors import Conflict

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Makes a retry of this request safe: the same key returns the first answer and stores nothing "
        "again; the same key with a different request is refused with 409.",
    ),
]


def fingerprint(*parts: str | bytes) -> str:
    """A digest of what makes two requests the same (path parameters, query, body)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Replay:
    """The stored answer of the first request that used a key."""

    status: int
    body: bytes

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, media_type="application/json",
                        headers={REPLAYED_HEADER: "true"})  # fmt: skip


async def claim(conn: asyncpg.Connection, scope: str, key: str, request: str) -> Replay | None:
    """Claim ``key`` for this request inside the caller's transaction.

    None: the key is new and now held until the transaction ends; do the work
    and :func:`remember` the answer. A :class:`Replay`: the key was used by an
    identical request, answer with it and do nothing. :class:`Conflict`: the
    key was used by a different request.
    """
    claimed = await conn.fetchval(
        "INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING true",
        scope, key, request,
    )  # fmt: skip
    if claimed:
        return None
    replay = await answered(conn, scope, key, request)  # the conflicting row was committed with its answer
    if replay is None:  # pragma: no cover - it cannot vanish but by pruning
        raise Conflict(f"{HEADER} {key!r} is being pruned; retry", key=key)
    return replay


async def answered(db: asyncpg.Pool | asyncpg.Connection, scope: str, key: str, request: str) -> Replay | None:
    """The committed answer to ``key`` when the same request already used it: a retry can be answered
    before its work is redone (a large body parsed and validated again, a rate limit charged again).
    None when the key is new or its first request is still in flight: :func:`claim`, in the
    transaction, decides then. :class:`Conflict` when it answered a different request."""
    row = await db.fetchrow(
        "SELECT fingerprint, status, response FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
    )
    if row is None or row["response"] is None:
        return None
    if row["fingerprint"] != request:
        raise Conflict(f"{HEADER} {key!r} was already used for a different request", key=key)
    return Replay(row["status"], bytes(row["response"]))


async def remember(conn: asyncpg.Connection, scope: str, key: str, status: int, body: bytes) -> None:
    """Store the answer to ``key`` (same transaction as :func:`claim` and the effect)."""
    await conn.execute(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2", scope, key, status, body
    )


async def prune(conn: asyncpg.Connection | asyncpg.Pool, older_than_s: float) -> int:
    """Forget keys older than ``older_than_s`` seconds; return how many."""
    result: str = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)", older_than_s
    )
    return int(result.split()[-1])


class RecentKeys:
    """Keys seen by a service without a database (serving's feedback), kept in
    memory, newest ``capacity`` only.

    The effect itself is made idempotent elsewhere: the event published for a
    key has an id derived from the key (:func:`event_id`), and its consumer
    dedupes on event ids, so a retry after a restart changes nothing either.
    What this memory adds is the 409 for a key reused with a different body
    (detected by this process, for as long as it remembers the key).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()

    def check(self, key: str, request: str) -> dict[str, Any] | None:
        """The first answer when ``key`` was already used for this request (a retry); 409 when for another."""
        known = self._seen.get(key)
        if known is None:
            return None
        if known[0] != request:
            raise Conflict(f"{HEADER} {key!r} was already used for a different request", key=key)
        return known[1]

    def add(self, key: str, request: str, answer: dict[str, Any]) -> None:
        self._seen[key] = (request, answer)
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


_EVENT_IDS = uuid.UUID("6f1c1d4e-5b7a-4b8e-9a51-2d0c7e3f9a10")


def event_id(scope: str, key: str) -> uuid.UUID:
    """The id of the event published for ``key``: the same on every retry, so consumers dedupe it."""
    return uuid.uuid5(_EVENT_IDS, f"{scope}\n{key}")
