"""What a job adds for governance, in the worker after training: group metrics on the holdout for the
challenger and the champion (the promotion gate compares them) and, later in the job, the cards' facts.

Kept out of ``worker`` so training itself stays one readable flow; everything here is computed from
what the job already holds in memory (the rows, the fitted pipeline, the champion).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from libs.common.artifacts import ArtifactStore
from libs.common.datasets import INGESTED_AT, DatasetManifest
from libs.common.events import Cards
from libs.common.frames import features_frame
from libs.common.profile import ReferenceProfile
from libs.common.schema import DatasetSchema, Task
from services.trainer.domain import cards
from services.trainer.domain.fairness import FairnessReport, fairness_report
from services.trainer.domain.importance import importance
from services.trainer.domain.training import TrainingResult


def holdout_rows(schema: DatasetSchema, frame: pd.DataFrame, result: TrainingResult) -> pd.DataFrame:
    """The holdout as ``train`` split it (the newest labelled rows), with every stored column."""
    return frame.dropna(subset=[schema.target.name]).tail(result.holdout_rows).reset_index(drop=True)


def holdout_target(schema: DatasetSchema, holdout: pd.DataFrame) -> pd.Series:
    y = holdout[schema.target.name]
    return y.astype(float) if schema.task is Task.REGRESSION else y


def fairness(
    schema: DatasetSchema, holdout: pd.DataFrame, result: TrainingResult, champion: Any, min_group_rows: int
) -> tuple[FairnessReport | None, FairnessReport | None]:
    """The challenger's and the champion's group metrics on the same holdout (None: nothing declared or
    no champion comparable on these rows)."""
    if not schema.sensitive:
        return None, None
    x, y = features_frame(schema, holdout), holdout_target(schema, holdout)
    mine = fairness_report(schema, result.pipeline, holdout, x, y, min_group_rows)
    theirs = None
    if champion is not None and result.champion_metrics is not None:
        theirs = fairness_report(schema, champion, holdout, x, y, min_group_rows)
    return mine, theirs


def card_facts(
    manifest: DatasetManifest, frame: pd.DataFrame, result: TrainingResult, holdout: pd.DataFrame,
    profile: ReferenceProfile, mine: FairnessReport | None, job: dict[str, Any], rules: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Everything the model and data cards say that only the job knows (see ``domain.cards``)."""
    schema = manifest.dataset_schema
    x, y = features_frame(schema, holdout), holdout_target(schema, holdout)
    seed = int(rules.get("seed", 42))
    predicted = np.asarray(result.pipeline.predict(x))
    truth = y.to_numpy() if schema.task is Task.REGRESSION else y.astype(str).to_numpy()
    guess = predicted if schema.task is Task.REGRESSION else predicted.astype(str)
    missing = cards.missing_rates(schema, frame)
    unlabelled = int(frame[schema.target.name].isna().sum())
    training_data = {
        "dataset": manifest.dataset, "dataset_version": manifest.version, "trigger": job.get("trigger"),
        "rows_read": len(frame), "training_rows": result.training_rows, "holdout_rows": result.holdout_rows,
        "dropped_rows": result.dropped_rows, "unlabelled_rows": unlabelled, "window_rows": result.window_rows,
        "time_range": cards.time_range(frame, INGESTED_AT),
    }  # fmt: skip
    return {
        "model": job.get("model"), "job_id": job.get("id"), "intended_use": schema.description,
        "training_data": training_data, "params": result.params, "primary_metric": result.primary_metric,
        "metrics": cards.metric_intervals(truth, guess, result.metrics, seed),
        "fairness": mine.to_dict() if mine else None, "min_group_rows": rules.get("min_group_rows", 20),
        "importance": importance(result.pipeline, x, y, cards.task_scoring(schema),
                                 rules.get("importance_rows", 1000), rules.get("importance_repeats", 3), seed),
        "missing_rates": {f.name: missing[f.name] for f in schema.features},
        "data": {
            "dataset": manifest.dataset, "dataset_version": manifest.version,
            "columns": cards.columns(schema, missing),
            "rows": {"in_version": manifest.total_rows, "read_by_the_job": len(frame), "unlabelled": unlabelled,
                     "training": result.training_rows, "holdout": result.holdout_rows,
                     "left_out_before_a_change": result.dropped_rows},
            "time_range": training_data["time_range"],
            "distributions": cards.distributions(profile.model_dump(mode="json")),
            "rejections": {"note": f"Rows rejected at intake, with their reasons: GET /v1/datasets/"
                                   f"{manifest.dataset}/rejections on ingest (not copied into the card)."},
            "lineage": lineage(manifest),
        },
    }  # fmt: skip


def lineage(manifest: DatasetManifest) -> dict[str, Any]:
    """The version's batches (the newest ``LINEAGE_BATCHES`` listed), and the manifest chain's head."""
    listed = [
        {"seq": b.seq, "first_seq": b.first_seq, "rows": b.rows, "created_at": b.created_at.isoformat(),
         "principal": b.principal, "trusted": b.trusted, "sha256": b.artifact.sha256, "uri": b.artifact.uri}
        for b in manifest.batches[-cards.LINEAGE_BATCHES:]
    ]  # fmt: skip
    return {"batches": len(manifest.batches), "listed": listed[::-1],
            "parent_manifest": manifest.parent.sha256 if manifest.parent else None}  # fmt: skip


def store_cards(root: str, result: dict[str, Any], champion_version: int | None) -> tuple[Cards | None, str | None]:
    """Render the cards with the final comparison and store them (Markdown and JSON, content-addressed).

    Returns the refs, or None and why: a card that fails to build never blocks the version.
    """
    facts = result.get("card_facts")
    if facts is None:
        return None, result.get("card_error") or "no card facts from the job"
    try:
        model = cards.model_card(facts, champion_version, result.get("champion_metrics"),
                                 result.get("champion_fairness"))  # fmt: skip
        data = cards.data_card(facts)
        store = ArtifactStore(root)
        return Cards(
            model_markdown=store.put(cards.model_markdown(model).encode(), suffix=".model-card.md"),
            model_json=store.put(json.dumps(model, default=str).encode(), suffix=".model-card.json"),
            data_markdown=store.put(cards.data_markdown(data).encode(), suffix=".data-card.md"),
            data_json=store.put(json.dumps(data, default=str).encode(), suffix=".data-card.json"),
        ), None
    except Exception as exc:  # whatever it was: the version registers, with the reason
        return None, f"card rendering failed: {type(exc).__name__}: {exc}"
