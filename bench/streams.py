"""Labelled data streams for the loop benchmark: seeded, numpy only, nothing downloaded.

Each stream is a whole table generated up front (features, target) plus where its
concept changes, so the benchmark can score every prediction against the truth
and train an oracle on the rows after a change. The shapes follow the standard
concept-drift benchmarks without copying their code:

- ``abrupt``: the label function flips at one row while the feature distributions
  stay exactly the same (only the labels can tell), like SEA or STAGGER;
- ``sea``: SEA itself, ``x0 + x1 ≤ θ`` with θ 8 → 9.5 and 10 % label noise: features unchanged and
  a moderate drop (0.86 → 0.78), which a margin below a small holdout's figure does not see;
- ``covariate``: features shift *and* the concept changes (what ``driftloop demo`` does);
- ``gradual``: a rotating hyperplane in 10 dimensions, the new concept taking over
  row by row with a linearly rising probability (MOA's ConceptDriftStream);
- ``recurring``: two concepts alternating, A → B → A → B;
- ``led``: the seven-segment LED digits, 10 classes × 24 binary features with 10 %
  segment noise, whose relevant segments move to other positions at the change;
- ``categorical``: STAGGER (size, colour, shape: 27 combinations, so nearly every row
  repeats an earlier one), concept "small and red" → "green or circle";
- ``stationary``: 100,000 rows from one concept, nothing ever changes;
- ``regression``: Friedman #1 whose relevant features swap with the irrelevant ones.

Row indices count from the first row of the stream (the initial labelled rows included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

BINARY = ["no", "yes"]


@dataclass(frozen=True)
class Layout:
    """Where a stream's concepts change, in rows."""

    length: int
    changes: tuple[int, ...] = ()
    """First row of each new concept (for gradual drift: where the transition starts)."""
    transition: int = 0
    """Rows over which the new concept takes over (0: abrupt)."""

    @property
    def settled(self) -> int | None:
        """First row after the last change where only the final concept remains (None: no change)."""
        return self.changes[-1] + self.transition if self.changes else None


@dataclass(frozen=True)
class Stream:
    name: str
    description: str
    schema: dict[str, Any]
    """The dataset declaration sent to ingest (PUT /v1/datasets/{name})."""
    layout: Layout
    features: pd.DataFrame
    target: np.ndarray

    @property
    def task(self) -> str:
        return str(self.schema["task"])

    @property
    def target_name(self) -> str:
        return str(self.schema["target"]["name"])

    @property
    def abrupt(self) -> bool:
        return bool(self.layout.changes) and self.layout.transition == 0

    def records(self, start: int, stop: int, *, labelled: bool = True) -> list[dict[str, Any]]:
        """Rows ``start..stop`` as JSON-ready dicts (with the target when ``labelled``)."""
        rows: list[dict[str, Any]] = self.features.iloc[start:stop].to_dict("records")
        if labelled:
            for row, y in zip(rows, self.target[start:stop].tolist(), strict=True):
                row[self.target_name] = y
        return rows


def _numeric(names: list[str], low: float | None = None, high: float | None = None) -> list[dict[str, Any]]:
    return [{"name": n, "dtype": "numeric", "min": low, "max": high} for n in names]


def _schema(features: list[dict[str, Any]], target: str, classes: list[str] | None) -> dict[str, Any]:
    if classes is None:
        return {"features": features, "target": {"name": target, "dtype": "numeric"}, "task": "regression"}
    spec = {"name": target, "dtype": "categorical", "categories": classes}
    return {"features": features, "target": spec, "task": "classification"}


