"""model.trained: register the version, apply the promotion policy, move the alias."""

from __future__ import annotations

import json
import logging

import asyncpg
from prometheus_client import Counter

from libs.common import outbox
from libs.common.events import Event, ModelTrained, Source
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.registry.adapters import repository
from services.registry.domain.promotion import Candidate, PromotionConfig, PromotionDecision, decide
from services.registry.domain.provenance import TrustConfig, hold_reason

log = logging.getLogger(__name__)
CONSUMER = "registry.model-trained"


def handler(rt: Runtime, config: PromotionConfig, trust: TrustConfig | None = None) -> Handler:
    trust = trust or TrustConfig()
    decisions = Counter(
        "driftloop_promotion_decisions_total", "Promotion decisions.", ["model", "outcome"],
        registry=rt.telemetry.registry,
    )  # fmt: skip

    async def handle(event: Event, delivery: Delivery) -> None:
        """Register a trained version and promote it if the policy says so."""
        assert isinstance(event, ModelTrained)
        async with rt.db.acquire() as conn, conn.transaction():
            if not await outbox.first_delivery(conn, CONSUMER, event.event_id):
                return
            await conn.execute(
                "INSERT INTO models (name, dataset) VALUES ($1, $2) ON CONFLICT DO NOTHING", event.model, event.dataset
            )
            await conn.execute("SELECT 1 FROM models WHERE name = $1 FOR UPDATE", event.model)
            champion = await repository.alias_version(conn, event.model, "champion")
            candidate = Candidate(
                primary_metric=event.primary_metric,
                metrics=event.metrics,
                champion_metrics=event.champion_metrics,
                evaluated_against=event.champion_version,
            )
            decision = decide(candidate, champion, config)
            held = None
            if decision.promote and decision.alias == "champion":
                held = await _held_for_approval(conn, event, trust)
                if held:  # the approver moves champion; the audit says whose data it was
                    decision = PromotionDecision(True, "candidate", f"{decision.reason}; {held}")
            outcome = "held" if held else "promoted" if decision.promote else "rejected"
            version = await repository.register(conn, event, outcome)
            await repository.audit(conn, event.model, "register", "policy", f"trained by job {event.job_id} "
                                   f"({event.trigger}) on {event.dataset} v{event.dataset_version}",
                                   to_version=version)  # fmt: skip
            if decision.promote and decision.alias:
                await repository.move_alias(
                    conn, event.model, decision.alias, version, actor="policy", reason=decision.reason,
                    correlation_id=event.correlation_id,
                )  # fmt: skip
            else:
                await repository.audit(conn, event.model, "reject", "policy", decision.reason, "champion", champion,
                                       version)  # fmt: skip
        decisions.labels(event.model, outcome).inc()
        log.info("model %s v%d: %s", event.model, version, decision.reason)

    return handle


async def _held_for_approval(conn: asyncpg.Connection, event: ModelTrained, trust: TrustConfig) -> str | None:
    """Why the version must stop at 'candidate' (its data came mostly from one untrusted principal), or None."""
    alarm = None
    if event.trigger == "drift":
        # The alarm behind the retrain: the one named by the trigger when it is an alarm, else the
        # latest one raised since the current champion was promoted (a drift job is often queued
        # later, by the rows that arrive after the alarm, and then names their event).
        alarm = await conn.fetchrow(
            "SELECT kinds, label_sources FROM alarms WHERE event_id = $1 OR (model = $2 AND at >= coalesce("
            "(SELECT updated_at FROM aliases WHERE model = $2 AND alias = 'champion'), '-infinity')) "
            "ORDER BY event_id = $1 DESC, at DESC LIMIT 1",
            event.trigger_event_id, event.model,
        )  # fmt: skip
        if alarm is None:
            log.warning("no alarm behind %s's drift retrain is known here: its labels' sources are not checked",
                        event.model)  # fmt: skip
    labels = None
    if alarm is not None and alarm["label_sources"] is not None:
        labels = [Source.model_validate(s) for s in json.loads(alarm["label_sources"])]
    return hold_reason(
        trigger=event.trigger, alarm_kinds=alarm["kinds"] if alarm else [], label_sources=labels,
        row_sources=event.row_sources, config=trust,
    )  # fmt: skip
