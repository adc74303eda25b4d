"""A synthetic, labelled customer-churn stream with numeric and categorical
features, for the demo and the end-to-end tests.

Before the drift, churn follows one concept; after it, the customer base
shifts (higher charges, more support calls, more premium plans: covariate
shift) and what drives churn changes (support calls and contract type flip
their effect: concept change), so a model trained before the drift loses
accuracy that retraining on fresh data recovers. Seeded: the same seed gives
the same stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA: dict[str, Any] = {
    "features": [
        {"name": "tenure_months", "dtype": "numeric", "min": 0, "max": 240},
        {"name": "monthly_charges", "dtype": "numeric", "min": 0, "max": 500},
        {"name": "support_calls", "dtype": "integer", "min": 0, "max": 50},
        {"name": "age", "dtype": "numeric", "min": 18, "max": 100},
        {"name": "plan", "dtype": "categorical", "categories": ["basic", "standard", "premium"]},
        {"name": "region", "dtype": "categorical", "categories": ["north", "south", "east", "west"]},
        {"name": "contract", "dtype": "categorical", "categories": ["monthly", "yearly"]},
    ],
    "target": {"name": "churned", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
}
FEATURES = [f["name"] for f in SCHEMA["features"]]
TARGET = "churned"


@dataclass
class ChurnStream:
    seed: int = 7
    drifted: bool = False
    concept_only: bool = False
    """A drift that changes only what drives churn: every feature keeps its distribution, so only
    the live accuracy (from labels) can tell."""

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def batch(self, n: int) -> list[dict[str, Any]]:
        """``n`` labelled records from the current regime."""
        r = self.rng
        d = self.drifted
        shifted = d and not self.concept_only  # the customer base moves (covariate shift)
        tenure = np.clip(r.gamma(2.0, 18.0, n), 0, 240)
        charges = np.clip(r.normal(95 if shifted else 70, 25, n), 5, 495)
        calls = np.clip(r.poisson(3.5 if shifted else 2.0, n), 0, 50)
        age = np.clip(r.normal(45, 14, n), 18, 100)
        plan = r.choice(["basic", "standard", "premium"], n, p=[0.2, 0.3, 0.5] if shifted else [0.5, 0.3, 0.2])
        region = r.choice(["north", "south", "east", "west"], n)
        contract = r.choice(["monthly", "yearly"], n, p=[0.6, 0.4])
        monthly = (contract == "monthly").astype(float)
        z_calls = (calls - 2.5) / 1.5
        z_tenure = (tenure - 36) / 25
        z_charges = (charges - 80) / 25
        if not d:
            logit = 1.6 * z_calls - 1.4 * z_tenure + 0.6 * z_charges + 1.6 * monthly - 0.8 - 0.6 * (plan == "premium")
        else:  # what drives churn has changed
            logit = -1.6 * z_calls - 1.4 * z_tenure + 0.6 * z_charges - 1.6 * monthly + 1.2 - 0.6 * (plan == "premium")
        churned = np.where(r.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
        return [
            {
                "tenure_months": round(float(tenure[i]), 1),
                "monthly_charges": round(float(charges[i]), 2),
                "support_calls": int(calls[i]),
                "age": round(float(age[i]), 1),
                "plan": str(plan[i]),
                "region": str(region[i]),
                "contract": str(contract[i]),
                "churned": str(churned[i]),
            }
            for i in range(n)
        ]


def corrupt(record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A copy of ``record`` broken the way upstream data breaks (for the rejection path)."""
    broken = dict(record)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        broken["age"] = -5  # below the declared minimum
    elif kind == 1:
        broken["plan"] = "platinum"  # unknown category
    elif kind == 2:
        broken.pop("tenure_months")  # missing feature
    else:
        broken["monthly_charges"] = "a lot"  # wrong type
    return broken