def _concept(length: int, layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """Index of the concept each row follows (0, 1, 2, ...), with a linear ramp for gradual drift."""
    concept = np.zeros(length, dtype=int)
    for i, start in enumerate(layout.changes, start=1):
        if layout.transition:
            position = (np.arange(length) - start) / layout.transition
            take_new = rng.random(length) < np.clip(position, 0.0, 1.0)
            concept = np.where(take_new, i, concept)
        else:
            concept[start:] = i
    return concept


def _labels(flags: np.ndarray) -> np.ndarray:
    return np.where(flags, "yes", "no").astype(object)


def _flip(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Label noise: a ``share`` of the binary labels flipped."""
    flipped = rng.random(len(labels)) < share
    return np.where(flipped, np.where(labels == "yes", "no", "yes"), labels).astype(object)


def abrupt(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(0, 10, (layout.length, 3)), 3)
    concept = _concept(layout.length, layout, rng)
    # "x0 + x1 ≤ 10" and "x0 > x1" agree on exactly half of the square: the old model is a coin toss.
    y = np.where(concept == 0, x[:, 0] + x[:, 1] <= 10, x[:, 0] > x[:, 1])
    names = ["x0", "x1", "x2"]
    return Stream(
        "abrupt", "label function flips, feature distributions unchanged (3 numeric)",
        _schema(_numeric(names, 0, 10), "label", BINARY), layout,
        pd.DataFrame(x, columns=names), _labels(y),
    )  # fmt: skip


def sea(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(0, 10, (layout.length, 3)), 3)
    concept = _concept(layout.length, layout, rng)
    theta = np.where(concept == 0, 8.0, 9.5)  # SEA's concepts 1 and 4 (Street and Kim, 2001)
    names = ["x0", "x1", "x2"]
    return Stream(
        "sea", "SEA: x0 + x1 ≤ θ, θ 8 → 9.5, 10 % label noise, features unchanged (3 numeric)",
        _schema(_numeric(names, 0, 10), "label", BINARY), layout,
        pd.DataFrame(x, columns=names), _flip(_labels(x[:, 0] + x[:, 1] <= theta), 0.10, rng),
    )  # fmt: skip


def covariate(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n = layout.length
    concept = _concept(n, layout, rng)
    x = rng.normal(0, 1, (n, 6))
    moved = concept > 0
    x[moved, 0] = x[moved, 0] * 1.5 + 1.0  # customers older and more spread out
    x[moved, 1] = x[moved, 1] - 0.8
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    plan[moved] = rng.choice(["basic", "plus", "pro"], int(moved.sum()), p=[0.2, 0.3, 0.5])
    bonus = pd.Series(plan).map({"basic": -0.5, "plus": 0.0, "pro": 0.7}).to_numpy()
    score = np.where(
        concept == 0, x[:, 0] + x[:, 1] - x[:, 2] + 0.5 * x[:, 3] + bonus, -x[:, 0] + 1.0 + x[:, 4] - x[:, 3] - bonus
    )
    names = [f"x{i}" for i in range(6)]
    frame = pd.DataFrame(np.round(x, 4), columns=names).assign(plan=plan)
    features = [*_numeric(names), {"name": "plan", "dtype": "categorical", "categories": ["basic", "plus", "pro"]}]
    return Stream(
        "covariate", "features shift and the concept changes (6 numeric + 1 categorical, 5 % label noise)",
        _schema(features, "label", BINARY), layout, frame, _flip(_labels(score > 0), 0.05, rng),
    )  # fmt: skip


def gradual(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n = layout.length
    x = np.round(rng.uniform(0, 1, (n, 10)), 4)
    weights = rng.normal(0, 1, (2, 10))
    weights[1] -= weights[1] @ weights[0] / (weights[0] @ weights[0]) * weights[0]  # orthogonal: agree on half
    concept = _concept(n, layout, rng)
    score = np.einsum("ij,ij->i", x - 0.5, weights[np.minimum(concept, 1)])
    names = [f"x{i}" for i in range(10)]
    return Stream(
        "gradual", "hyperplane turns 90° over a transition, 10 numeric, 2 % label noise",
        _schema(_numeric(names, 0, 1), "label", BINARY), layout,
        pd.DataFrame(x, columns=names), _flip(_labels(score > 0), 0.02, rng),
    )  # fmt: skip


def recurring(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(0, 10, (layout.length, 4)), 3)
    concept = _concept(layout.length, layout, rng) % 2  # A, B, A, B, ...
    y = np.where(concept == 0, x[:, 0] + x[:, 1] <= 10, x[:, 2] > x[:, 3])
    names = ["x0", "x1", "x2", "x3"]
    return Stream(
        "recurring", "concepts A and B alternate, feature distributions unchanged (4 numeric)",
        _schema(_numeric(names, 0, 10), "label", BINARY), layout,
        pd.DataFrame(x, columns=names), _labels(y),
    )  # fmt: skip


#: Segments a..g lit for each digit (the classic seven-segment table).
SEGMENTS = np.array(
    [
        [1, 1, 1, 0, 1, 1, 1], [0, 0, 1, 0, 0, 1, 0], [1, 0, 1, 1, 1, 0, 1], [1, 0, 1, 1, 0, 1, 1],
        [0, 1, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1, 1], [1, 1, 0, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1, 0],
        [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1, 1],
    ],
    dtype=bool,
)  # fmt: skip


def led(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n = layout.length
    digit = rng.integers(0, 10, n)
    lit = SEGMENTS[digit] ^ (rng.random((n, 7)) < 0.10)
    bits = rng.random((n, 24)) < 0.5
    concept = _concept(n, layout, rng)
    # Before the change the segments are features 0-6; after it they sit at 17-23 and 0-6 are noise.
    bits[concept == 0, 0:7] = lit[concept == 0]
    bits[concept > 0, 17:24] = lit[concept > 0]
    names = [f"s{i:02d}" for i in range(24)]
    return Stream(
        "led", "LED digits, 10 classes × 24 binary features, relevant segments move",
        _schema([{"name": n, "dtype": "boolean"} for n in names], "digit", [str(d) for d in range(10)]),
        layout, pd.DataFrame(bits, columns=names), digit.astype(str).astype(object),
    )  # fmt: skip


def categorical(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n = layout.length
    values = {"size": ["small", "medium", "large"], "colour": ["red", "green", "blue"],
              "shape": ["circle", "square", "triangle"]}  # fmt: skip
    frame = pd.DataFrame({k: rng.choice(v, n) for k, v in values.items()})
    concept = _concept(n, layout, rng)
    a = (frame["size"] == "small") & (frame["colour"] == "red")
    b = (frame["colour"] == "green") | (frame["shape"] == "circle")
    y = np.where(concept == 0, a, b)
    features = [{"name": k, "dtype": "categorical", "categories": v} for k, v in values.items()]
    return Stream(
        "categorical", "STAGGER: 3 categorical features, 27 distinct rows, concept changes",
        _schema(features, "label", BINARY), layout, frame, _labels(y),
    )  # fmt: skip


def stationary(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n = layout.length
    x = rng.normal(0, 1, (n, 4))
    region = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    effect = pd.Series(region).map({"north": 0.0, "south": 0.5, "east": -0.5, "west": 1.0}).to_numpy()
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + effect
    names = [f"x{i}" for i in range(4)]
    frame = pd.DataFrame(np.round(x, 4), columns=names).assign(region=region)
    features = [*_numeric(names), {"name": "region", "dtype": "categorical",
                                   "categories": ["north", "south", "east", "west"]}]  # fmt: skip
    return Stream(
        "stationary", "one concept throughout (4 numeric + 1 categorical, 5 % label noise)",
        _schema(features, "label", BINARY), layout, frame, _flip(_labels(score > 0), 0.05, rng),
    )  # fmt: skip


def regression(layout: Layout, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n = layout.length
    x = np.round(rng.uniform(0, 1, (n, 10)), 4)
    concept = _concept(n, layout, rng)

    def friedman(v: np.ndarray) -> Any:
        return 10 * np.sin(np.pi * v[:, 0] * v[:, 1]) + 20 * (v[:, 2] - 0.5) ** 2 + 10 * v[:, 3] + 5 * v[:, 4]

    y = np.where(concept == 0, friedman(x[:, 0:5]), friedman(x[:, 5:10])) + rng.normal(0, 1, n)
    names = [f"x{i}" for i in range(10)]
    return Stream(
        "regression", "Friedman #1, relevant and irrelevant features swap (10 numeric)",
        _schema(_numeric(names, 0, 1), "y", None), layout, pd.DataFrame(x, columns=names), np.round(y, 4),
    )  # fmt: skip


Generator = Callable[[Layout, int], Stream]

GENERATORS: dict[str, Generator] = {
    "abrupt": abrupt, "covariate": covariate, "gradual": gradual, "recurring": recurring,
    "led": led, "categorical": categorical, "stationary": stationary, "regression": regression,
    "sea": sea,  # last: a stream's seed is its position, and the others keep theirs
}  # fmt: skip


def layouts(quick: bool = False) -> dict[str, Layout]:
    """The benchmark's layout of every stream.

    Full: after the 5,000 initial rows, 5,000 streamed rows before the (first) change and
    20,000 after the last one, so at 1,000 rows/s the loop has 15 s before the tail (the
    last 5,000 rows) begins; the oracle trains on the 5,000 rows after the change. The
    stationary stream has 100,000 rows. ``quick`` shortens them for a smoke run of a few
    minutes: 10,000 rows after the change leave a drift job too little time to land
    before the tail, so its tail figures say little.
    """
    if quick:
        single = Layout(18_000, (8_000,))
        return {
            **dict.fromkeys(["abrupt", "sea", "covariate", "led", "categorical", "regression"], single),
            "gradual": Layout(21_000, (8_000,), transition=3_000),
            "recurring": Layout(28_000, (8_000, 18_000)),
            "stationary": Layout(20_000),
        }
    single = Layout(30_000, (10_000,))
    return {
        **dict.fromkeys(["abrupt", "sea", "covariate", "led", "categorical", "regression"], single),
        "gradual": Layout(32_000, (10_000,), transition=8_000),
        # A → B → A → B, 6,000 rows each, then the last concept for 20,000 rows like the others.
        "recurring": Layout(42_000, (10_000, 16_000, 22_000)),
        "stationary": Layout(100_000),
    }


def make(name: str, seed: int = 1, quick: bool = False) -> Stream:
    """Stream ``name``; each stream draws from its own seed derived from ``seed``."""
    return GENERATORS[name](layouts(quick)[name], seed * 1_000 + list(GENERATORS).index(name))
