"""model.trained: register the version, apply the promotion policy, move the alias.

model.rejudged (same topic) answers a re-judgement the registry asked for
when a version's comparison had gone stale: the policy then decides on the
re-scored figures.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import Counter

from libs.common import outbox
from libs.common.events import ModelRejudged, ModelTrained, Rejudgement, RejudgementRequested, Source
from libs.common.kafka import Delivery, EventHandler
from libs.common.schema import DatasetSchema
from libs.common.service import Runtime
from services.registry.adapters import canaries, repository
from services.registry.domain.promotion import Candidate, PromotionConfig, PromotionDecision, decide
from services.registry.domain.provenance import TrustConfig, hold_reason
from services.registry.handlers.model_exported import runs_on

log = logging.getLogger(__name__)
CONSUMER = "registry.model-trained"
#: A champion that keeps moving while a version is re-judged: give up after this many requests.
MAX_REJUDGEMENTS = 3


@dataclass(frozen=True)
class CanaryRelease:
    """Send a drift retrain that wins the promotion policy to the canary alias first (not champion)."""

    share: float
    """Its share of traffic, in percent."""
    deadline: timedelta


def handler(
    rt: Runtime, config: PromotionConfig, trust: TrustConfig | None = None, canary: CanaryRelease | None = None
) -> EventHandler[ModelTrained | ModelRejudged]:
    trust = trust or TrustConfig()
    decisions = Counter(
        "driftloop_promotion_decisions_total", "Promotion decisions.", ["model", "outcome"],
        registry=rt.telemetry.registry,
    )  # fmt: skip

    async def handle(event: ModelTrained | ModelRejudged, delivery: Delivery) -> None:
        """Register a trained version (or take a re-judgement) and promote it if the policy says so."""
        outcome = await outbox.once(rt.db, CONSUMER, event, lambda conn: _judge(conn, event, config, trust, canary))
        if outcome is not None:
            decisions.labels(event.model, outcome).inc()

    return handle


async def _judge(
    conn: asyncpg.Connection, event: ModelTrained | ModelRejudged, config: PromotionConfig, trust: TrustConfig,
    canary: CanaryRelease | None,
) -> str | None:  # fmt: skip
    if isinstance(event, ModelRejudged):
        return await _rejudged(conn, event, config, trust, canary)
    return await _trained(conn, event, config, trust, canary)


def _via_canary(
    decision: PromotionDecision, outcome: str, trigger: str, champion: int | None, canary: CanaryRelease | None,
    judging: int | None,
) -> tuple[PromotionDecision, str]:  # fmt: skip
    """A drift retrain bound for champion goes to the canary first when the registry is set so (and a
    champion serves to compare it with). Its outcome is then "canary", not "promoted": it serves a share
    only, and the canary policy settles it later (``canaries.settle``).

    While a canary the policy released is being judged (``judging``), any other version bound for champion
    goes the same way and replaces it: the champion moves on live labels only, and an older canary is
    never judged against (and promoted over) a newer champion. A post-drift refresh (trigger new_data)
    follows the drift retrain within seconds and would otherwise jump straight to champion."""
    if canary is None or champion is None or decision.alias != "champion":
        return decision, outcome
    if trigger == "drift":
        reason = f"{decision.reason}; drift retrain released as a canary first"
    elif judging is not None:
        reason = f"{decision.reason}; released as a canary in place of v{judging}, still judged on live labels"
    else:
        return decision, outcome
    return PromotionDecision(True, "canary", reason), "canary"


async def _released(
    conn: asyncpg.Connection, model: str, decision: PromotionDecision, outcome: str, trigger: str,
    champion: int | None, canary: CanaryRelease | None,
) -> tuple[PromotionDecision, str]:  # fmt: skip
    """:func:`_via_canary`, asking the database for a canary under judgement only when it can matter
    (canary releases configured, a version bound for champion)."""
    judging = None
    if canary is not None and decision.alias == "champion":
        judging = await canaries.released_by_policy(conn, model)
    return _via_canary(decision, outcome, trigger, champion, canary, judging)


async def _held_for_approval(
    conn: asyncpg.Connection, model: str, trigger: str, trigger_event_id: uuid.UUID | None,
    row_sources: list[Source] | None, trust: TrustConfig,
) -> str | None:  # fmt: skip
    """Why the version must stop at 'candidate' (its data came mostly from untrusted principals), or None."""
    alarm = None
    if trigger == "drift":
        # The alarm behind the retrain: the one named by the trigger when it is an alarm, else the
        # latest one raised since the current champion was promoted (a drift job is often queued
        # later, by the rows that arrive after the alarm, and then names their event).
        alarm = await repository.alarm_behind(conn, model, trigger_event_id)
        if alarm is None:
            log.warning("no alarm behind %s's drift retrain is known here: its labels' sources are not checked",
                        model)  # fmt: skip
    labels = None
    if alarm is not None and alarm["label_sources"] is not None:
        labels = [Source.model_validate(s) for s in json.loads(alarm["label_sources"])]
    return hold_reason(
        trigger=trigger, alarm_kinds=alarm["kinds"] if alarm else [], label_sources=labels,
        row_sources=row_sources, config=trust,
    )  # fmt: skip


async def _trust(
    conn: asyncpg.Connection, decision: PromotionDecision, model: str, trigger: str,
    trigger_event_id: uuid.UUID | None, row_sources: list[Source] | None, trust: TrustConfig,
) -> tuple[PromotionDecision, str]:  # fmt: skip
    """The decision after the trust rule (a champion may be held at candidate), and its outcome label."""
    if not (decision.promote and decision.alias == "champion"):
        return decision, decision.outcome
    held = await _held_for_approval(conn, model, trigger, trigger_event_id, row_sources, trust)
    if not held:
        return decision, decision.outcome
    # the approver moves champion; the audit says whose data it was
    return PromotionDecision(True, "candidate", f"{decision.reason}; {held}"), "held"


async def _trained(
    conn: asyncpg.Connection, event: ModelTrained, config: PromotionConfig, trust: TrustConfig,
    canary: CanaryRelease | None,
) -> str:  # fmt: skip
    await repository.ensure_model(conn, event.model, event.dataset)
    await repository.lock_model(conn, event.model)
    champion = await repository.alias_version(conn, event.model, "champion")
    candidate = Candidate(
        primary_metric=event.primary_metric,
        metrics=event.metrics,
        champion_metrics=event.champion_metrics,
        evaluated_against=event.champion_version,
        fairness=event.fairness,
        champion_fairness=event.champion_fairness,
        p_value=event.comparison.p_value if event.comparison else None,
    )
    decision = decide(candidate, champion, config)
    if decision.rejudge and event.holdout is None:
        decision = PromotionDecision(False, None, decision.reason + " (no holdout kept to re-judge on: rejected)")
    decision, outcome = await _trust(conn, decision, event.model, event.trigger, event.trigger_event_id,
                                     event.row_sources, trust)  # fmt: skip
    decision, outcome = await _released(conn, event.model, decision, outcome, event.trigger, champion, canary)
    early = await repository.take_pending_export(conn, event.model, event.job_id, event.artifact.sha256)
    if early is not None:  # the export overtook its version: registered with it, so a promotion carries it
        event = event.model_copy(update={"onnx": early})
    version = await repository.register(conn, event, outcome)
    await repository.record_governance(conn, event.model, version, event)
    await repository.keep_holdout(conn, event.model, version, event.holdout, event.row_sources)
    await repository.audit(conn, event.model, "register", "policy", f"trained by job {event.job_id} "
                           f"({event.trigger}) on {event.dataset} v{event.dataset_version}",
                           to_version=version)  # fmt: skip
    if early is not None:
        await repository.audit(conn, event.model, "export", "trainer", runs_on(early), to_version=version)
    if event.rejudged is not None:
        await repository.record_rejudgement(conn, event.model, version, event.rejudged)
        await repository.audit(conn, event.model, "rejudge", "trainer", _figures(event.primary_metric, event.rejudged),
                               "champion", event.rejudged.champion_version, version)  # fmt: skip
    await _apply(conn, event.model, version, champion, decision, event.correlation_id, canary)
    if decision.rejudge:
        await _request_rejudgement(conn, event.model, version, champion, event.correlation_id)
    log.info("model %s v%d: %s", event.model, version, decision.reason)
    return outcome


async def _rejudged(
    conn: asyncpg.Connection, event: ModelRejudged, config: PromotionConfig, trust: TrustConfig,
    canary: CanaryRelease | None,
) -> str | None:  # fmt: skip
    await repository.lock_model(conn, event.model)
    row = await repository.version_row(conn, event.model, event.version)
    if row is None or row["decision"] != "rejudging":
        log.info("re-judgement of %s v%d ignored: nothing awaits it", event.model, event.version)
        return None
    champion = await repository.alias_version(conn, event.model, "champion")
    rejudgement = event.rejudgement
    candidate = Candidate(
        primary_metric=row["primary_metric"],
        metrics=rejudgement.metrics,
        champion_metrics=rejudgement.champion_metrics,
        evaluated_against=rejudgement.champion_version,
        fairness=rejudgement.fairness,
        champion_fairness=rejudgement.champion_fairness,
        p_value=rejudgement.comparison.p_value if rejudgement.comparison else None,
    )
    decision = decide(candidate, champion, config)
    if decision.rejudge and await repository.rejudgements(conn, event.model, event.version) >= MAX_REJUDGEMENTS:
        decision = PromotionDecision(False, None, decision.reason + f" (after {MAX_REJUDGEMENTS} re-judgements)")
    sources = [Source.model_validate(s) for s in json.loads(row["row_sources"])] if row["row_sources"] else None
    decision, outcome = await _trust(conn, decision, event.model, row["trigger"], row["trigger_event_id"], sources,
                                     trust)  # fmt: skip
    decision, outcome = await _released(conn, event.model, decision, outcome, row["trigger"], champion, canary)
    await repository.record_rejudgement(conn, event.model, event.version, rejudgement, outcome)
    await repository.audit(conn, event.model, "rejudge", "trainer", _figures(row["primary_metric"], rejudgement),
                           "champion", rejudgement.champion_version, event.version)  # fmt: skip
    await _apply(conn, event.model, event.version, champion, decision, event.correlation_id, canary)
    if decision.rejudge:
        await _request_rejudgement(conn, event.model, event.version, champion, event.correlation_id)
    log.info("model %s v%d re-judged: %s", event.model, event.version, decision.reason)
    return outcome


async def _apply(
    conn: asyncpg.Connection, model: str, version: int, champion: int | None, decision: PromotionDecision,
    correlation_id: str | None, canary: CanaryRelease | None = None,
) -> None:  # fmt: skip
    if decision.promote and decision.alias == "canary" and canary is not None:
        await repository.move_alias(conn, model, "canary", version, actor="policy", reason=decision.reason,
                                    correlation_id=correlation_id, share=canary.share, judged=True)  # fmt: skip
        await canaries.start(conn, model, version, canary.share, True, datetime.now(UTC) + canary.deadline)
    elif decision.promote and decision.alias:
        await repository.move_alias(conn, model, decision.alias, version, actor="policy", reason=decision.reason,
                                    correlation_id=correlation_id)  # fmt: skip
    else:
        action = "rejudge-requested" if decision.rejudge else "reject"
        await repository.audit(conn, model, action, "policy", decision.reason, "champion", champion, version)


async def _request_rejudgement(
    conn: asyncpg.Connection, model: str, version: int, champion: int | None, correlation_id: str | None
) -> None:
    row = await repository.version_row(conn, model, version)
    assert row is not None
    await outbox.add(conn, RejudgementRequested(
        producer="registry", correlation_id=correlation_id, model=model, version=version, dataset=row["dataset"],
        artifact=json.loads(row["artifact"]), holdout=json.loads(row["holdout"]),
        dataset_schema=DatasetSchema.model_validate_json(row["schema"]),
        stale_champion_version=row["champion_version"],
        stale_champion_metrics=json.loads(row["champion_metrics"]) if row["champion_metrics"] else None,
    ))  # fmt: skip


def _figures(metric: str, r: Rejudgement) -> str:
    """The audit line of a re-judgement: both comparisons, with their figures."""
    stale = (r.stale_champion_metrics or {}).get(metric)
    before = f"v{r.stale_champion_version} {stale:.4f}" if stale is not None else f"v{r.stale_champion_version}"
    return (
        f"re-judged on the same holdout: {metric} {r.metrics.get(metric, float('nan')):.4f} vs champion "
        f"v{r.champion_version} {r.champion_metrics.get(metric, float('nan')):.4f} (first compared with {before})"
    )
