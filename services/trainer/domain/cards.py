"""Model cards and data cards: the facts a job knows, as JSON and as Markdown (docs/cards.md).

The trainer builds both for every version at training time, from what the job
holds: the rows it read, the holdout, the fitted pipeline, the reference
profile. What changes after training (the version number the registry gives,
the aliases it moves) is added by the registry when a card is read.

The facts are computed in the worker (``metric_intervals``, ``missing_rates``
...); the JSON and Markdown are rendered once the runner knows the final
comparison with the champion (a stale one is re-judged first).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from libs.common.schema import DatasetSchema, Task

CARD_FORMAT = 1
#: A feature missing in more than this share of training rows is listed among the known limits.
HIGH_MISSING = 0.2
#: Bootstrap resamples of the holdout for the metrics' confidence intervals.
BOOTSTRAP = 200
#: Batches listed one by one in the data card's lineage (the newest); older ones are counted.
LINEAGE_BATCHES = 50


def _classification_scores(t: np.ndarray, p: np.ndarray, k: int) -> dict[str, float]:
    """Accuracy and macro F1 from integer-coded labels (a confusion matrix by ``bincount``: the
    bootstrap calls this hundreds of times, where scikit-learn's scorers cost milliseconds each)."""
    matrix = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(matrix).astype(float)
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0  # as scikit-learn: labels in truth or prediction
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    return {"accuracy": float(tp.sum() / len(t)), "f1_macro": float(f1[present].mean())}


def _regression_scores(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    errors = p - t
    spread = float(((t - t.mean()) ** 2).sum())
    r2 = 1 - float((errors**2).sum()) / spread if spread > 0 else float("nan")
    return {"r2": r2, "rmse": math.sqrt(float((errors**2).mean())), "mae": float(np.abs(errors).mean())}


def metric_intervals(
    truth: np.ndarray, predicted: np.ndarray, metrics: dict[str, float], seed: int, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Each holdout metric with a percentile-bootstrap confidence interval (resampling holdout rows).

    The bootstrap needs no distributional formula per metric (macro F1 and r2
    have none that is simple) and the predictions are made once, so 200
    resamples cost milliseconds per thousand rows.
    """
    rng = np.random.default_rng(seed)
    n = len(truth)
    score: Callable[[np.ndarray], dict[str, float]]
    if truth.dtype.kind in "fiu" and predicted.dtype.kind in "fiu":  # regression
        t, p = truth.astype(float), predicted.astype(float)
        score = lambda rows: _regression_scores(t[rows], p[rows])  # noqa: E731
    else:
        labels, codes = np.unique(np.concatenate([truth.astype(str), predicted.astype(str)]), return_inverse=True)
        t, p, k = codes[:n], codes[n:], len(labels)
        score = lambda rows: _classification_scores(t[rows], p[rows], k)  # noqa: E731
    draws: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(BOOTSTRAP if n > 1 else 0):
        scores = score(rng.integers(0, n, n))
        for name in draws:
            if name in scores:
                draws[name].append(scores[name])
    tail = (1 - level) / 2
    out = {}
    for name, value in metrics.items():
        values = np.asarray([v for v in draws.get(name, []) if np.isfinite(v)])
        low, high = (float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))) if len(values) else (
            value, value)  # fmt: skip
        out[name] = {"value": value, "low": low, "high": high, "level": level, "method": "percentile bootstrap",
                     "rows": n}  # fmt: skip
    return out


def missing_rates(schema: DatasetSchema, frame: pd.DataFrame) -> dict[str, float]:
    """Share of missing values per stored column over the rows the job read."""
    n = len(frame)
    return {c.name: float(frame[c.name].isna().sum() / n) if n and c.name in frame else 0.0
            for c in schema.stored_columns}  # fmt: skip


def time_range(frame: pd.DataFrame, column: str) -> dict[str, str | None]:
    """When the first and last of the rows were accepted by ingest."""
    if column not in frame or frame[column].isna().all():
        return {"from": None, "to": None}
    stamps = pd.to_datetime(frame[column], utc=True)
    return {"from": stamps.min().isoformat(), "to": stamps.max().isoformat()}


def distributions(profile: dict[str, Any]) -> dict[str, Any]:
    """The reference profile per feature, without the raw KS sample (kept in the profile artifact)."""
    return {name: {k: v for k, v in p.items() if k != "sample"} for name, p in profile["features"].items()}


def known_limits(facts: dict[str, Any]) -> list[str]:
    """What a reader should know before trusting the model: dropped rows, sparse features, small groups."""
    limits = []
    data = facts["training_data"]
    if data["dropped_rows"]:
        limits.append(f"{data['dropped_rows']} rows before a change in the champion's errors were left out")
    if data.get("window_rows"):
        limits.append(f"fitted on the newest {data['window_rows']} training rows only: they predicted the holdout "
                      "better than all the rows since the drift")  # fmt: skip
    if data["unlabelled_rows"]:
        limits.append(f"{data['unlabelled_rows']} rows without a label were not used")
    for name, rate in sorted(facts["missing_rates"].items()):
        if rate > HIGH_MISSING:
            limits.append(f"feature {name!r} is missing in {rate:.0%} of the rows (imputed)")
    for feature, rows in ((facts.get("fairness") or {}).get("groups") or {}).items():
        small = [r["group"] for r in rows if r["count"] < facts["min_group_rows"]]
        if small:
            limits.append(f"groups of {feature!r} with fewer than {facts['min_group_rows']} holdout rows are not "
                          f"compared: {', '.join(small)}")  # fmt: skip
    if data["holdout_rows"] < 200:
        limits.append(f"the holdout has only {data['holdout_rows']} rows: the intervals are wide")
    return limits


def model_card(facts: dict[str, Any], champion_version: int | None, champion_metrics: dict[str, float] | None,
               champion_fairness: dict[str, float] | None) -> dict[str, Any]:  # fmt: skip
    """The model card's JSON: the worker's facts and the final comparison with the champion."""
    primary = facts["primary_metric"]
    comparison = None
    if champion_metrics is not None:
        mine, theirs = facts["metrics"][primary]["value"], champion_metrics.get(primary)
        comparison = {
            "champion_version": champion_version,
            "champion_metrics": champion_metrics,
            "gain": mine - theirs if theirs is not None else None,
            "champion_fairness": champion_fairness,
        }
    card = {k: v for k, v in facts.items() if k not in ("data",)}
    return {"card": "model", "format": CARD_FORMAT, **card, "champion": comparison, "known_limits": known_limits(facts)}


def data_card(facts: dict[str, Any]) -> dict[str, Any]:
    return {"card": "data", "format": CARD_FORMAT, **facts["data"]}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value).replace("|", "\\|")


def model_markdown(card: dict[str, Any]) -> str:
    data = card["training_data"]
    lines = [
        f"# Model card: {card['model']} (job {card['job_id']})",
        "",
        "## Intended use",
        card.get("intended_use") or "_The dataset declares no description._",
        "",
        "## Training data",
        f"- dataset `{data['dataset']}` version {data['dataset_version']}, trigger `{data['trigger']}`",
        f"- {data['training_rows']} training rows, {data['holdout_rows']} holdout rows (the newest), "
        f"{data['rows_read']} rows read",
        f"- accepted between {data['time_range']['from']} and {data['time_range']['to']}",
        "",
        "## Parameters",
        *_table(["parameter", "value"], [[k, v] for k, v in sorted(card["params"].items())]),
        "",
        "## Holdout metrics",
        *_table(["metric", "value", "95% interval"],
                [[k, m["value"], f"{m['low']:.4f} – {m['high']:.4f}"] for k, m in card["metrics"].items()]),
        "",
        "## Comparison with the champion",
    ]  # fmt: skip
    champion = card.get("champion")
    if champion is None:
        lines.append("No champion was compared (first version, or none could score this holdout).")
    else:
        rows = [[k, card["metrics"][k]["value"], v] for k, v in champion["champion_metrics"].items() if k in
                card["metrics"]]  # fmt: skip
        lines += [f"Against v{champion['champion_version']} on the same holdout:", "",
                  *_table(["metric", "this version", "champion"], rows)]  # fmt: skip
    lines += ["", "## Groups and fairness", *_fairness_markdown(card), "", "## Feature importance",
              *_importance_markdown(card.get("importance")), "", "## Known limits"]  # fmt: skip
    lines += [f"- {limit}" for limit in card["known_limits"]] or ["None recorded."]
    return "\n".join(lines) + "\n"


def _fairness_markdown(card: dict[str, Any]) -> list[str]:
    fairness = card.get("fairness")
    if not fairness:
        return ["The dataset declares no sensitive feature."]
    theirs = (card.get("champion") or {}).get("champion_fairness") or {}
    lines = _table(["difference", "this version", "champion"],
                   [[k, v, theirs.get(k)] for k, v in sorted(fairness["differences"].items())])  # fmt: skip
    for feature, rows in fairness["groups"].items():
        columns = [k for k in rows[0] if k != "group"] if rows else []
        lines += [
            "",
            f"Groups of `{feature}`:",
            "",
            *_table(["group", *columns], [[r["group"], *(r[c] for c in columns)] for r in rows]),
        ]
    return lines


def _importance_markdown(importance: dict[str, Any] | None) -> list[str]:
    if not importance:
        return ["Not computed."]
    rows = [[r["feature"], r["mean"], r["std"]] for r in importance["features"]]
    return [f"Permutation importance on {importance['rows']} holdout rows, {importance['repeats']} shuffles each: "
            f"the drop in {importance['scoring']} when the feature is shuffled.", "",
            *_table(["feature", "mean drop", "std"], rows)]  # fmt: skip


def data_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card['dataset']} version {card['dataset_version']}", "", "## Schema",
             *_table(["column", "role", "type", "nullable", "sensitive", "missing rate"],
                     [[c["name"], c["role"], c["dtype"], c["nullable"], c["sensitive"], c["missing_rate"]]
                      for c in card["columns"]]),
             "", "## Row counts", *[f"- {k.replace('_', ' ')}: {v}" for k, v in card["rows"].items()],
             "", "## Distributions (reference profile of the training rows)"]  # fmt: skip
    for name, p in card["distributions"].items():
        if p["kind"] == "numeric":
            lines.append(f"- `{name}`: mean {p['mean']:.4g}, std {p['std']:.4g}, min {p['min']:.4g}, "
                         f"max {p['max']:.4g}, missing {p['missing']}")  # fmt: skip
        else:
            top = sorted(p["counts"].items(), key=lambda kv: -kv[1])[:10]
            lines.append(f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in top) + f", missing {p['missing']}")
    lines += ["", "## Rejections", card["rejections"]["note"], "", "## Lineage",
              f"{card['lineage']['batches']} batches; the newest {len(card['lineage']['listed'])}:", "",
              *_table(["seq", "rows", "accepted at", "sender", "sha256"],
                      [[b["seq"], b["rows"], b["created_at"], b["principal"], b["sha256"][:12]]
                       for b in card["lineage"]["listed"]])]  # fmt: skip
    return "\n".join(lines) + "\n"


def columns(schema: DatasetSchema, missing: dict[str, float]) -> list[dict[str, Any]]:
    """Every stored column with its role (feature, attribute, target), type and missing rate."""
    roles = [(f, "feature") for f in schema.features] + [(f, "attribute") for f in schema.attributes]
    roles.append((schema.target, "target"))
    return [{"name": f.name, "role": role, "dtype": f.dtype.value, "nullable": f.nullable,
             "sensitive": f.name in schema.sensitive, "missing_rate": missing.get(f.name, 0.0)}
            for f, role in roles]  # fmt: skip


def task_scoring(schema: DatasetSchema) -> str:
    return "accuracy" if schema.task is Task.CLASSIFICATION else "r2"
