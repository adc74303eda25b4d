"""The dataset schema: declared by ingest, used by the trainer to build
preprocessing and by serving to validate requests (from the copy stored with
each model version). It crosses services, so it lives here.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DType(StrEnum):
    NUMERIC = "numeric"
    INTEGER = "integer"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class FeatureSpec(BaseModel):
    """One column: its type and what values it may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    dtype: DType
    nullable: bool = False
    min: float | None = Field(default=None, allow_inf_nan=False, description="Smallest accepted value (numeric).")
    max: float | None = Field(default=None, allow_inf_nan=False, description="Largest accepted value (numeric).")
    categories: list[str] | None = Field(
        default=None, description="Allowed categories; with closed=True others are rejected."
    )
    closed: bool = Field(default=True, description="Reject categories outside `categories`.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        numeric = self.dtype in (DType.NUMERIC, DType.INTEGER)
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r}: min/max apply to numeric features only")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} exceeds max {self.max}")
        if self.categories is not None and self.dtype is not DType.CATEGORICAL:
            raise ValueError(f"feature {self.name!r}: categories apply to categorical features")
        return self


class DatasetSchema(BaseModel):
    """Features, target and task of a dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: list[FeatureSpec] = Field(min_length=1)
    target: FeatureSpec
    task: Task
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Column naming each record (not a feature): ingest refuses a record whose key it has already "
        "stored. Without a key every row is data, identical ones included (repeated observations are normal).",
    )
    attributes: list[FeatureSpec] = Field(
        default_factory=list,
        description="Columns validated and stored with every row but never given to the model (e.g. a sensitive "
        "attribute the model must not use but its fairness is measured on).",
    )
    sensitive: list[str] = Field(
        default_factory=list,
        description="Sensitive features: names of features or attributes whose groups the trainer compares on "
        "the holdout (group metrics, fairness differences) and the promotion gate keeps from getting worse.",
        examples=[["sex"]],
    )
    description: str | None = Field(
        default=None,
        max_length=4000,
        description="What the data is and what models trained on it are for: the model card's intended use.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        counts = Counter(f.name for f in [*self.features, *self.attributes])
        counts[self.target.name] += 1
        duplicates = sorted(n for n, c in counts.items() if c > 1)  # linear: schemas may have 10⁵ features
        if duplicates:
            raise ValueError(f"column names must be unique, repeated: {duplicates}")
        if self.key is not None and self.key in counts:
            raise ValueError(f"the key {self.key!r} must be a column of its own, not a feature or the target")
        if self.task is Task.REGRESSION and self.target.dtype is DType.CATEGORICAL:
            raise ValueError("a regression target must be numeric")
        unknown = [name for name in self.sensitive if name not in counts or name == self.target.name]
        if unknown:
            raise ValueError(f"sensitive features must be features or attributes of the schema, unknown: {unknown}")
        if len(set(self.sensitive)) != len(self.sensitive):
            raise ValueError(f"sensitive features are repeated: {self.sensitive}")
        return self

    @property
    def stored_columns(self) -> list[FeatureSpec]:
        """Every column ingest validates and stores: the features, the attributes, then the target."""
        return [*self.features, *self.attributes, self.target]

    def column(self, name: str) -> FeatureSpec | None:
        """A feature or an attribute by name."""
        return next((f for f in [*self.features, *self.attributes] if f.name == name), None)

    def feature(self, name: str) -> FeatureSpec | None:
        return next((f for f in self.features if f.name == name), None)
