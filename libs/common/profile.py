"""Reference profiles: a compact, versioned summary of a model's training data
and predictions, built by the trainer and compared with live windows by the
monitor. It crosses services, so its format and builder live here.

Numeric features are summarised by bins whose edges are reference quantiles
(deciles by default). Quantile bins give every bin about the same reference
mass, so PSI is equally sensitive across the range and no bin is empty on the
reference side. A bounded uniform sample is kept for the two-sample KS test.
Categorical features keep their category counts; categories never seen in
training fall into an explicit ``unseen`` bucket when live data is binned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PROFILE_FORMAT_VERSION = 1
UNSEEN = "__unseen__"
MISSING = "__missing__"


class NumericProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["numeric"] = "numeric"
    edges: list[float] = Field(description="Inner bin edges; bin i holds (edges[i-1], edges[i]].")
    counts: list[int] = Field(description="Reference rows per bin (len(edges) + 1 bins).")
    count: int = Field(description="Non-missing reference values.")
    missing: int
    mean: float
    std: float
    min: float
    max: float
    sample: list[float] = Field(description="Bounded uniform sample of reference values, for KS.")

    @property
    def missing_rate(self) -> float:
        total = self.count + self.missing
        return self.missing / total if total else 0.0

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value (NaN excluded by the caller)."""
        return np.searchsorted(np.asarray(self.edges), values, side="left")


class CategoricalProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["categorical"] = "categorical"
    counts: dict[str, int] = Field(description="Reference rows per category.")
    count: int
    missing: int

    @property
    def missing_rate(self) -> float:
        total = self.count + self.missing
        return self.missing / total if total else 0.0


FeatureProfile = Annotated[NumericProfile | CategoricalProfile, Field(discriminator="kind")]


class ReferenceProfile(BaseModel):
    """Everything the monitor compares a live window with."""

    model_config = ConfigDict(frozen=True)

    format_version: int = PROFILE_FORMAT_VERSION
    rows: int
    features: dict[str, FeatureProfile]
    prediction: FeatureProfile
    key_features: list[str] = Field(default_factory=list, description="Features whose drift alone is significant.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Holdout metrics of the model.")
    holdout_rows: int = Field(default=0, ge=0, description="Rows the holdout metrics were measured on (0: unknown).")
    holdout_loss_sd: float | None = Field(
        default=None,
        ge=0,
        description="Standard deviation of the per-row loss on the holdout (0/1 error, or squared error for "
        "regression): with holdout_rows, how precisely the holdout metrics are known.",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        profile = cls.model_validate_json(data)
        if profile.format_version > PROFILE_FORMAT_VERSION:
            raise ValueError(f"profile format {profile.format_version} is newer than this reader")
        return profile


def numeric_profile(
    values: Sequence[Any] | np.ndarray, *, bins: int = 10, sample_size: int = 5000, seed: int = 0
) -> NumericProfile:
    """Profile numeric values; None and NaN count as missing."""
    raw = np.asarray(values, dtype=object)
    arr = np.array([np.nan if v is None else float(v) for v in raw], dtype=float) if raw.size else np.array([])
    present = arr[~np.isnan(arr)]
    missing = int(arr.size - present.size)
    if present.size == 0:
        return NumericProfile(
            edges=[], counts=[0], count=0, missing=missing, mean=0.0, std=0.0, min=0.0, max=0.0, sample=[]
        )
    quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges = np.unique(quantiles)
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=edges.size + 1)
    rng = np.random.default_rng(seed)
    sample = present if present.size <= sample_size else rng.choice(present, sample_size, replace=False)
    return NumericProfile(
        edges=edges.tolist(),
        counts=counts.tolist(),
        count=int(present.size),
        missing=missing,
        mean=float(present.mean()),
        std=float(present.std(ddof=1)) if present.size > 1 else 0.0,
        min=float(present.min()),
        max=float(present.max()),
        sample=np.sort(sample).tolist(),
    )


def categorical_profile(values: Sequence[Any] | np.ndarray) -> CategoricalProfile:
    """Profile categorical values; None and NaN count as missing."""
    counts: dict[str, int] = {}
    missing = 0
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            missing += 1
        else:
            key = str(v)
            counts[key] = counts.get(key, 0) + 1
    return CategoricalProfile(counts=dict(sorted(counts.items())), count=sum(counts.values()), missing=missing)


def build_profile(
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    kinds: Mapping[str, Literal["numeric", "categorical"]],
    predictions: Sequence[Any] | np.ndarray,
    *,
    prediction_kind: Literal["numeric", "categorical"],
    metrics: Mapping[str, float] | None = None,
    holdout: tuple[int, float | None] = (0, None),
    key_features: Sequence[str] = (),
    bins: int = 10,
    sample_size: int = 5000,
    seed: int = 0,
) -> ReferenceProfile:
    """The reference profile of a training set and the model's predictions on it.

    ``holdout``: the rows the ``metrics`` were measured on and the standard deviation of the per-row
    loss there (ReferenceProfile.holdout_rows, .holdout_loss_sd)."""
    features: dict[str, NumericProfile | CategoricalProfile] = {}
    for name, kind in kinds.items():
        col = columns[name]
        features[name] = (
            numeric_profile(col, bins=bins, sample_size=sample_size, seed=seed)
            if kind == "numeric"
            else categorical_profile(col)
        )
    prediction = (
        numeric_profile(predictions, bins=bins, sample_size=sample_size, seed=seed)
        if prediction_kind == "numeric"
        else categorical_profile(predictions)
    )
    rows = len(next(iter(columns.values()))) if columns else 0
    return ReferenceProfile(
        rows=rows,
        features=features,
        prediction=prediction,
        key_features=list(key_features),
        metrics=dict(metrics or {}),
        holdout_rows=holdout[0],
        holdout_loss_sd=holdout[1],
    )
