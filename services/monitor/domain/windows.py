"""Streaming windows, tumbling or sliding: what the monitor keeps of live traffic, at a fixed cost.

Per numeric feature, counts over the reference bins, missing and
out-of-reference-range counts, and a bounded uniform reservoir for KS and
Wasserstein; per categorical feature, category counts (unseen ones in their
own bucket). Updating costs O(1) per record (batches are binned with one
vectorised ``searchsorted``), and evaluating a window costs the same whether
it saw ten thousand or ten million records, because it reads only these
fixed-size summaries.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from libs.common.profile import UNSEEN, CategoricalProfile, NumericProfile, ReferenceProfile


class Reservoir:
    """A uniform random sample of at most ``size`` values from a stream (Vitter's algorithm R)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.values = np.empty(size, dtype=float)
        self.seen = 0
        self.rng = rng

    def add(self, values: np.ndarray) -> None:
        n = values.size
        if n == 0:
            return
        room = max(0, self.size - self.seen)
        take = min(room, n)
        self.values[self.seen : self.seen + take] = values[:take]
        rest = values[take:]
        if rest.size:
            # Item number t (1-based over the stream) replaces a random slot with probability size/t.
            positions = np.arange(self.seen + take + 1, self.seen + n + 1)
            slots = (self.rng.random(rest.size) * positions).astype(np.int64)
            keep = slots < self.size
            # Later items overwrite earlier ones in the same slot, as the sequential algorithm would.
            self.values[slots[keep]] = rest[keep]
        self.seen += n

    def sample(self) -> np.ndarray:
        return self.values[: min(self.seen, self.size)].copy()

    @classmethod
    def merge(cls, parts: Sequence[Reservoir], size: int, rng: np.random.Generator) -> Reservoir:
        """A uniform sample of the union of the streams ``parts`` sampled.

        Each part stands for ``seen`` records; the merged sample takes from each
        part in proportion to that (a multivariate hypergeometric draw), so a
        part that saw ten times more records contributes ten times more values.
        """
        merged = cls(size, rng)
        seen = np.array([p.seen for p in parts], dtype=np.int64)
        available = np.array([min(p.seen, p.size) for p in parts], dtype=np.int64)
        total = int(seen.sum())
        if total == 0:
            return merged
        take = min(size, int(available.sum()))
        quota = np.minimum(rng.multivariate_hypergeometric(seen, min(take, total)), available)
        chosen = [rng.choice(p.sample(), int(q), replace=False) for p, q in zip(parts, quota, strict=True) if q]
        values = np.concatenate(chosen) if chosen else np.empty(0)
        merged.values[: values.size] = values
        merged.seen = total
        if values.size < min(size, total):  # sampled fewer than a full reservoir: report what is held
            merged.seen = values.size
        return merged


@dataclass
class NumericWindow:
    reference: NumericProfile
    reservoir: Reservoir
    counts: np.ndarray = field(init=False)
    missing: int = 0
    out_of_range: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.reference.counts), dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        present = values[~np.isnan(values)]
        self.missing += values.size - present.size
        self.counts += np.bincount(self.reference.bin_index(present), minlength=self.counts.size)
        self.out_of_range += int(np.count_nonzero((present < self.reference.min) | (present > self.reference.max)))
        self.reservoir.add(present)

    @property
    def count(self) -> int:
        return int(self.counts.sum())


