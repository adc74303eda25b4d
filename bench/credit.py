"""The credit-default schema the serving and ingest benchmarks share: six numeric
and three categorical features with declared bounds, a binary target."""

from __future__ import annotations

from typing import Any

SCHEMA: dict[str, Any] = {
    "features": [
        {"name": "income", "dtype": "numeric", "min": 0},
        {"name": "debt_ratio", "dtype": "numeric", "min": 0, "max": 10},
        {"name": "age", "dtype": "numeric", "min": 18, "max": 100},
        {"name": "balance", "dtype": "numeric"},
        {"name": "utilisation", "dtype": "numeric", "min": 0, "max": 1},
        {"name": "late_payments", "dtype": "integer", "min": 0, "max": 50},
        {"name": "segment", "dtype": "categorical", "categories": ["retail", "sme", "corporate", "private"]},
        {"name": "channel", "dtype": "categorical", "categories": ["branch", "online", "partner"]},
        {"name": "region", "dtype": "categorical", "categories": ["north", "south", "east", "west", "central"]},
    ],
    "target": {"name": "default", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
}
