"""model.trained: register the version, apply the promotion policy, move the alias."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from libs.common import outbox
from libs.common.events import Event, ModelTrained
from libs.common.kafka import Delivery, Handler
from libs.common.service import Runtime
from services.registry.adapters import repository
from services.registry.domain.promotion import Candidate, PromotionConfig, decide

log = logging.getLogger(__name__)
CONSUMER = "registry.model-trained"


def handler(rt: Runtime, config: PromotionConfig) -> Handler:
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
            version = await repository.register(conn, event, "promoted" if decision.promote else "rejected")
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
        decisions.labels(event.model, "promoted" if decision.promote else "rejected").inc()
        log.info("model %s v%d: %s", event.model, version, decision.reason)

    return handle