@dataclass
class CategoricalWindow:
    reference: CategoricalProfile
    counts: dict[str, int] = field(default_factory=dict)
    missing: int = 0

    def add(self, values: Sequence[Any]) -> None:
        """Count ``values`` by category (as strings); None and NaN are missing, unknown ones unseen.

        Values are counted first and named after, so a batch costs one ``Counter`` pass plus a
        lookup per distinct value. That is exact only when every distinct value is a string (or
        None): ``1`` and ``True`` would be one key to ``Counter`` but two categories here, so other
        batches are named value by value, as they arrive.
        """
        try:
            counted = Counter(values)
        except TypeError:  # an unhashable value: named one by one below
            counted = Counter()
            exact = False
        else:
            exact = all(type(key) is str or key is None for key in counted)
        if not exact:
            counted = Counter(None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values)
        self.missing += counted.pop(None, 0)
        known = self.reference.counts
        for key, count in counted.items():
            bucket = key if key in known else UNSEEN
            self.counts[bucket] = self.counts.get(bucket, 0) + count

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def aligned(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference and live counts over the same categories (reference order, then unseen)."""
        names, reference = _reference_counts(self.reference)
        live = np.array([self.counts.get(n, 0) for n in names], dtype=float)
        return reference.copy(), live


FeatureWindow = NumericWindow | CategoricalWindow


def _reference_counts(profile: CategoricalProfile) -> tuple[list[str], np.ndarray]:
    """A categorical reference's categories (then unseen) and their counts, made once per profile (every
    judged window reads them, twice), and forgotten with the profile."""
    kept = _REFERENCE_COUNTS.get(id(profile))
    if kept is None or kept[0]() is not profile:
        key = id(profile)
        names = [*profile.counts, UNSEEN]
        counts = np.array([profile.counts.get(n, 0) for n in names], dtype=float)
        kept = _REFERENCE_COUNTS[key] = (weakref.ref(profile, lambda _: _REFERENCE_COUNTS.pop(key, None)), names,
                                         counts)  # fmt: skip
    return kept[1], kept[2]


_REFERENCE_COUNTS: dict[int, tuple[weakref.ref[CategoricalProfile], list[str], np.ndarray]] = {}


def new_feature_window(
    profile: NumericProfile | CategoricalProfile, sample_size: int, rng: np.random.Generator
) -> FeatureWindow:
    if isinstance(profile, NumericProfile):
        return NumericWindow(profile, Reservoir(sample_size, rng))
    return CategoricalWindow(profile)


@dataclass
class Window:
    """One window of live traffic for one model version."""

    reference: ReferenceProfile
    sample_size: int = 2000
    seed: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    records: int = 0
    features: dict[str, FeatureWindow] = field(init=False)
    prediction: FeatureWindow = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.features = {
            name: new_feature_window(profile, self.sample_size, rng)
            for name, profile in self.reference.features.items()
        }
        self.prediction = new_feature_window(self.reference.prediction, self.sample_size, rng)

    def add(self, rows: Sequence[dict[str, Any]], predictions: Sequence[Any]) -> None:
        """Add a batch of feature rows and the predictions made for them."""
        self.add_columns({name: [row.get(name) for row in rows] for name in self.features}, predictions)

    def add_columns(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray], predictions: Sequence[Any] | np.ndarray
    ) -> None:
        """Add a batch given column-wise; missing values as None or NaN (a feature with no column: all missing)."""
        for name, window in self.features.items():
            _add(window, columns[name] if name in columns else [None] * len(predictions))
        _add(self.prediction, predictions)
        self.records += len(predictions)


def merge_windows(parts: Sequence[Window], seed: int = 0) -> Window:
    """One window holding the union of ``parts`` (consecutive windows on the same reference).

    A sliding window is a ring of sub-windows: every step, the oldest drops out
    and the ring is merged for evaluation. Merging sums counters and merges
    reservoirs, so it costs the same whatever the sub-windows saw.
    """
    first = parts[0]
    merged = Window(first.reference, sample_size=first.sample_size, seed=seed)
    merged.started_at = min(p.started_at for p in parts)
    merged.records = sum(p.records for p in parts)
    rng = np.random.default_rng(seed)
    for name in merged.features:
        merged.features[name] = _merge_feature([p.features[name] for p in parts], first.sample_size, rng)
    merged.prediction = _merge_feature([p.prediction for p in parts], first.sample_size, rng)
    return merged


def _merge_feature(parts: Sequence[FeatureWindow], sample_size: int, rng: np.random.Generator) -> FeatureWindow:
    head = parts[0]
    if isinstance(head, NumericWindow):
        numeric = [p for p in parts if isinstance(p, NumericWindow)]
        out = NumericWindow(head.reference, Reservoir.merge([p.reservoir for p in numeric], sample_size, rng))
        out.counts = np.sum([p.counts for p in numeric], axis=0)
        out.missing = sum(p.missing for p in numeric)
        out.out_of_range = sum(p.out_of_range for p in numeric)
        return out
    categorical = [p for p in parts if isinstance(p, CategoricalWindow)]
    merged = CategoricalWindow(categorical[0].reference)
    for part in categorical:
        for key, count in part.counts.items():
            merged.counts[key] = merged.counts.get(key, 0) + count
    merged.missing = sum(p.missing for p in categorical)
    return merged


def _add(window: FeatureWindow, values: Sequence[Any] | np.ndarray) -> None:
    if isinstance(window, NumericWindow):
        window.add(floats(values))
    else:
        window.add(values.tolist() if isinstance(values, np.ndarray) else list(values))


def floats(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``values`` as floats, None as NaN: one NumPy conversion for a column of numbers (a logged batch),
    value by value (``float(v)``, which raises for a value that is no number) for anything else."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(float, copy=False)
    try:
        column = np.array(values, dtype=float)
    except (TypeError, ValueError):
        column = None
    if column is None or column.shape != (len(values),):  # not one number a value (a list, say): one by one
        column = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    return column
