"""rejudgement.requested: the registry saw a stale comparison; re-score on the version's own holdout."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from libs.common import outbox
from libs.common.events import ModelRejudged, Rejudgement, RejudgementRequested
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.trainer.adapters import repository

log = logging.getLogger(__name__)
CONSUMER = "trainer.rejudgement-requested"

Rescore = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def handler(rt: Runtime, rescore: Rescore) -> EventHandler[RejudgementRequested]:
    async def handle(event: RejudgementRequested, delivery: Delivery) -> None:
        """Score the version and the champion the trainer knows now on the version's holdout; answer model.rejudged.

        The scoring runs in a worker process before the transaction: a
        redelivery may score twice, but only one answer is recorded.
        """
        champion = await repository.model_row(rt.db, event.model)
        if champion is None or champion["champion_artifact"] is None:
            log.warning("re-judgement of %s v%d: the trainer knows no champion", event.model, event.version)
            return
        scores = await rescore({
            "holdout": event.holdout.model_dump(),
            "challenger": event.artifact.model_dump(),
            "champion": json.loads(champion["champion_artifact"]),
            "dataset_schema": event.dataset_schema.model_dump(mode="json"),
        })  # fmt: skip
        answer = ModelRejudged(
            producer="trainer",
            correlation_id=event.correlation_id,
            model=event.model,
            version=event.version,
            rejudgement=Rejudgement(
                stale_champion_version=event.stale_champion_version,
                stale_champion_metrics=event.stale_champion_metrics,
                champion_version=champion["champion_version"],
                champion_metrics=scores["champion_metrics"],
                metrics=scores["metrics"],
                fairness=scores.get("fairness"),
                champion_fairness=scores.get("champion_fairness"),
                comparison=scores.get("comparison"),
            ),
        )
        if await outbox.once(rt.db, CONSUMER, event, lambda conn: _answer(conn, answer)) is None:
            return
        log.info("re-judged %s v%d against v%s", event.model, event.version, champion["champion_version"])

    return handle


async def _answer(conn: asyncpg.Connection, answer: ModelRejudged) -> ModelRejudged:
    await outbox.add(conn, answer)
    return answer
