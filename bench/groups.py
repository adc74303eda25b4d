"""Benchmark of the monitor's live group metrics: the cost of one computation of the figures
(``live_groups``: fairlearn tables for every sensitive feature) over windows of labelled predictions,
as GET /v1/models/{m}/groups and the gauge refresh (every 30 s per model) pay it.

Two sensitive features (one with 2 groups, one with 12), a binary target; median of repeated runs.
Run: ``.venv/bin/python -m bench.groups`` (under a minute).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from libs.common.schema import DatasetSchema
from services.monitor.domain.groups import Labelled, live_groups

SCHEMA = DatasetSchema.model_validate({
    "features": [{"name": "x", "dtype": "numeric"}, {"name": "region", "dtype": "categorical"}],
    "attributes": [{"name": "sex", "dtype": "categorical"}],
    "sensitive": ["region", "sex"],
    "target": {"name": "y", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
})  # fmt: skip


def window(n: int, rng: np.random.Generator) -> list[Labelled]:
    regions = [f"r{i}" for i in range(12)]
    return [
        Labelled(rng.choice(["no", "yes"]), rng.choice(["no", "yes"]),
                 {"region": str(rng.choice(regions)), "sex": str(rng.choice(["f", "m"]))})
        for _ in range(n)
    ]  # fmt: skip


def main() -> None:
    rng = np.random.default_rng(0)
    live_groups(SCHEMA, 1, window(100, rng), 20)  # imports pandas and fairlearn once, as the first request does
    print("rows     median ms  (live_groups, 2 sensitive features, 14 groups)")
    for n in (1_000, 10_000, 100_000):
        rows = window(n, rng)
        runs = 20 if n < 100_000 else 5
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            live_groups(SCHEMA, 1, rows, 20)
            times.append((time.perf_counter() - start) * 1000)
        print(f"{n:>7}  {statistics.median(times):9.1f}")


if __name__ == "__main__":
    main()
