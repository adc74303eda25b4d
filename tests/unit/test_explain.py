"""The explanation method: permutation-sampled Shapley values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.registry.domain.explain import MAX_ROWS, explain, samples_within


def test_contributions_add_up_and_recover_a_linear_model() -> None:
    rng = np.random.default_rng(0)
    background = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80),
                               "c": rng.choice(["x", "y"], 80).astype(object)})  # fmt: skip
    x = pd.DataFrame({"a": [1.0, 2.0], "b": [0.5, -1.0], "c": np.array(["x", "y"], dtype=object)})

    def model(rows: pd.DataFrame, _: np.ndarray) -> np.ndarray:
        return np.asarray(2 * rows["a"] + 3 * rows["b"] + 5 * (rows["c"] == "y"), dtype=float)

    found = explain(model, x, background, samples=400, seed=1)
    for i, e in enumerate(found):
        assert e.output == pytest.approx(model(x.iloc[[i]], np.zeros(1))[0])
        assert e.base_value + sum(e.contributions.values()) == pytest.approx(e.output, abs=1e-12)
        # For an additive model the Shapley value is the feature's own term against the background mean.
        assert e.contributions["a"] == pytest.approx(2 * (x["a"][i] - background["a"].mean()), abs=0.25)
    assert found[0].contributions["c"] < 0 < found[1].contributions["c"]
    assert explain(model, x, background, samples=50, seed=1) == explain(model, x, background, samples=50, seed=1)


def test_samples_are_cut_to_bound_the_rows_scored() -> None:
    assert samples_within(64, 5, 7) == 64
    assert 20 * samples_within(1024, 20, 999) * 1000 <= MAX_ROWS
    assert samples_within(64, 20, 10**6) == 1
