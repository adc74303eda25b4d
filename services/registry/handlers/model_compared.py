"""model.compared: the monitor's live comparison of the canary with the champion; the canary policy decides.

Promote: ``champion`` moves to the canary's version and the canary ends.
Roll back: the canary ends (its traffic returns to the champion). Either way
one audit row carries the figures, and ``model.promoted`` tells serving and
the monitor. Waiting changes no alias; the latest figures are kept with the
canary (``GET /v1/models`` shows them). A comparison of a version that is no
longer the canary, or against a champion that has moved since, is stale and
ignored: the monitor sends a fresh one as labels arrive. An A/B test
(``judged`` false) is never decided here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Counter

from libs.common import outbox
from libs.common.events import ModelCompared
from libs.common.kafka import Delivery, EventHandler
from libs.common.service import Runtime
from services.registry.adapters import canaries, repository
from services.registry.domain.canary import Action, CanaryConfig, CanaryDecision, Comparison, expired, judge

log = logging.getLogger(__name__)
CONSUMER = "registry.model-compared"


def handler(rt: Runtime, config: CanaryConfig) -> EventHandler[ModelCompared]:
    decisions = Counter(
        "driftloop_canary_decisions_total", "Canary policy decisions.", ["model", "action"],
        registry=rt.telemetry.registry,
    )  # fmt: skip

    async def handle(event: ModelCompared, delivery: Delivery) -> None:
        """Judge the canary on the comparison and act on the decision (once per event)."""
        if event.alias != "canary":
            return  # a shadow is compared for people to read; it never moves by itself
        action = await outbox.once(rt.db, CONSUMER, event, lambda conn: _decide(conn, event, config))
        if action is not None:
            decisions.labels(event.model, action).inc()

    return handle


async def _decide(conn: asyncpg.Connection, event: ModelCompared, config: CanaryConfig) -> str:
    await repository.lock_model(conn, event.model)
    row = await canaries.current(conn, event.model)
    champion = await repository.alias_version(conn, event.model, "champion")
    if row is None or row["version"] != event.version or champion != event.champion_version:
        log.info("comparison of %s v%d vs v%d ignored: stale", event.model, event.version, event.champion_version)
        return "stale"
    comparison = Comparison(
        metric=event.metric, canary_version=event.version, champion_version=event.champion_version,
        canary_labels=event.challenger_labels, champion_labels=event.champion_labels,
        canary_value=event.challenger_value, champion_value=event.champion_value, difference=event.difference,
        lower=event.lower, upper=event.upper, method=event.method,
    )  # fmt: skip
    await canaries.remember(conn, event.model, event.model_dump(mode="json", include=_FIGURES))
    if not row["judged"]:
        return "ab"
    decision = judge(comparison, row["started_at"], datetime.now(UTC), config)
    await apply(conn, event.model, event.version, decision, event.correlation_id)
    return decision.action.value


_FIGURES = {"metric", "version", "champion_version", "challenger_labels", "champion_labels", "challenger_value",
            "champion_value", "difference", "lower", "upper", "method", "occurred_at"}  # fmt: skip


async def apply(
    conn: asyncpg.Connection, model: str, version: int, decision: CanaryDecision, correlation_id: str | None
) -> None:
    """Carry out a canary decision in the caller's transaction (the model is locked)."""
    if decision.action is Action.PROMOTE:
        await repository.move_alias(conn, model, "champion", version, actor="policy", reason=decision.reason,
                                    correlation_id=correlation_id)  # fmt: skip
        await canaries.clear(conn, model, "canary", action="end", actor="policy",
                             reason=f"v{version} became the champion", correlation_id=correlation_id)  # fmt: skip
    elif decision.action is Action.ROLLBACK:
        await canaries.clear(conn, model, "canary", action="rollback", actor="policy", reason=decision.reason,
                             correlation_id=correlation_id)  # fmt: skip
    log.info("canary %s v%d: %s", model, version, decision.reason)


async def sweep(rt: Runtime, config: CanaryConfig) -> list[str]:
    """Roll back every judged canary past its deadline (one with no labelled traffic gets no comparison,
    so no event would ever decide it); returns the models rolled back."""
    rolled = []
    async with rt.db.acquire() as conn:
        due = await canaries.past_deadline(conn, datetime.now(UTC))
    for model in due:
        async with rt.db.acquire() as conn, conn.transaction():
            await repository.lock_model(conn, model)
            row = await canaries.current(conn, model)
            decision = expired(row["started_at"], datetime.now(UTC), config) if row and row["judged"] else None
            if row is not None and decision is not None:
                await apply(conn, model, row["version"], decision, None)
                rolled.append(model)
    return rolled
